"""scripts/in_venv.sh: pinned installs by default, the newest on request, re-install when the
inputs change (checked with BNN_JAX_DRY_RUN=1 on a copy of the repository's files)."""

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def tree(tmp_path):
    """A repository copy holding what the script reads, and an existing venv of this Python."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    for name in ("scripts/in_venv.sh", "setup.py", "constraints.txt"):
        shutil.copy(REPO / name, root / name)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    os.symlink(sys.executable, venv / "bin" / "python")
    return root, venv


def _run(root, venv, *cmd, **env):
    full = dict(os.environ, BNN_JAX_VENV=str(venv), **env)
    for k in ("BNN_JAX_EXTRAS", "BNN_JAX_RESOLVE"):
        if k not in env:
            full.pop(k, None)
    return subprocess.run(["bash", str(root / "scripts" / "in_venv.sh"), *cmd], env=full,
                          capture_output=True, text=True, timeout=60)


def _stamp(root, extras="dev", resolve="pinned"):
    """What the script records after an install, computed here from the file contents."""
    digest = [hashlib.sha256((root / "setup.py").read_bytes()).hexdigest()]
    if resolve == "pinned":
        digest.append(hashlib.sha256((root / "constraints.txt").read_bytes()).hexdigest())
    return " ".join(digest) + f" {extras} {resolve}\n"


def test_constraints_pin_every_dependency_exactly():
    lines = [ln for ln in (REPO / "constraints.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert all("==" in ln and ";" not in ln for ln in lines), [ln for ln in lines if "==" not in ln]
    names = {ln.split("==")[0].lower().replace("_", "-") for ln in lines}
    for dep in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "tensorboardx",
                "pytest", "tensorboard", "tensorflow-cpu"):
        assert dep in names, dep
    assert not any(n.startswith("bnn-jax") for n in names)


def test_default_install_is_pinned(tree):
    root, venv = tree
    p = _run(root, venv, "python", "-V", BNN_JAX_DRY_RUN="1")
    assert p.returncode == 0, p.stderr
    assert f"pip install -q -c {root}/constraints.txt -e {root}[dev]" in p.stderr
    assert "would then run: python -V" in p.stderr


def test_newest_skips_the_pins_and_upgrades(tree):
    root, venv = tree
    p = _run(root, venv, "python", "-V", BNN_JAX_DRY_RUN="1", BNN_JAX_RESOLVE="newest",
             BNN_JAX_EXTRAS="dev,tf")
    assert p.returncode == 0, p.stderr
    assert "constraints.txt" not in p.stderr
    assert f"pip install -q --upgrade --upgrade-strategy eager -e {root}[dev,tf]" in p.stderr


def test_bad_mode_and_missing_pins_are_errors(tree):
    root, venv = tree
    p = _run(root, venv, "python", "-V", BNN_JAX_RESOLVE="latest")
    assert p.returncode == 1 and "valid values: pinned (default), newest" in p.stderr
    (root / "constraints.txt").unlink()
    p = _run(root, venv, "python", "-V")
    assert p.returncode == 1 and "constraints.txt is missing" in p.stderr


def test_stamp_covers_setup_constraints_extras_and_mode(tree):
    root, venv = tree
    stamp = venv / ".bnn_jax_install"
    stamp.write_text(_stamp(root))
    p = _run(root, venv, "python", "-V", BNN_JAX_DRY_RUN="1")
    assert "is up to date" in p.stderr and "pip install" not in p.stderr
    # Up to date and not a dry run: the command runs in the venv, from the repository root.
    p = _run(root, venv, "python", "-c", "import os, sys; print(os.getcwd(), sys.executable)")
    assert p.returncode == 0, p.stderr
    cwd, exe = p.stdout.split()
    assert cwd == str(root) and exe == str(venv / "bin" / "python")
    for change in ("extras", "mode", "constraints", "setup"):
        stamp.write_text(_stamp(root))
        env = {"BNN_JAX_DRY_RUN": "1"}
        if change == "extras":
            env["BNN_JAX_EXTRAS"] = "dev,mnist"
        elif change == "mode":
            env["BNN_JAX_RESOLVE"] = "newest"
        else:
            path = root / ("constraints.txt" if change == "constraints" else "setup.py")
            path.write_text(path.read_text() + "\n# changed\n")
        p = _run(root, venv, "python", "-V", **env)
        assert "would run:" in p.stderr and "pip install" in p.stderr, (change, p.stderr)
    # A newest-mode install does not depend on constraints.txt.
    stamp.write_text(_stamp(root, resolve="newest"))
    (root / "constraints.txt").write_text("numpy==0.0.1\n")
    p = _run(root, venv, "python", "-V", BNN_JAX_DRY_RUN="1", BNN_JAX_RESOLVE="newest")
    assert "is up to date" in p.stderr, p.stderr

"""README.md runs as written on a fresh clone: every fenced block on its own.

Shell blocks: every command carries the ``bash scripts/in_venv.sh`` prefix (a fresh shell has no
environment without it); the test runs them in this interpreter's environment from the repository
root, with ``/tmp/`` paths moved to a scratch directory and ``BNN_JAX_MAX_STEPS`` capping the
training. Python blocks: each in a fresh interpreter, so a block that relies on an earlier one's
imports fails here; they start in the repository root, as ``bash scripts/in_venv.sh python``
does. The quick-start training command runs in the default suite (with its
documented outputs and TensorBoard scalars checked); every other shell block is ``slow``.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from conftest import README, read_events, readme_fenced_blocks

REPO = README.parent
PREFIX = "bash scripts/in_venv.sh "
LANGS = ("bash", "python", "text")
# Commands shown but not run here, with the reason.
NOT_RUN = {"python -m pytest -q -n 2": "the test suite itself"}
QUICKSTART = ("<!-- quickstart:start -->", "<!-- quickstart:end -->")


def _commands(code: str) -> list[str]:
    """Logical command lines of a shell block (continuations joined, comments dropped)."""
    out, cur = [], ""
    for line in code.splitlines():
        cur += line[:-1] + " " if line.endswith("\\") else line
        if line.endswith("\\"):
            continue
        cmd = cur.split("  #")[0].strip()
        cur = ""
        if cmd and not cmd.startswith("#"):
            out.append(cmd)
    return out


def _env(scratch: pathlib.Path, steps: int) -> dict:
    env = dict(os.environ, BNN_JAX_MAX_STEPS=str(steps), PYTHONPATH=str(REPO),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    env.pop("XLA_FLAGS", None)  # conftest's 8 simulated devices are for the sharding tests
    return env


def _run_shell(cmd: str, scratch: pathlib.Path, steps: int = 2) -> subprocess.CompletedProcess:
    """``cmd`` without the venv prefix, from the repository root (as in_venv.sh runs it)."""
    assert cmd.startswith(PREFIX), f"README command without the {PREFIX!r} prefix: {cmd}"
    body = cmd[len(PREFIX):].replace("/tmp/", f"{scratch}/")
    proc = subprocess.run(["bash", "-c", body], cwd=REPO, env=_env(scratch, steps),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc


def test_every_block_declares_a_language_and_every_command_the_prefix():
    blocks = readme_fenced_blocks()
    assert len(blocks) >= 10
    for lang, code, line in blocks:
        assert lang in LANGS, f"README.md:{line}: fenced block with language {lang!r}; use {LANGS}"
        if lang == "bash":
            for cmd in _commands(code):
                assert cmd.startswith(PREFIX), f"README.md:{line}: {cmd!r} lacks {PREFIX!r}"


def test_commands_parser():
    code = "a \\\n  b  # note\n# only a comment\n\nc --x=1\n"
    assert _commands(code) == ["a    b", "c --x=1"]


def _python_blocks():
    return [pytest.param(code, line, id=f"README.md:{line}")
            for lang, code, line in readme_fenced_blocks() if lang == "python"]


@pytest.mark.parametrize("code,line", _python_blocks())
def test_python_block_runs_on_its_own(code, line, tmp_path):
    code = code.replace("/tmp/", f"{tmp_path}/")
    # From the repository root, where `bash scripts/in_venv.sh python` starts (blocks name
    # repository files such as tests/fixtures/).
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(tmp_path, 2),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"README.md:{line} fails on its own:\n{proc.stderr[-3000:]}"


def _events(logdir: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of the scalars (other summaries: tag -> [])."""
    out: dict[str, list[tuple[int, float]]] = {}
    events = read_events(logdir)
    assert events, f"no event files in {logdir}"
    for event in events:
        for v in event.summary.value:
            out.setdefault(v.tag, [])
            if v.HasField("simple_value"):
                out[v.tag].append((event.step, v.simple_value))
    return out


def test_quickstart_command_outputs_and_tensorboard(tmp_path):
    cmds = [c for _, code, _ in readme_fenced_blocks(*QUICKSTART) for c in _commands(code)]
    assert len(cmds) == 2 and cmds[1] == PREFIX + "python -m pytest -q -n 2"
    proc = _run_shell(cmds[0], tmp_path, steps=3)
    workdir = tmp_path / "digits_bnn"
    lines = proc.stdout.splitlines()
    first = "\n".join(lines[:8])
    # The console's first lines name every output location, and each exists after the run.
    for name in ("config.json", "metrics.jsonl", "checkpoints", "tensorboard", "summary.md"):
        assert str(workdir / name) in first, (name, first)
        assert (workdir / name).exists(), name
    assert "total_steps 1500 -> 3" in lines[0]
    assert json.loads((workdir / "config.json").read_text())["total_steps"] == 3
    result = json.loads((workdir / "result.json").read_text())
    jsonl = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in jsonl if r["split"] == "train"]
    test = [r for r in jsonl if r["split"] == "test"]
    # TensorBoard holds the same scalars as metrics.jsonl, plus the summary text and images.
    ev = _events(workdir / "tensorboard")
    assert ev["train/loss"] == [(r["step"], pytest.approx(r["loss"])) for r in train]
    assert ev["test/top1"] == [(3, pytest.approx(result["test_top1"]))]
    assert [s for s, _ in ev["train/learning_rate"]] == [r["step"] for r in train]
    assert {"model_summary/text_summary", "test_images"} <= set(ev)
    assert test and train


def _slow_shell_blocks():
    out = []
    for lang, code, line in readme_fenced_blocks():
        cmds = [c for c in _commands(code) if c[len(PREFIX):] not in NOT_RUN]
        if lang == "bash" and cmds:
            out.append(pytest.param(cmds, id=f"README.md:{line}"))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("cmds", _slow_shell_blocks())
def test_shell_block_runs(cmds, tmp_path):
    for cmd in cmds:  # the commands of a block run in order, sharing its scratch directory
        _run_shell(cmd, tmp_path)

"""A model the framework did not write, named by import path, binarized by ``config.quant``,
trained by ``python -m bnn_jax.main`` and frozen by ``python -m bnn_jax.export``; registry."""

import csv
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
from flax import nnx

from bnn_jax import models

USER_MODULE = '''
import jax
import jax.numpy as jnp
from flax import nnx


class MyNet(nnx.Module):
    """A small CNN with PyTorch-style explicit padding; no bnn_jax inside."""

    def __init__(self, *, num_classes, input_shape, rngs, width=16):
        c = input_shape[-1]
        self.stem = nnx.Conv(c, width, (3, 3), padding=[(1, 1), (1, 1)], rngs=rngs)
        self.body = nnx.Conv(width, width, (3, 3), padding=[(1, 1), (1, 1)], rngs=rngs)
        self.bn = nnx.BatchNorm(width, rngs=rngs)
        self.head = nnx.Linear(width, num_classes, rngs=rngs)

    def __call__(self, x):
        x = self.stem(x)
        x = self.bn(self.body(x)) + x
        return self.head(jnp.mean(x, axis=(1, 2)))
'''

CONFIG = '''
from bnn_jax.train.config import defaults


def get_config(arg=None):
    c = defaults()
    c.total_steps = 12
    c.log_every = 4
    c.checkpoint_every = 12
    c.async_checkpoint = False
    c.tensorboard = False
    c.data = dict(name="digits", batch_size=32, eval_batch_size=120)
    c.model = dict(name="my_pkg.nets:MyNet", width=16)
    c.quant.rules = [("stem|head", None, None), ("body", "ste_sign", "ste_sign")]
    c.optimizer = dict(name="adam", learning_rate=1e-2, schedule="constant")
    return c
'''


def _env(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.pathsep.join([str(tmp_path / "src"), repo, os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "XLA_FLAGS": ""}


@pytest.mark.slow  # two subprocesses: a 12-step training run and the export CLI (~60 s)
def test_import_path_model_trains_and_exports(tmp_path):
    pkg = tmp_path / "src" / "my_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent(USER_MODULE))
    cfg = tmp_path / "cfg.py"
    cfg.write_text(textwrap.dedent(CONFIG))
    workdir = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "bnn_jax.main", "--config", str(cfg),
                          "--workdir", str(workdir)], env=_env(tmp_path), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "body: Conv -> QuantConv" in out            # config.quant.rules applied
    assert "body" in out and "in grad window" in out   # the health table at the start
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    train = [r for r in rows if r["split"] == "train"]
    assert "flip_ratio/body" in train[-1] and 0 <= train[-1]["flip_ratio/body"] <= 1
    assert train[-1]["loss"] < train[0]["loss"]

    exp = subprocess.run([sys.executable, "-m", "bnn_jax.export", "--workdir", str(workdir)],
                         env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert exp.returncode == 0, exp.stderr[-3000:]
    lines = [ln for ln in exp.stdout.splitlines() if ln.startswith("body ")]
    assert lines and "W:binary A:binary" in lines[0]   # the explicit-padding conv is packed
    assert "same argmax 100.0%" in exp.stdout


@pytest.mark.slow  # a two-trial sweep of 4-step runs in a subprocess (~40 s)
def test_import_path_model_sweeps_with_its_quant_rules(tmp_path):
    pkg = tmp_path / "src" / "my_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent(USER_MODULE))
    cfg = tmp_path / "cfg.py"
    cfg.write_text(textwrap.dedent(CONFIG) + textwrap.dedent('''

        def get_sweep(arg=None):
            return [{"optimizer.learning_rate": lr} for lr in (1e-2, 3e-3)]
        '''))
    out = tmp_path / "sweep"
    sw = subprocess.run([sys.executable, "-m", "bnn_jax.sweep", "--config", str(cfg),
                         "--workdir", str(out), "--config.total_steps=4"],
                        env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert sw.returncode == 0, sw.stderr[-3000:]
    with open(out / "results.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["optimizer.learning_rate"]) for r in rows] == [1e-2, 3e-3]
    assert all(r["status"] == "ok" for r in rows)
    for r in rows:  # each trial binarized the user's body conv by config.quant.rules
        summary = (pathlib.Path(r["workdir"]) / "summary.md").read_text()
        assert "QuantConv" in summary and "body" in summary


def test_register_and_import_path_errors(tmp_path, monkeypatch):
    class Tiny(nnx.Module):
        def __init__(self, *, num_classes, input_shape, rngs, width=4):
            self.head = nnx.Linear(input_shape[-1], num_classes, rngs=rngs)

    models.register("tiny_user_net", Tiny)
    try:
        assert models.get("tiny_user_net") is Tiny
        assert models.fields("tiny_user_net") == ["width"]
        assert "tiny_user_net" in models.names()
        m = models.build(dict(name="tiny_user_net", width=4), num_classes=3,
                         input_shape=(2, 2, 5), rngs=nnx.Rngs(0))
        assert m.head.kernel.shape == (5, 3)
    finally:
        models._REGISTERED.pop("tiny_user_net")
    with pytest.raises(ValueError, match="taken by the zoo"):
        models.register("mlp", Tiny)
    with pytest.raises(ValueError, match="cannot import module 'no_such_pkg.nets'"):
        models.get("no_such_pkg.nets:Net")
    pkg = tmp_path / "user_pkg_x"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("class Net:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert models.get("user_pkg_x:Net").__name__ == "Net"
    with pytest.raises(ValueError, match=r"has no attribute 'Nett'; it defines \['Net'\]"):
        models.get("user_pkg_x:Nett")
    with pytest.raises(ValueError, match="valid models"):
        models.get("no_such_model")


def test_config_quant_rules_are_checked_before_building():
    from bnn_jax.nn import config_rules
    from bnn_jax.train.config import defaults, validate

    c = defaults()
    c.quant.rules = [(".*", "ste_sgn", None)]
    with pytest.raises(ValueError, match="ste_sgn"):
        validate(c)
    c = defaults()
    c.quant.default = dict(bits=1)
    c.quant.overrides = [dict(pattern="head", bits=8)]
    c.quant.rules = [("stem", None, None)]
    rules = config_rules(c.quant)
    assert [r.pattern for r in rules] == ["stem", "head", ".*"]
    assert rules[0].full_precision and rules[2].weight == "ste_sign"

"""Method schedules fed from the loop (ReSTE's o) and the command line's error reporting."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from bnn_jax.train import config as config_lib, run

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_reste_cosine_schedule_reproduces_the_reference_values():
    # Wu et al. (ICCV 2023) main.py: o = 1 + (o_end - 1)(1 - cos(pi/2 e/E)); with o_end = 3 the
    # reference sheet lists o = 1.15, 1.59, 2.23 at 25 %, 50 %, 75 % of training.
    spec = {"kind": "cosine", "start": 1.0, "end": 3.0}
    got = [float(config_lib.schedule_value(spec, p)) for p in (0.0, 0.25, 0.5, 0.75, 1.0)]
    np.testing.assert_allclose(got, [1.0, 1.15, 1.59, 2.23, 3.0], atol=6e-3)
    exp = {"kind": "exp", "start": 0.2, "end": 0.5}  # BiPer's A e^p + B through both ends
    np.testing.assert_allclose([float(config_lib.schedule_value(exp, p)) for p in (0, 1)],
                               [0.2, 0.5], rtol=1e-6)


def _reste_config(o, o_end=None):
    c = config_lib.defaults()
    c.total_steps, c.log_every, c.checkpoint_every = 3, 1, 100
    c.tensorboard, c.async_checkpoint, c.mesh.num_devices = False, False, 1
    c.data = dict(name="digits", batch_size=32, eval_batch_size=120)
    c.model = dict(name="mlp", hidden=(16, 16), input_quantizer="reste", kernel_quantizer="reste")
    # Steps large enough to flip signs: o acts only on gradients, and what it changes sits
    # before a sign, so small updates would leave every forward pass the same.
    c.optimizer = dict(name="sgd", learning_rate=0.5)
    c.schedules = dict(input={"o": {"kind": "linear", "start": o, "end": o_end or o}},
                       kernel={"o": {"kind": "cosine", "start": o, "end": o_end or o}})
    return c


def _losses(workdir):
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if x["split"] == "train"]


def test_the_loop_feeds_the_schedule_to_the_quantizers(tmp_path):
    run(_reste_config(1.0), str(tmp_path / "o1"))
    # o rises 1 -> 4 over the 3 steps (linear for inputs, cosine for kernels): 1 at step 1.
    run(_reste_config(1.0, o_end=4.0), str(tmp_path / "ramp"))
    a, b = _losses(tmp_path / "o1"), _losses(tmp_path / "ramp")
    assert a[0] == b[0]  # o changes only the backward pass: the first forward is the same
    # The first update used o = 1 in both runs (the schedule starts at progress 0) ...
    np.testing.assert_allclose(a[1], b[1], rtol=1e-6)
    assert abs(a[2] - b[2]) > 1e-5  # ... the second used o = 2 in the ramp: the runs part
    bad = _reste_config(1.0)
    bad.schedules = dict(input={"oo": {"kind": "linear", "start": 1.0}}, kernel={})
    with pytest.raises(ValueError, match=r"quantizer 'reste' has no static parameter 'oo'"):
        run(bad, str(tmp_path / "bad"))


def test_cli_reports_an_unknown_override_field_and_exits_1(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bnn_jax.main", "--config", "configs/digits_bnn.py:quick",
         "--workdir", str(tmp_path), "--config.optimizer.lerning_rate=0.1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "unknown config field 'optimizer.lerning_rate'" in proc.stderr
    assert "learning_rate" in proc.stderr  # the valid fields are listed

"""The console's output paths and the BNN_JAX_MAX_STEPS cap (no training here)."""

import os

import pytest
from conftest import read_events

from bnn_jax.train import config as config_lib
from bnn_jax.train import metrics


def test_describe_outputs_names_every_location(tmp_path):
    w = str(tmp_path)
    text = metrics.describe_outputs(w, note="capped")
    lines = text.splitlines()
    assert lines[0] == "capped" and lines[1] == f"Outputs of this run in {w}:"
    for name in ("config.json", "metrics.jsonl", "checkpoints/", "tensorboard/", "summary.md",
                 "result.json"):
        assert os.path.join(w, name) in text, name
    assert f"tensorboard --logdir {w}" in text
    off = metrics.describe_outputs(w, tensorboard=False)
    assert "off (config.tensorboard=False)" in off and "capped" not in off


def test_max_steps_env_caps_total_steps(monkeypatch):
    c = config_lib.defaults()
    c.total_steps = 1500
    monkeypatch.delenv("BNN_JAX_MAX_STEPS", raising=False)
    assert config_lib.cap_steps_from_env(c) is None and c.total_steps == 1500
    monkeypatch.setenv("BNN_JAX_MAX_STEPS", "7")
    assert config_lib.cap_steps_from_env(c) == "BNN_JAX_MAX_STEPS=7: total_steps 1500 -> 7"
    assert c.total_steps == 7
    c.total_steps = 3  # a cap above the config's steps changes nothing
    config_lib.cap_steps_from_env(c)
    assert c.total_steps == 3
    for bad in ("0", "-2", "ten"):
        monkeypatch.setenv("BNN_JAX_MAX_STEPS", bad)
        with pytest.raises(ValueError, match="must be a positive integer"):
            config_lib.cap_steps_from_env(c)


def test_resumed_tensorboard_log_purges_the_repeated_steps(tmp_path):
    a = metrics.TensorBoardWriter(str(tmp_path))
    for step in (1, 2, 3, 4):
        a.write(step, "train", {"loss": float(step)})
    a.close()
    b = metrics.TensorBoardWriter(str(tmp_path), start_step=2)  # resumed from step 2
    for step in (3, 4):
        b.write(step, "train", {"loss": 10.0 + step})
    b.close()
    events = read_events(tmp_path)
    # TensorBoard drops earlier events at or after a SessionLog START's step (purge_step).
    starts = [e.step for e in events if e.HasField("session_log")
              and e.session_log.status == e.session_log.START]
    assert starts == [3]
    kept, purge = [], None
    for e in events:
        if e.HasField("session_log"):
            purge = e.step
            kept = [(s, v) for s, v in kept if s < purge]
        for v in e.summary.value:
            kept.append((e.step, v.simple_value))
    assert kept == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0)]

"""A sweep declared next to its config runs each trial in its own workdir and writes a table."""

import csv
import pathlib

import pytest

from bnn_jax import sweep

CONFIG = str(pathlib.Path(__file__).resolve().parents[2] / "configs" / "digits_bnn.py")


@pytest.mark.slow  # two trainings: compile-bound, ~20 s on 2 shared cores
def test_a_two_trial_sweep_runs_end_to_end_and_writes_its_table(tmp_path):
    rc = sweep.main(["--config", f"{CONFIG}:quick", "--workdir", str(tmp_path),
                     "--config.total_steps=8", "--config.model.width=8",
                     "--config.tensorboard=False", "--config.mesh.num_devices=1"])
    assert rc == 0
    with open(tmp_path / "results.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["model.input_quantizer.name"] for r in rows] == ["ste_sign", "approx_sign"]
    assert all(r["status"] == "ok" and 0.0 <= float(r["test_top1"]) <= 1.0 for r in rows)
    assert len({r["workdir"] for r in rows}) == 2
    for r in rows:
        assert (pathlib.Path(r["workdir"]) / "summary.md").exists()
        assert "approx_sign" in (pathlib.Path(r["workdir"]) / "config.json").read_text() or \
            r["model.input_quantizer.name"] == "ste_sign"
    table = (tmp_path / "results.md").read_text()
    assert table.count("\n") == 4 and "test_top1" in table


def test_trial_names_are_short_and_safe():
    name = sweep.trial_name(3, {"model.input_quantizer.name": "approx_sign",
                                "optimizer.learning_rate": 0.001, "model.hidden": (8, 8)})
    assert name == "003_input_quantizer=approx_sign_learning_rate=0.001_hidden=_8__8_"


def test_sweep_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="config has no field 'optimiser'"):
        sweep.set_dotted(sweep.load_config_module(CONFIG)[0].get_config(), "optimiser.lr", 1)
    assert sweep.main(["--config", "configs/nope.py", "--workdir", str(tmp_path)]) == 1

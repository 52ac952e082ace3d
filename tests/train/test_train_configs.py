"""Every config in configs/ builds (full and quick) and passes validation without training."""

import importlib.util
import pathlib

import pytest

from bnn_jax.train import config as config_lib

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[2] / "configs").glob("*.py"))


def _module(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_validates_full_and_quick(path):
    module = _module(path)
    for arg in (None, "quick"):
        config_lib.validate(module.get_config(arg))
    quick, full = module.get_config("quick"), module.get_config(None)
    assert quick.total_steps < full.total_steps  # quick really is smaller


def test_parse_arg_converts_types_and_rejects_unknown_keys():
    got = config_lib.parse_arg("quick,steps=7,estimator=approx_sign", quick=False, steps=0,
                               estimator="ste_sign")
    assert (got.quick, got.steps, got.estimator) == (True, 7, "approx_sign")
    with pytest.raises(ValueError, match=r"unknown config argument 'quik'; valid arguments"):
        config_lib.parse_arg("quik", quick=False)
    with pytest.raises(ValueError, match=r"config argument 'steps' needs a value"):
        config_lib.parse_arg("steps", steps=0)

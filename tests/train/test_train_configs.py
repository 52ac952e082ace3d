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


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_takes_a_data_dir_and_can_switch_to_a_tfds_dataset(path):
    config = _module(path).get_config("quick")
    config_lib.check_field_path(config, "data.data_dir", "/data/tfds")  # --config.data.data_dir=
    config.data.data_dir = "/data/tfds"
    config_lib.validate(config)
    if config.task.name == "causal_lm":  # a text config switches to a prepared text corpus;
        config.data.name = "wikitext103"  # streamed corpora have no packing choice
        del config.data["packing"]
    elif config.task.name in ("seq2seq", "sequence_classification"):
        # the synthetic text tasks' fields belong to them: the corpus of the same task instead
        glue = config.task.name == "sequence_classification"
        config.data = dict(name="glue" if glue else "xsum", batch_size=config.data.batch_size,
                           eval_batch_size=config.data.eval_batch_size, data_dir="/data/tfds",
                           **(dict(task="sst2") if glue else {}))
    else:
        config.data.name = "mnist"
    config_lib.validate(config)


def test_config_arguments_and_overrides_of_the_wrong_type_name_the_argument():
    with pytest.raises(ValueError, match=r"config argument 'steps=abc': steps takes an integer "
                                         r"\(default 0\), got 'abc'"):
        config_lib.parse_arg("steps=abc", steps=0)
    with pytest.raises(ValueError, match=r"config argument 'quick=maybe': quick is a switch"):
        config_lib.parse_arg("quick=maybe", quick=False)
    c = config_lib.defaults()
    with pytest.raises(ValueError, match=r"--config.optimizer.learning_rate=fast: "
                                         r"optimizer.learning_rate takes a number"):
        config_lib.check_field_path(c, "optimizer.learning_rate", "fast")
    config_lib.check_field_path(c, "optimizer.learning_rate", "1e-4")

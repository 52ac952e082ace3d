"""The quantizer registry: names, parameters, errors that list the valid choices, README table."""

import pathlib
import re
import subprocess
import sys

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import bnn_jax.quant as q

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
LARQ_NAMES = ["ste_sign", "approx_sign", "swish_sign", "magnitude_aware_sign", "ste_tern",
              "ste_heaviside", "dorefa", "noop", "xnor_weight_scale",
              "magnitude_aware_sign_unclipped", "hard_tanh", "leaky_tanh", "weight_clip"]


def test_every_larq_name_is_registered():
    assert set(LARQ_NAMES) <= set(q.names())
    assert q.get("dorefa_quantizer").name == "dorefa"  # larq's alias


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown quantizer 'nope'") as err:
        q.get("nope")
    for name in LARQ_NAMES:
        assert name in str(err.value)


def test_unknown_parameter_lists_valid_parameters():
    with pytest.raises(ValueError, match=r"unknown parameter.*clip.*valid parameters.*clip_value"):
        q.get("ste_sign", clip=1.0)


@pytest.mark.parametrize("name,params,pattern", [
    ("ste_sign", {"clip_value": -1.0}, "clip_value must be a positive number"),
    ("ste_sign", {"clip_value": "1"}, "clip_value"),
    ("swish_sign", {"beta": 0.0}, "beta must be a positive number"),
    ("dorefa", {"k_bit": 0}, r"k_bit must be an integer in 1\.\.32"),
    ("dorefa", {"k_bit": 33}, r"k_bit must be an integer in 1\.\.32"),
    ("dorefa", {"k_bit": 2.0}, "k_bit"),
    ("dorefa", {"mode": "weight"}, r"mode must be one of \['activations', 'weights'\]"),
    ("ste_tern", {"threshold_value": -0.1}, "threshold_value"),
    ("ste_tern", {"ternary_weight_networks": "yes"}, "ternary_weight_networks"),
    ("leaky_tanh", {"alpha": -0.2}, "alpha"),
    ("noop", {"precision": 0}, "precision"),
    ("bibert_act", {"sign_zero": True}, r"sign_zero must be one of \[0, 1\]"),
    ("tbt_weight", {"sign_zero": 2}, r"sign_zero must be one of \[0, 1\]"),
])
def test_invalid_values_are_rejected(name, params, pattern):
    with pytest.raises(ValueError, match=pattern):
        q.get(name, **params)


def test_specs_from_configs_and_built_quantizers():
    cfg = ml_collections.ConfigDict({"name": "ste_sign", "clip_value": 1.25})
    from_cfg = q.get(cfg)
    assert from_cfg.params == {"clip_value": 1.25} and from_cfg.bits == 1
    assert q.get(from_cfg) is from_cfg
    assert q.get({"name": "dorefa", "k_bit": 4}).bits == 4
    assert q.get("noop").bits is None and q.get("noop", precision=8).bits == 8
    with pytest.raises(ValueError, match="'name'"):
        q.get({"clip_value": 1.0})
    x = jnp.asarray([-2.0, -0.5, 0.0, 1.25, 1.3])
    np.testing.assert_array_equal(from_cfg(x), q.ste_sign(x, clip_value=1.25))


def test_repr_names_the_method():
    assert repr(q.get("swish_sign", beta=5.0)) == "Quantizer(swish_sign(beta=5.0), bits=1)"


def test_command_line_check_from_the_issue():
    out = subprocess.run([sys.executable, "-c",
                          "import bnn_jax.quant as q; print(q.get('swish_sign', beta=5.0))"],
                         capture_output=True, text=True, check=True).stdout
    assert "swish_sign(beta=5.0)" in out


def test_readme_table_is_in_sync_with_the_registry():
    text = README.read_text()
    block = re.search(r"<!-- quantizer-table:start -->\n(.*?)\n<!-- quantizer-table:end -->",
                      text, flags=re.S)
    assert block, "README.md lost its quantizer-table markers"
    assert block.group(1) == q.markdown_table(), (
        "README quantizer table is stale: run `python -m bnn_jax.quant --write-readme`")


@pytest.mark.parametrize("name,param,good", [("reste", "o", 2.0), ("fda", "n", 3),
                                             ("irnet_ede", "t", 0.5), ("fda_act", "alpha", 0.1)])
def test_schedule_parameters_take_numbers_or_arrays_only(name, param, good):
    q.get(name, **{param: good})
    q.get(name, **{param: jnp.asarray(good)})  # a traced schedule value is checked when used
    with pytest.raises(ValueError, match="number or a"):
        q.get(name, **{param: "late"})


def test_reste_weight_scale_gradient_is_validated():
    with pytest.raises(ValueError, match=r"\[True, False\]"):
        q.get("reste_weight", scale_gradient="no")

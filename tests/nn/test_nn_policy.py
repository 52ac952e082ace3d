"""Precision policy from an ml_collections config: PokeBNN's 8/4/1/8 mix and explicit entries."""

import ml_collections
import numpy as np
import pytest
from flax import nnx

from bnn_jax.nn import QuantConv, QuantLinear
from bnn_jax.nn.policy import apply_policy, policy_rules, precision_policy


class SE(nnx.Module):
    def __init__(self, c, rngs):
        self.reduce = nnx.Conv(c, c // 2, (1, 1), rngs=rngs)
        self.expand = nnx.Conv(c // 2, c, (1, 1), rngs=rngs)


class Block(nnx.Module):
    def __init__(self, c, rngs):
        self.conv = nnx.Conv(c, c, (3, 3), rngs=rngs)
        self.se = SE(c, rngs)


class PokeLike(nnx.Module):
    def __init__(self, rngs):
        self.stem = nnx.Sequential(nnx.Conv(3, 4, (4, 4), strides=4, rngs=rngs),
                                   nnx.Conv(4, 4, (3, 3), feature_group_count=4, rngs=rngs))
        self.blocks = nnx.List([Block(4, rngs), Block(4, rngs)])
        self.head = nnx.Linear(4, 10, rngs=rngs)


def _bits(m):
    return (m.kernel_quantizer.bits, m.input_quantizer.bits)


def test_pokebnn_mix_in_a_few_lines():
    # An abstract model (no arrays allocated) is enough to plan precision: quantize() works on it.
    model = nnx.eval_shape(lambda: PokeLike(nnx.Rngs(0)))
    policy = precision_policy(default=1, overrides=[("stem/.*", 8), (r".*/se/.*", 4),
                                                    ("head", 8)])
    report = apply_policy(model, policy, strict=True)
    assert not report.unmatched and not report.unused_rules and len(report.replaced) == 9
    for conv in model.stem.layers:
        assert isinstance(conv, QuantConv) and _bits(conv) == (8, 8)
        assert conv.kernel_quantizer.name == "statsq" and conv.input_quantizer.name == "lsq"
    for b in model.blocks:
        assert _bits(b.conv) == (1, 1) and b.conv.kernel_quantizer.name == "ste_sign"
        assert _bits(b.se.reduce) == (4, 4) and _bits(b.se.expand) == (4, 4)
    assert isinstance(model.head, QuantLinear) and _bits(model.head) == (8, 8)
    assert model.stem.layers[1].feature_group_count == 4  # layer options survive


def test_config_file_form_with_cli_style_override_and_explicit_entries():
    cfg = ml_collections.ConfigDict()
    cfg.quant = dict(
        default=dict(bits=1, constraint="weight_clip"),
        overrides=[dict(pattern="stem/.*", bits=None),  # keep the stem full precision
                   dict(pattern=r".*/se/reduce", bits=4,
                        input=dict(name="lsq", bits=4, signed=True)),
                   dict(pattern=r".*/se/expand", bits=4,
                        input=dict(name="lsq", bits=4, signed=False)),
                   dict(pattern="head", weight=dict(name="dorefa", k_bit=8, mode="weights"))])
    cfg.quant.default.bits = 2  # what --config.quant.default.bits=2 does
    model = nnx.eval_shape(lambda: PokeLike(nnx.Rngs(0)))
    report = apply_policy(model, cfg.quant)
    assert report.kept == ["stem/layers/0", "stem/layers/1"]
    assert type(model.stem.layers[0]) is nnx.Conv
    conv = model.blocks[0].conv
    assert _bits(conv) == (2, 2) and conv.kernel_constraint.name == "weight_clip"
    assert model.blocks[1].se.expand.input_quantizer.params["signed"] is False
    assert model.blocks[1].se.reduce.input_quantizer.params["signed"] is True
    assert model.head.kernel_quantizer.name == "dorefa" and model.head.input_quantizer is None


def test_rules_order_and_presets_override():
    policy = precision_policy(default=None, overrides=[("a", 1), ("b", 3)],
                              presets={3: dict(weight="ste_tern", input=None)})
    rules = policy_rules(policy)
    assert [r.pattern for r in rules] == ["a", "b"]  # no catch-all for a full-precision default
    assert rules[1].weight == "ste_tern" and rules[1].input is None
    assert rules[0].weight == "ste_sign"


def test_bad_policies_raise():
    with pytest.raises(ValueError, match="no preset for bits=12"):
        policy_rules(precision_policy(default=12))
    with pytest.raises(ValueError, match="unknown policy key"):
        policy_rules(precision_policy(default=dict(bits=1, wieght="ste_sign")))
    with pytest.raises(ValueError, match="unknown quantizer"):
        policy_rules(precision_policy(overrides=[dict(pattern="x", weight="nope")]))
    model = nnx.eval_shape(lambda: PokeLike(nnx.Rngs(0)))
    with pytest.raises(ValueError, match="matched no layer"):
        apply_policy(model, precision_policy(overrides=[("stme/.*", 8)]), strict=True)
    assert np.all([type(b.conv) is nnx.Conv for b in model.blocks])


def test_abstract_model_gets_abstract_learned_arrays():
    model = nnx.eval_shape(lambda: PokeLike(nnx.Rngs(0)))
    apply_policy(model, precision_policy(default=dict(weight="bivit_weight", input=None)))
    alpha = model.blocks[0].conv.kernel_alpha.get_value()
    assert alpha.shape == (4,) and alpha.dtype == np.float32

"""quantize(model, rules) on NNX models written here: replacements, shared parameters, reports."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bnn_jax.nn import QuantConv, QuantEinsum, QuantLinear, Rule, quant_params, quantize



def _sign(a):
    return np.where(np.asarray(a) >= 0, 1.0, -1.0).astype(np.float32)


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.stem = nnx.Linear(6, 8, rngs=rngs)
        self.blocks = nnx.List([nnx.Linear(8, 8, rngs=rngs), nnx.Linear(8, 8, rngs=rngs)])
        self.proj = nnx.Einsum("bd,dk->bk", (8, 5), (5,), rngs=rngs)
        self.head = nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.stem(x))
        for b in self.blocks:
            x = b(x)
        return self.head(self.proj(x))


class CNN(nnx.Module):
    def __init__(self, rngs):
        self.body = nnx.Sequential(nnx.Conv(3, 4, (3, 3), rngs=rngs), nnx.relu,
                                   nnx.Conv(4, 4, (3, 3), strides=2, padding="VALID",
                                            use_bias=False, rngs=rngs))
        self.fc = nnx.Linear(16, 2, rngs=rngs)

    def __call__(self, x):
        y = self.body(x)
        return self.fc(y.reshape(y.shape[0], -1))


X = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
IMG = np.random.default_rng(1).standard_normal((2, 5, 5, 3)).astype(np.float32)


def test_mlp_replacements_share_params_and_compute_by_hand():
    m = MLP(nnx.Rngs(0))
    before = {"stem": m.stem, "head": m.head, "k0": m.blocks[0].kernel, "b1": m.blocks[1].bias,
              "pk": m.proj.kernel}
    values = {k: np.asarray(v[...]) for k, v in before.items() if k in ("k0", "b1", "pk")}
    report = quantize(m, [Rule("stem", None, None),  # keep the first layer full precision
                          Rule(r"blocks/\d+", "ste_sign", "ste_sign"),
                          ("proj", dict(name="ste_sign", clip_value=2.0), "approx_sign")])
    assert [r.path for r in report.replaced] == ["blocks/0", "blocks/1", "proj"]
    assert [(r.old, r.new, r.rule) for r in report.replaced] == [
        ("Linear", "QuantLinear", 1), ("Linear", "QuantLinear", 1), ("Einsum", "QuantEinsum", 2)]
    assert report.kept == ["stem"] and report.unmatched == ["head"] and not report.unused_rules
    assert "blocks/0: Linear -> QuantLinear" in str(report)
    # Same objects, same values; unmatched and exempted layers untouched.
    assert m.stem is before["stem"] and m.head is before["head"]
    assert type(m.stem) is nnx.Linear and type(m.head) is nnx.Linear
    assert m.blocks[0].kernel is before["k0"] and m.blocks[1].bias is before["b1"]
    assert m.proj.kernel is before["pk"]
    np.testing.assert_array_equal(m.blocks[0].kernel[...], values["k0"])
    assert isinstance(m.blocks[0], QuantLinear) and isinstance(m.proj, QuantEinsum)
    # Each replaced layer equals the quantizer applied by hand.
    h = np.asarray(nnx.relu(m.stem(jnp.asarray(X))))
    w0, b0 = np.asarray(m.blocks[0].kernel[...]), np.asarray(m.blocks[0].bias[...])
    y0 = _sign(h) @ _sign(w0) + b0
    np.testing.assert_allclose(m.blocks[0](jnp.asarray(h)), y0, rtol=1e-6, atol=1e-6)
    w1, b1 = np.asarray(m.blocks[1].kernel[...]), np.asarray(m.blocks[1].bias[...])
    y1 = _sign(y0) @ _sign(w1) + b1
    pk, pb = values["pk"], np.asarray(m.proj.bias[...])
    y2 = _sign(y1) @ _sign(pk) + pb
    want = y2 @ np.asarray(m.head.kernel[...]) + np.asarray(m.head.bias[...])
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(m, jnp.asarray(X)), want,
                               rtol=1e-5, atol=1e-5)


def test_mlp_gradients_use_the_estimators():
    m = MLP(nnx.Rngs(0))
    quantize(m, [(r"blocks/0", "ste_sign", "ste_sign")])
    h = jnp.asarray(np.random.default_rng(5).standard_normal((4, 8)).astype(np.float32))
    layer = m.blocks[0]
    dy = np.random.default_rng(3).standard_normal((4, 8)).astype(np.float32)
    g_layer, g_x = nnx.jit(nnx.grad(lambda q, x: jnp.sum(q(x) * dy), argnums=(0, 1)))(layer, h)
    w = np.asarray(layer.kernel[...])
    hx = np.asarray(h)
    # ste_sign: gradient passes where |.| <= 1.
    np.testing.assert_allclose(g_x, (dy @ _sign(w).T) * (np.abs(hx) <= 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_layer.kernel[...], (_sign(hx).T @ dy) * (np.abs(w) <= 1),
                               rtol=1e-5, atol=1e-6)


def test_cnn_in_sequential_with_pad_values():
    m = CNN(nnx.Rngs(0))
    k0 = m.body.layers[0].kernel
    report = quantize(m, [dict(pattern=r"body/layers/\d", weight="ste_sign", input="ste_sign",
                               constraint="weight_clip", params=dict(pad_values=1.0))])
    assert [r.path for r in report.replaced] == ["body/layers/0", "body/layers/2"]
    assert report.unmatched == ["fc"]
    c0, c2 = m.body.layers[0], m.body.layers[2]
    assert isinstance(c0, QuantConv) and c0.kernel is k0 and c0.pad_values == 1.0
    assert c2.strides == (2, 2) and c2.padding == "VALID" and c2.bias is None
    assert c0.kernel_constraint.name == "weight_clip"
    # By hand: +1-padded sign(x) convolved with sign(W) (SAME, 3x3), for the first conv.
    w = _sign(c0.kernel[...])
    xp = np.pad(_sign(IMG), [(0, 0), (1, 1), (1, 1), (0, 0)], constant_values=1.0)
    want = np.zeros((2, 5, 5, 4))
    for i in range(5):
        for j in range(5):
            want[:, i, j] = np.einsum("nhwc,hwco->no", xp[:, i:i + 3, j:j + 3], w)
    np.testing.assert_array_equal(c0(jnp.asarray(IMG)), want + np.asarray(c0.bias[...]))


def test_optimizer_built_before_quantize_updates_the_shared_kernel():
    m = CNN(nnx.Rngs(0))
    opt = nnx.Optimizer(m, optax.sgd(0.5), wrt=nnx.Param)
    quantize(m, [(r"body/layers/0", "ste_sign", "ste_sign")])
    k_before = np.asarray(m.body.layers[0].kernel[...])
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(jnp.asarray(IMG)))))(m)
    g = np.asarray(grads.body.layers[0].kernel[...])
    assert np.any(g != 0)
    opt.update(m, grads)
    np.testing.assert_allclose(m.body.layers[0].kernel[...], k_before - 0.5 * g, rtol=1e-6,
                               atol=1e-7)


def test_non_matching_rule_is_reported_and_strict_raises():
    m = MLP(nnx.Rngs(0))
    with pytest.warns(UserWarning, match=r"matched no layer.*rule 1 'blokcs/\.\*'"):
        report = quantize(m, [("stem", "ste_sign"), ("blokcs/.*", "ste_sign")])
    assert report.unused_rules == [(1, "blokcs/.*")]
    assert "WARNING rule 1" in str(report)
    m2 = MLP(nnx.Rngs(0))
    with pytest.raises(ValueError, match="matched no layer.*layer paths"):
        quantize(m2, [("stem", "ste_sign"), ("blokcs/.*", "ste_sign")], strict=True)
    assert type(m2.stem) is nnx.Linear  # strict raises before touching the model
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize(MLP(nnx.Rngs(0)), [("stem", "ste_sign")], strict=True)


def test_first_matching_rule_wins_and_shared_modules_are_swapped_everywhere():
    m = MLP(nnx.Rngs(0))
    m.alias = m.blocks[1]  # the same module reachable from two paths
    report = quantize(m, [(r"blocks/1", "ste_sign", None), (r"blocks/.*", "approx_sign", None)])
    assert m.blocks[0].kernel_quantizer.name == "approx_sign"
    assert m.blocks[1].kernel_quantizer.name == "ste_sign"
    assert m.alias is m.blocks[1]
    assert m.blocks[0].input_quantizer is None
    assert len(report.replaced) == 2


def test_requantizing_a_quantized_layer_keeps_kernel():
    m = MLP(nnx.Rngs(0))
    quantize(m, [(r"blocks/0", "ste_sign", "ste_sign")])
    k = m.blocks[0].kernel
    quantize(m, [(r"blocks/0", "dorefa", None, dict())])
    assert m.blocks[0].kernel is k and m.blocks[0].kernel_quantizer.name == "dorefa"
    assert m.blocks[0].input_quantizer is None


def test_bad_rules_raise():
    m = MLP(nnx.Rngs(0))
    with pytest.raises(ValueError, match="not a valid regex"):
        quantize(m, [("blocks/(", "ste_sign")])
    with pytest.raises(ValueError, match="unknown rule key"):
        quantize(m, [dict(pattern="stem", wieght="ste_sign")])
    with pytest.raises(ValueError, match="unknown quantizer"):
        quantize(m, [("stem", "no_such_quantizer")])
    cnn = CNN(nnx.Rngs(0))  # pad_values fits the convs, not the Linear: nothing is swapped
    with pytest.raises(ValueError, match=r"rule 0 '\.\*' cannot quantize fc \(Linear\) with "
                                         r"params \{'pad_values': 1\.0\}"):
        quantize(cnn, [(".*", "ste_sign", "ste_sign", dict(pad_values=1.0))])
    assert type(cnn.body.layers[0]) is nnx.Conv and type(cnn.fc) is nnx.Linear
    with pytest.raises(ValueError, match="wrap a bare layer"):
        quantize(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), [(".*", "ste_sign")])
    jax.clear_caches()


def test_schedule_values_reach_quantized_layers_of_a_foreign_model():
    # ReSTE's o is a static parameter fed a traced value per step; the MLP's __call__ knows
    # nothing of it, so quant_params carries it to every quantizer that has an `o`.
    m = MLP(nnx.Rngs(0))
    quantize(m, [(r"blocks/0", "reste", "ste_sign"), (r"blocks/1", "ste_sign", "reste")])
    layer0, layer1 = m.blocks[0], m.blocks[1]
    h = jnp.asarray(np.random.default_rng(6).standard_normal((4, 8)).astype(np.float32))

    @nnx.jit
    def grads(layer, o):
        with quant_params(kernel=dict(o=o), input=dict(o=o)):
            return nnx.grad(lambda q: jnp.sum(q(h)))(layer)

    w = np.asarray(layer0.kernel[...], np.float64)
    a = np.abs(w)
    for o in (1.0, 3.0):
        h_der = np.where(a <= 1.5, np.where(a <= 0.1, 0.1 ** (1 / o) / 0.1,
                                            (1 / o) * np.maximum(a, 0.1) ** ((1 - o) / o)), 0)
        want = (_sign(h).sum(0)[:, None] * np.ones((1, 8))) * h_der
        np.testing.assert_allclose(grads(layer0, jnp.float32(o)).kernel[...], want, rtol=1e-5,
                                   atol=1e-6)
    # Explicit call arguments win over the context; ste_sign (layer1's kernel) has no `o`.
    def grad_x(o_ctx, explicit):
        def f(x):
            with quant_params(input=dict(o=o_ctx), kernel=dict(o=o_ctx)):
                return jnp.sum(layer1(x, input_params=explicit))
        return np.asarray(jax.jit(jax.grad(f))(h))

    np.testing.assert_array_equal(grad_x(3.0, dict(o=1.0)), grad_x(1.0, None))
    assert not np.allclose(grad_x(3.0, None), grad_x(1.0, None))


class Transformerish(nnx.Module):
    def __init__(self, rngs):
        # Odd input width: a sum of 9 +-1 terms is never 0, so float rounding decides no sign.
        self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=9, qkv_features=8,
                                           decode=False, rngs=rngs)
        self.proj = nnx.LinearGeneral((2, 4), 3, axis=(-2, -1), use_bias=False, rngs=rngs)


def test_flax_multi_head_attention_projections_are_quantized():
    m = Transformerish(nnx.Rngs(0))
    report = quantize(m, [(r"attn/(query|key|value|out)", "ste_sign", "ste_sign")],
                      strict=True)
    assert [r.path for r in report.replaced] == ["attn/key", "attn/out", "attn/query",
                                                  "attn/value"]
    assert report.unmatched == ["proj"]
    a = m.attn
    x = np.random.default_rng(8).standard_normal((2, 3, 9)).astype(np.float32)
    w = {n: np.asarray(getattr(a, n).kernel[...]) for n in ("query", "key", "value", "out")}
    b = {n: np.asarray(getattr(a, n).bias[...]) for n in ("query", "key", "value", "out")}
    xs = _sign(x)
    q, k, v = (np.einsum("btd,dhk->bthk", xs, _sign(w[n])) + b[n]
               for n in ("query", "key", "value"))
    s = np.einsum("bqhd,bkhd->bhqk", q / np.sqrt(4), k)
    p = np.exp(s - s.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)
    ctx = np.einsum("bhqk,bkhd->bqhd", p, v)
    want = np.einsum("bqhd,hdo->bqo", _sign(ctx), _sign(w["out"])) + b["out"]
    got = nnx.jit(lambda m, x: m.attn(x))(m, jnp.asarray(x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # The kernel quantizer sees (fan-in, fan-out) matrices: per-output-unit scales are per unit.
    quantize(m, [(r"attn/out", "magnitude_aware_sign")])
    scale = np.abs(w["out"]).reshape(8, 9).mean(0)
    np.testing.assert_allclose(m.attn.out.quantized_kernel(),
                               _sign(w["out"]).reshape(8, 9) * scale, rtol=1e-6)


def test_linear_general_with_batch_axis_is_reported_unsupported():
    class M(nnx.Module):
        def __init__(self, rngs):
            self.lg = nnx.LinearGeneral(3, 4, batch_axis={0: 2}, rngs=rngs)

    m = M(nnx.Rngs(0))
    with pytest.warns(UserWarning, match="matched no layer"):
        report = quantize(m, [("lg", "ste_sign")])
    assert report.unsupported == [("lg", "nnx.LinearGeneral with batch_axis")]
    assert type(m.lg) is nnx.LinearGeneral

"""freeze() of layers with learned quantizer arrays, schedules, groups and einsums."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import export
from bnn_jax.nn import (QuantConv, QuantEinsum, QuantLinear, QuantLinearGeneral, initialize,
                        quant_params)


def _rand(shape, seed, lo=-1.0, hi=1.0):
    return jnp.asarray(np.random.default_rng(seed).uniform(lo, hi, shape), jnp.float32)


def _sign(v):
    return np.where(v >= 0, 1.0, -1.0)


class ReActLike(nnx.Module):
    """RSign input + BiViT kernel (learned shift and scale), then an LSQ 3-bit input."""

    def __init__(self, rngs):
        self.a = QuantLinear(40, 24, input_quantizer="rsign", kernel_quantizer="bivit_weight",
                             rngs=rngs)
        self.b = QuantLinear(24, 7, input_quantizer=dict(name="lsq", bits=3),
                             kernel_quantizer="ste_sign", rngs=rngs)

    def __call__(self, x):
        return self.b(self.a(x))


def test_rsign_bivit_and_lsq_use_the_learned_arrays():
    model = ReActLike(nnx.Rngs(0))
    x = _rand((6, 40), 1, -2, 2)
    initialize(model, x)
    # "Trained" learned arrays: shifts that flip many signs, scales far from their init.
    beta = np.random.default_rng(2).uniform(-1.5, 1.5, 40).astype(np.float32)
    alpha = np.random.default_rng(3).uniform(0.2, 3.0, 24).astype(np.float32)
    model.a.input_beta[...] = jnp.asarray(beta)
    model.a.kernel_alpha[...] = jnp.asarray(alpha)
    model.b.input_step[...] = jnp.float32(0.37)
    frozen, records = export.freeze(model)
    assert [(r.path, r.frozen, r.activations) for r in records] == [
        ("a", True, "binary"), ("b", True, "float")]
    # Layer a, independently: sign(x + β) @ (α · sign(W − mean_in W)) + b, β and α learned.
    w = np.asarray(model.a.kernel[...])
    levels = _sign(w - w.mean(axis=0, keepdims=True))
    acc = _sign(np.asarray(x) + beta) @ levels
    expected = acc * alpha + np.asarray(model.a.bias[...])
    np.testing.assert_allclose(np.asarray(frozen.a(x)), expected, rtol=1e-5, atol=1e-4)
    # Layer b: LSQ 3-bit (levels -4..3 times the learned step) meets packed ±1 weights.
    h = np.asarray(model.a(x))
    q = np.clip(np.round(h / np.float32(0.37)), -4, 3) * np.float32(0.37)
    expected_b = q @ _sign(np.asarray(model.b.kernel[...])) + np.asarray(model.b.bias[...])
    np.testing.assert_allclose(np.asarray(frozen.b(jnp.asarray(h))), expected_b,
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(frozen(x)), np.asarray(model(x)), rtol=1e-5,
                               atol=1e-4)


def test_schedule_values_are_baked_and_checked():
    """ste_tern's threshold reaches kernel and input through quant_params; freeze bakes it."""

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l = QuantLinear(16, 5, input_quantizer="ste_tern", kernel_quantizer="ste_tern",
                                 rngs=rngs)

        def __call__(self, x):
            return self.l(x)

    model = Net(nnx.Rngs(1))
    model.l.kernel[...] = _rand((16, 5), 4)
    x = _rand((3, 16), 5)
    values = dict(input=dict(threshold_value=0.6), kernel=dict(threshold_value=0.4))
    with quant_params(**values):
        ref = np.asarray(model(x))
    frozen, records = export.freeze(model, quant_params=values)
    assert (records[0].encoding, records[0].activations) == ("ternary", "ternary")
    xt = np.where(np.abs(np.asarray(x)) > 0.6, np.sign(np.asarray(x)), 0)
    wt = np.where(np.abs(np.asarray(model.l.kernel[...])) > 0.4,
                  np.sign(np.asarray(model.l.kernel[...])), 0)
    np.testing.assert_allclose(ref, xt @ wt + np.asarray(model.l.bias[...]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(frozen(x)), ref, rtol=1e-6, atol=1e-6)
    # The same values active around freeze() do the same.
    with quant_params(**values):
        frozen2, _ = export.freeze(model)
    np.testing.assert_array_equal(np.asarray(frozen2(x)), np.asarray(frozen(x)))
    # At the defaults (threshold 0.05) the result differs, so the test above can fail.
    assert not np.allclose(np.asarray(export.freeze(model)[0](x)), ref, atol=1e-3)
    with pytest.raises(ValueError, match="frozen with threshold_value=0.6"):
        with quant_params(input=dict(threshold_value=0.3)):
            frozen(x)
    with pytest.raises(ValueError, match="sets kernel 'threshold_value'.*frozen with "
                                         "threshold_value=0.4"):
        with quant_params(kernel=dict(threshold_value=0.05)):
            frozen(x)
    with quant_params(**values):  # the values it was frozen with are fine
        np.testing.assert_array_equal(np.asarray(frozen(x)), np.asarray(frozen2(x)))
    with pytest.raises(ValueError, match="fixed when it is frozen"):
        frozen.l(x, input_params=dict(threshold_value=0.6))
    with pytest.raises(ValueError, match="valid roles"):
        export.freeze(model, quant_params=dict(inputs={}))


class Grouped(nnx.Module):
    """A depthwise conv (1 input per group) and a 2-group conv with 32 inputs per group."""

    def __init__(self, rngs):
        self.dw = QuantConv(8, 8, (3, 3), feature_group_count=8, input_quantizer="ste_sign",
                            kernel_quantizer="magnitude_aware_sign", rngs=rngs)
        self.expand = nnx.Linear(8, 64, rngs=rngs)
        self.g2 = QuantConv(64, 6, (3, 3), strides=2, feature_group_count=2, pad_values=1.0,
                            input_quantizer="ste_sign", kernel_quantizer="magnitude_aware_sign",
                            rngs=rngs)

    def __call__(self, x):
        return self.g2(self.expand(self.dw(x)))


def test_depthwise_and_grouped_convs():
    model = Grouped(nnx.Rngs(2))
    for layer, seed in ((model.dw, 6), (model.g2, 7)):
        layer.kernel[...] = _rand(layer.kernel.shape, seed)
        layer.bias[...] = _rand(layer.bias.shape, seed + 10)
    x = _rand((2, 5, 6, 8), 8)
    frozen, records = export.freeze(model)
    got = {r.path: (r.frozen, r.activations) for r in records}
    # Depthwise: packed along the output channels (1 bit per weight), float conv.
    assert got == {"dw": (True, "float"), "g2": (True, "binary")}
    assert frozen.dw.axis == 3 and frozen.g2.axis == 2
    assert records[0].bytes_after == 3 * 3 * 4 + 8 * 4 + 8 * 4  # 72 bits -> 3 words x 3 x 3
    # Depthwise, independently: per channel c, sum over taps of sign(x) · sign(w) · mean|w_c|.
    xs = np.pad(_sign(np.asarray(x)), [(0, 0), (1, 1), (1, 1), (0, 0)])
    w = np.asarray(model.dw.kernel[...])[:, :, 0, :]
    scale = np.abs(w).mean(axis=(0, 1))
    dw = sum(xs[:, i:i + 5, j:j + 6, :] * _sign(w[i, j]) for i in range(3) for j in range(3))
    np.testing.assert_allclose(np.asarray(frozen.dw(x)), dw * scale + np.asarray(
        model.dw.bias[...]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(frozen(x)), np.asarray(model(x)), rtol=1e-5,
                               atol=1e-4)


def test_einsum_and_linear_general():
    class Attn(nnx.Module):
        def __init__(self, rngs):
            self.qkv = QuantEinsum("btd,dhk->bthk", (12, 2, 5), (2, 5), input_quantizer="rsign",
                                   kernel_quantizer="bivit_weight", rngs=rngs)
            self.ff = QuantEinsum("...d,df->...f", (10, 9), (9,), input_quantizer="ste_sign",
                                  kernel_quantizer="ste_sign", rngs=rngs)
            self.out = QuantLinearGeneral((2, 5), 4, axis=(-2, -1), input_quantizer="ste_sign",
                                          kernel_quantizer="magnitude_aware_sign", rngs=rngs)
            self.heads = QuantEinsum("bthd,hdk->bthk", (2, 5, 3), input_quantizer="ste_sign",
                                     kernel_quantizer="ste_sign", rngs=rngs)

        def __call__(self, x):
            h = self.qkv(x)
            return self.ff(self.out(h)[..., :1] * jnp.ones((10,))), self.heads(h)

    model = Attn(nnx.Rngs(3))
    x = _rand((2, 3, 12), 9)
    initialize(model, x)
    model.qkv.input_beta[...] = _rand((12,), 10, -0.8, 0.8)
    model.qkv.kernel_alpha[...] = _rand((5,), 11, 0.3, 2.0)
    model.qkv.bias[...] = _rand((2, 5), 12)
    frozen, records = export.freeze(model)
    got = {r.path: (r.frozen, r.activations, r.reason) for r in records}
    assert got["qkv"] == (True, "binary", "") and got["ff"] == (True, "binary", "")
    assert got["out"] == (True, "binary", "")
    assert not got["heads"][0] and "batch axis" in got["heads"][2]
    # qkv independently: per-k scale alpha over the centred kernel (centred over d and h).
    k = np.asarray(model.qkv.kernel[...])
    lv = _sign(k - k.mean(axis=(0, 1), keepdims=True))
    xs = _sign(np.asarray(x) + np.asarray(model.qkv.input_beta[...]))
    expected = np.einsum("btd,dhk->bthk", xs, lv) * np.asarray(model.qkv.kernel_alpha[...]) \
        + np.asarray(model.qkv.bias[...])
    np.testing.assert_allclose(np.asarray(frozen.qkv(x)), expected, rtol=1e-5, atol=1e-4)
    for got_y, want_y in zip(frozen(x), model(x)):
        np.testing.assert_allclose(np.asarray(got_y), np.asarray(want_y), rtol=1e-5, atol=1e-4)
    # '...' with no extra axes and with two.
    for shape in ((10,), (2, 2, 10)):
        z = _rand(shape, 13)
        np.testing.assert_allclose(np.asarray(frozen.ff(z)), np.asarray(model.ff(z)),
                                   rtol=1e-5, atol=1e-5)
    text = export.report(records)
    assert "heads" in text and "kept float (einsum 'bthd,hdk->bthk': kernel axis 'h'" in text


def test_einsum_plan_rejections():
    bad = {"bd,fd->bf": None, "bhd,hdk->bhk": "batch axis", "bd,dk->b": "summed on its own",
           "btd,dk->bk": "summed on its own", "...d,dk->k": "'...' must be in both",
           "bdd,dk->bk": "repeated", None: "call time"}
    for spec, why in bad.items():
        ndim = 2 if spec is None else len(spec.split(",")[1].split("-")[0])
        reason = export.einsum_unsupported(spec, ndim)
        assert (reason is None) if why is None else (why in reason), (spec, reason)


def test_save_load_einsum_and_grouped(tmp_path):
    model = Grouped(nnx.Rngs(4))
    model.g2.kernel[...] = _rand(model.g2.kernel.shape, 14)
    frozen, records = export.freeze(model)
    path = str(tmp_path / "g.npz")
    export.save(frozen, path, records)
    loaded = export.load(path, Grouped(nnx.Rngs(5)))
    x = _rand((1, 4, 4, 8), 15)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(frozen(x)))
    with pytest.raises(ValueError, match="model_spec"):
        export.load(path)


class EinsumNet(nnx.Module):
    def __init__(self, rngs):
        self.e = QuantEinsum("btd,dk->btk", (6, 4), (4,), input_quantizer="rsign",
                             kernel_quantizer="ste_sign", rngs=rngs)
        self.g = QuantLinearGeneral(4, (2, 3), input_quantizer="rsign",
                                    kernel_quantizer="magnitude_aware_sign", rngs=rngs)

    def __call__(self, x):
        return self.g(self.e(x))


def test_save_load_einsum_with_learned_inputs(tmp_path):
    model = EinsumNet(nnx.Rngs(6))
    x = _rand((2, 3, 6), 16)
    initialize(model, x)
    model.e.input_beta[...] = _rand((6,), 17)
    model.g.input_beta[...] = _rand((4,), 18)
    frozen, records = export.freeze(model)
    assert [r.activations for r in records] == ["binary", "binary"]
    path = str(tmp_path / "e.npz")
    export.save(frozen, path, records)
    loaded = export.load(path, EinsumNet(nnx.Rngs(7)))  # fresh: no learned input arrays yet
    assert isinstance(loaded.g, export.FrozenEinsum)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(frozen(x)))
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=1e-5,
                               atol=1e-5)

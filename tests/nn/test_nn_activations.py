"""DPReLU, RPReLU, RSign, LearnableBias, hard sigmoid, squeeze-excitation, WSConv vs numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax.nn import (DPReLU, LearnableBias, QuantConv, RPReLU, RSign, SqueezeExcite, WSConv,
                        hard_sigmoid, quantize)


RNG = np.random.default_rng(0)


def _rand(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _sum_grad(module, x, dy):
    """(d/dmodule, d/dx) of sum(module(x) * dy) under nnx.jit."""
    @nnx.jit
    def g(m, x):
        return nnx.grad(lambda m, x: jnp.sum(m(x) * dy), argnums=(0, 1))(m, x)

    return g(module, jnp.asarray(x))


def test_dprelu_forward_and_gradients():
    c = 5
    m = DPReLU(c)
    np.testing.assert_array_equal(m.pos_slope[...], np.ones(c))
    np.testing.assert_array_equal(m.neg_slope[...], np.full(c, 0.25, np.float32))
    bx, by, sp, sn = _rand(c), _rand(c), _rand(c) + 1, _rand(c) * 0.1 + 0.25
    m.bias_x[...], m.bias_y[...], m.pos_slope[...], m.neg_slope[...] = bx, by, sp, sn
    x = _rand(2, 3, c, scale=2.0)
    x[0, 0, :] = bx  # exactly at the kink
    v = x - bx
    pos = v >= 0
    want = np.where(pos, sp * v, sn * v) - by
    np.testing.assert_allclose(m(jnp.asarray(x)), want, rtol=1e-6, atol=1e-6)
    dy = _rand(2, 3, c)
    dm, dx = _sum_grad(m, x, dy)
    slope = np.where(pos, sp, sn)
    np.testing.assert_allclose(dx, dy * slope, rtol=1e-6)
    np.testing.assert_allclose(dm.bias_x[...], -(dy * slope).sum((0, 1)), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(dm.bias_y[...], -dy.sum((0, 1)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dm.pos_slope[...], (dy * v * pos).sum((0, 1)), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(dm.neg_slope[...], (dy * v * ~pos).sum((0, 1)), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("convention", ["code", "paper"])
def test_rprelu_holds_registry_params_and_matches_formula(convention):
    c = 4
    m = RPReLU(convention)
    x = _rand(3, c, scale=2.0)
    y0 = m(jnp.asarray(x))  # first call creates gamma=zeta=0, slope=0.25
    np.testing.assert_allclose(y0, np.where(x > 0, x, 0.25 * x), rtol=1e-6)
    g, z, s = _rand(c), _rand(c), _rand(c) * 0.1 + 0.25
    m.gamma[...], m.zeta[...], m.slope[...] = g, z, s
    v = x + g if convention == "code" else x - g
    want = np.where(v > 0, v, s * v) + z
    np.testing.assert_allclose(m(jnp.asarray(x)), want, rtol=1e-6, atol=1e-6)
    dy = _rand(3, c)
    dm, dx = _sum_grad(m, x, dy)
    np.testing.assert_allclose(dx, dy * np.where(v > 0, 1, s), rtol=1e-6)
    np.testing.assert_allclose(dm.slope[...], (dy * np.where(v > 0, 0, v)).sum(0), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(dm.zeta[...], dy.sum(0), rtol=1e-5)
    assert isinstance(m.gamma, nnx.Param)


def test_rsign_approx_sign_gradient():
    c = 6
    m = RSign()
    x = _rand(4, c)
    m(jnp.asarray(x))
    beta = _rand(c) * 0.3
    m.beta[...] = beta
    v = x + beta
    np.testing.assert_array_equal(m(jnp.asarray(x)), np.where(v >= 0, 1.0, -1.0))
    dy = _rand(4, c)
    dm, dx = _sum_grad(m, x, dy)
    d = np.maximum(0, 2 - 2 * np.abs(v))
    np.testing.assert_allclose(dx, dy * d, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dm.beta[...], (dy * d).sum(0), rtol=1e-5, atol=1e-6)


def test_learnable_bias_and_hard_sigmoid():
    m = LearnableBias(3)
    b = _rand(3)
    m.bias[...] = b
    x = _rand(2, 3)
    np.testing.assert_array_equal(m(jnp.asarray(x)), x + b)
    z = np.array([-4, -3, -1.5, 0, 1.5, 3, 4], np.float32)
    np.testing.assert_allclose(hard_sigmoid(jnp.asarray(z)), np.clip(z + 3, 0, 6) / 6, rtol=1e-7)


def _dorefa_w(w, k):
    t = np.tanh(w)
    n = 2**k - 1
    return 2 * (np.round((t / (2 * np.abs(t).max()) + 0.5) * n) / n) - 1


def test_squeeze_excite_with_4bit_convs():
    x = _rand(2, 4, 4, 16)
    se = SqueezeExcite(16, 8, reduction=8, kernel_quantizer=dict(name="dorefa", k_bit=4,
                                                                 mode="weights"),
                       hidden_input_quantizer=dict(name="dorefa", k_bit=4),
                       rngs=nnx.Rngs(0))
    w1, b1 = np.asarray(se.reduce.kernel[...])[0, 0], np.asarray(se.reduce.bias[...])
    w2, b2 = np.asarray(se.expand.kernel[...])[0, 0], np.asarray(se.expand.bias[...])
    b1 = b1 + 0.3  # make some hidden units land inside (0, 1) so the 4-bit rounding matters
    se.reduce.bias[...] = b1
    s = x.mean(axis=(1, 2), keepdims=True)
    h = np.maximum(s @ _dorefa_w(w1, 4) + b1, 0)
    hq = np.round(np.clip(h, 0, 1) * 15) / 15
    want = np.clip(hq @ _dorefa_w(w2, 4) + b2 + 3, 0, 6) / 6
    gate = nnx.jit(lambda m, x: m(x))(se, jnp.asarray(x))
    assert gate.shape == (2, 1, 1, 8)
    np.testing.assert_allclose(gate, want, rtol=1e-5, atol=1e-6)
    assert np.any((h > 0) & (h < 1))


def _ws(w):
    axes = tuple(range(w.ndim - 1))
    c = w - w.mean(axes, keepdims=True)
    return c / (jnp.sqrt(jnp.sum(c * c, axes, keepdims=True) / (np.prod(w.shape[:-1]) - 1))
                + 1e-5)


def test_ws_conv_standardizes_then_quantizes_and_differentiates_through():
    x = _rand(2, 5, 5, 3)
    layer = WSConv(3, 4, (3, 3), padding="VALID", use_bias=False, rngs=nnx.Rngs(1))
    w = np.asarray(layer.kernel[...], np.float64)
    c = w - w.mean((0, 1, 2), keepdims=True)
    ws = c / (np.sqrt((c**2).sum((0, 1, 2), keepdims=True) / 26) + 1e-5)
    np.testing.assert_allclose(layer.latent_kernel(), ws, rtol=1e-5, atol=1e-6)
    # Full precision: the conv of the standardized kernel; the gradient flows through WS.
    ref = lambda k, x: jax.lax.conv_general_dilated(  # noqa: E731
        x, _ws(k), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(layer(jnp.asarray(x)), ref(layer.kernel[...], jnp.asarray(x)),
                               rtol=1e-5, atol=1e-5)
    dy = _rand(2, 3, 3, 4)
    dm, _ = _sum_grad(layer, x, dy)
    want = jax.jit(jax.grad(lambda k: jnp.sum(ref(k, jnp.asarray(x)) * dy)))(layer.kernel[...])
    np.testing.assert_allclose(dm.kernel[...], want, rtol=1e-4, atol=1e-5)
    # Quantized: sign of the standardized kernel. quantize() keeps the WS class.
    class Net(nnx.Module):
        def __init__(self):
            self.conv = layer

    net = Net()
    quantize(net, [("conv", "ste_sign")])
    assert type(net.conv) is WSConv and net.conv.kernel is layer.kernel
    np.testing.assert_array_equal(net.conv.quantized_kernel(), np.where(ws >= 0, 1.0, -1.0))


def test_learned_kernel_quantizer_initialises_from_standardized_kernel():
    layer = WSConv(3, 4, (3, 3), kernel_quantizer="bivit_weight", rngs=nnx.Rngs(2))
    ws = np.asarray(layer.latent_kernel())
    np.testing.assert_allclose(layer.kernel_alpha[...], np.abs(ws).mean((0, 1, 2)), rtol=1e-5)
    plain = QuantConv(3, 4, (3, 3), kernel_quantizer="bivit_weight", kernel=layer.kernel,
                      bias=layer.bias)
    assert not np.allclose(plain.kernel_alpha[...], layer.kernel_alpha[...])

"""Classic binarizers against numpy implementations of methods.md §1 formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnn_jax.quant as q
from binarizer_oracles import SHAPES, edges, np_sign, rand, vjp

EDGES = np.concatenate([edges(0.0, 1.0, -1.0, 0.5), np.array([-0.0], np.float32)])


def per_out(w):
    return tuple(range(w.ndim - 1))


def inputs(seed=0):
    return [rand(s, seed + i) for i, s in enumerate(SHAPES)] + [EDGES]


@pytest.mark.parametrize("boundary", ["inclusive", "exclusive"])
def test_bnn_ste(boundary):
    fn = q.get("bnn_ste", boundary=boundary)
    for x in inputs():
        y, (dx,), g = vjp(fn, x)
        np.testing.assert_array_equal(y, np_sign(x))
        inside = np.abs(x) <= 1 if boundary == "inclusive" else np.abs(x) < 1
        np.testing.assert_array_equal(dx, g * inside)
    assert q.get("bnn_ste", boundary=boundary)(jnp.float32(-0.0)) == 1.0


def test_bnn_ste_rejects_bad_boundary():
    with pytest.raises(ValueError, match="inclusive"):
        q.get("bnn_ste", boundary="open")


def test_binary_connect_identity_gradient():
    for x in inputs():
        y, (dx,), g = vjp(q.get("binary_connect"), x)
        np.testing.assert_array_equal(y, np_sign(x))
        np.testing.assert_array_equal(dx, g)


def test_binary_connect_stochastic():
    x, key = rand((4, 6)), jax.random.PRNGKey(3)
    u = np.asarray(jax.random.uniform(key, x.shape))
    p = np.clip((x + 1) / 2, 0, 1)
    y, (dx,), g = vjp(lambda w: q.binary_connect_stochastic(w, key), x)
    np.testing.assert_array_equal(y, np.where(u < p, 1.0, -1.0))
    np.testing.assert_allclose(dx, g)


@pytest.mark.parametrize("gradient", ["code", "paper"])
def test_xnor_weight(gradient):
    for x in [rand((5,)), rand((3, 4)), rand((3, 3, 2, 4)), EDGES.reshape(-1, 1)]:
        alpha = np.mean(np.abs(x.astype(np.float64)), axis=per_out(x), keepdims=True)
        y, (dx,), g = vjp(q.get("xnor_weight", gradient=gradient), x)
        np.testing.assert_allclose(y, alpha * np_sign(x), rtol=1e-6)
        clipped = (np.abs(x) <= 1).astype(np.float64)
        n = np.prod(x.shape[:-1])
        expect = g * clipped if gradient == "code" else g * (1.0 / n + alpha * clipped)
        np.testing.assert_allclose(dx, expect, rtol=1e-6, atol=1e-7)


def test_xnor_weight_centred_linear_variant():
    for w in [rand((5, 3), 12), rand((2, 3, 4), 13, scale=0.7)]:
        y, (dw,), g = vjp(q.get("xnor_weight", centred=True), w)
        axes = per_out(w)
        c = w.astype(np.float64) - w.mean(axes, keepdims=True)
        sw = np.abs(c).mean(axes, keepdims=True)
        np.testing.assert_allclose(y, sw * np_sign(c), rtol=1e-6)
        u = g * sw * (np.abs(c) <= 1)  # BinaryQuantize then ×sw, back through the centring
        np.testing.assert_allclose(dw, u - u.mean(axes, keepdims=True), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="centred"):
        q.get("xnor_weight", centred=True, gradient="paper")


def test_xnor_act_per_sample_and_none():
    x = rand((2, 3, 3, 2))
    x[0, 0, 0] = [1.0, -1.0]
    x[1, 1, 1] = [0.0, np.nextafter(np.float32(1), np.float32(2))]
    y, (dx,), g = vjp(q.get("xnor_act"), x)
    alpha = np.mean(np.abs(x.astype(np.float64)), axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(y, alpha * np_sign(x), rtol=1e-6)
    np.testing.assert_array_equal(dx, g * (np.abs(x) <= 1))
    y, (dx,), g = vjp(q.get("xnor_act", scaling="none"), x)
    np.testing.assert_array_equal(y, np_sign(x))
    np.testing.assert_array_equal(dx, g * (np.abs(x) <= 1))


def np_box_same(a, k, s):
    """Zero-padded SAME k x k mean filter of a (N, H, W) map with stride s."""
    n, h, w = a.shape
    out_h, out_w = -(-h // s), -(-w // s)
    ph, pw = max((out_h - 1) * s + k - h, 0), max((out_w - 1) * s + k - w, 0)
    p = np.pad(a, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
    out = np.zeros((n, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            out[:, i, j] = p[:, i * s:i * s + k, j * s:j * s + k].sum((1, 2)) / (k * k)
    return out


@pytest.mark.parametrize("k,s", [(3, 1), (3, 2), (1, 1)])
def test_xnor_scaling_map(k, s):
    x = rand((2, 5, 6, 3), seed=k + s)
    got = np.asarray(q.xnor_scaling_map(jnp.asarray(x), kernel_size=k, strides=s))
    a = np.mean(np.abs(x.astype(np.float64)), axis=-1)
    np.testing.assert_allclose(got[..., 0], np_box_same(a, k, s), rtol=1e-5, atol=1e-6)
    # stop-gradient: no gradient reaches x through K
    grad = jax.grad(lambda v: q.xnor_scaling_map(v, kernel_size=k, strides=s).sum())(x)
    np.testing.assert_array_equal(grad, 0)


@pytest.mark.parametrize("gradient", ["code", "paper"])
def test_bireal_weight(gradient):
    for x in [rand((6,)), rand((4, 3)), rand((3, 3, 2, 5), scale=0.8), EDGES.reshape(-1, 1)]:
        alpha = np.mean(np.abs(x.astype(np.float64)), axis=per_out(x), keepdims=True)
        y, (dx,), g = vjp(q.get("bireal_weight", gradient=gradient), x)
        np.testing.assert_allclose(y, alpha * np_sign(x), rtol=1e-6)
        clipped = np.abs(x) <= 1
        expect = g * clipped if gradient == "code" else g * alpha * clipped
        np.testing.assert_allclose(dx, expect, rtol=1e-6)


def np_twn(w, factor, per_channel):
    axes = per_out(w) if per_channel else None
    a = np.abs(w.astype(np.float64))
    delta = factor * a.mean(axis=axes, keepdims=True)
    above = a > delta
    alpha = (a * above).sum(axis=axes, keepdims=True) / above.sum(axis=axes, keepdims=True)
    return alpha * ((w > delta).astype(np.float64) - (w < -delta))


@pytest.mark.parametrize("per_channel", [False, True])
def test_twn(per_channel):
    for w in [rand((9,), 3), rand((4, 5), 4), rand((3, 3, 2, 4), 5)]:
        y, (dw,), g = vjp(q.get("twn", per_channel=per_channel), w)
        np.testing.assert_allclose(y, np_twn(w, 0.7, per_channel), rtol=1e-6)
        np.testing.assert_array_equal(dw, g)  # identity STE
    # Exact threshold: |w| == delta is zeroed (strict >), alpha = mean of the rest.
    w = np.array([0.5, -0.5, -1.5, 1.5], np.float32)
    y = np.asarray(q.get("twn", threshold_factor=0.5)(jnp.asarray(w)))
    np.testing.assert_array_equal(y, [0.0, 0.0, -1.5, 1.5])


def test_irnet_ede():
    for t, k in [(0.1, 10.0), (1.0, 1.0), (3.0, 1.0)]:
        for x in inputs():
            y, (dx,), g = vjp(q.get("irnet_ede", t=t, k=k), x)
            np.testing.assert_array_equal(y, np_sign(x))
            expect = g * k * t * (1 - np.tanh(t * x.astype(np.float64)) ** 2)
            # 1 - tanh^2 cancels in float32 where |t x| is large: allow a few ulps of 1 times k t.
            np.testing.assert_allclose(dx, expect, rtol=1e-5, atol=1e-6 * k * t)


def test_irnet_ede_traced_schedule():
    x = rand((3, 4))

    @jax.jit
    def grad_at(step):
        t, k = q.schedules.irnet_t_k(step, 100)
        return jax.grad(lambda v: jnp.sum(q.get("irnet_ede")(v, t=t, k=k)))(x)

    for step, t in [(0, 0.1), (50, 1.0), (100, 10.0)]:
        k = max(1 / t, 1.0)
        np.testing.assert_allclose(grad_at(step), k * t * (1 - np.tanh(t * x) ** 2), rtol=1e-5,
                                   atol=2e-6 * k * t)


def test_irnet_weight():
    for w in [rand((6, 3), 7), rand((3, 3, 4, 2), 8)]:
        y, (dw,), g = vjp(q.get("irnet_weight", t=0.5, k=2.0), w)
        w64, axes = w.astype(np.float64), per_out(w)
        n = np.prod(w.shape[:-1])
        c = w64 - w64.mean(axes, keepdims=True)
        sd = np.sqrt((c**2).sum(axes, keepdims=True) / (n - 1))
        w_hat = c / sd
        scale = 2.0 ** np.round(np.log2(np.abs(w_hat).mean(axes, keepdims=True)))
        np.testing.assert_allclose(y, scale * np_sign(w_hat), rtol=1e-6)
        # d/dW through (W - mean)/std: J^T u = (u - mean u)/sd - w_hat·sum(u·w_hat)/((n-1)·sd)
        u = g * scale * 2.0 * 0.5 * (1 - np.tanh(0.5 * w_hat) ** 2)
        expect = ((u - u.mean(axes, keepdims=True)) / sd
                  - w_hat * (u * w_hat).sum(axes, keepdims=True) / ((n - 1) * sd))
        np.testing.assert_allclose(dw, expect, rtol=2e-4, atol=2e-6)


def np_fda_grad(x, n, omega=0.1):
    x = x.astype(np.float64)
    s = sum(np.cos((2 * i + 1) * omega * x) for i in range(n + 1))
    return np.where(np.abs(x) > 1, 0.0, 4 * omega / math.pi * s)


def test_fda_static_and_traced_terms():
    xs = inputs() + [rand((5,), scale=3.0)]
    for n in (0, 9, 18):
        for x in (xs if n == 9 else xs[-2:]):
            y, (dx,), g = vjp(q.get("fda", n=n), x)
            np.testing.assert_array_equal(y, np_sign(x))
            np.testing.assert_allclose(dx, g * np_fda_grad(x, n), rtol=1e-5, atol=1e-6)
    x = xs[-1]
    traced = jax.jit(lambda v, n: jax.grad(lambda u: jnp.sum(q.get("fda")(u, n=n)))(v))
    for n in (9, 13, 18):
        np.testing.assert_allclose(traced(x, n), np_fda_grad(x, n), rtol=1e-5, atol=1e-6)


def test_fda_rejects_too_many_terms():
    with pytest.raises(ValueError, match="n must be"):
        q.get("fda", n=30)


@pytest.mark.parametrize("convention,sgn", [("code", 1.0), ("paper", -1.0)])
def test_rsign(convention, sgn):
    quant = q.get("rsign", convention=convention)
    assert quant.learned == ("beta",)
    for x in [rand((4, 3)), rand((2, 2, 2, 3), 1), EDGES.reshape(-1, 1)]:
        init = quant.init(x)
        np.testing.assert_array_equal(init["beta"], np.zeros(x.shape[-1:]))
        beta = rand(x.shape[-1:], 9, scale=0.3)
        y, (dx, dbeta), g = vjp(lambda v, b: quant(v, beta=b), x, beta)
        v = x + sgn * beta
        np.testing.assert_array_equal(y, np_sign(v))
        h = np.maximum(0.0, 2 - 2 * np.abs(v.astype(np.float64)))
        np.testing.assert_allclose(dx, g * h, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(dbeta, sgn * (g * h).reshape(-1, x.shape[-1]).sum(0),
                                   rtol=1e-5, atol=1e-6)
    # sign(0) = +1 at the shifted origin
    assert quant(jnp.float32(-0.25), beta=jnp.float32(sgn * 0.25)) == 1.0


@pytest.mark.parametrize("convention,sgn", [("code", 1.0), ("paper", -1.0)])
def test_rprelu(convention, sgn):
    quant = q.get("rprelu", convention=convention)
    x = np.concatenate([rand((5, 3)), np.array([[0.1, -0.2, 0.0]], np.float32)])
    init = quant.init(x)
    np.testing.assert_array_equal(init["slope"], [0.25] * 3)
    gamma = np.array([0.1, 0.2, 0.0], np.float32)
    zeta, slope = rand((3,), 4), np.array([0.25, 0.1, 0.5], np.float32)
    y, (dx, dgm, dz, da), g = vjp(
        lambda v, a, b, c: quant(v, gamma=a, zeta=b, slope=c), x, gamma, zeta, slope)
    v = x.astype(np.float64) + sgn * gamma
    pos = v > 0  # torch PReLU uses the slope at exactly 0
    np.testing.assert_allclose(y, np.where(pos, v, slope * v) + zeta, rtol=1e-6, atol=1e-7)
    local = np.where(pos, 1.0, slope)
    np.testing.assert_allclose(dx, g * local, rtol=1e-6)
    np.testing.assert_allclose(dgm, sgn * (g * local).sum(0), rtol=1e-5)
    np.testing.assert_allclose(dz, g.sum(0), rtol=1e-5)
    np.testing.assert_allclose(da, (g * v * ~pos).sum(0), rtol=1e-5, atol=1e-6)

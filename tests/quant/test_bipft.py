"""BiPFT binarizers against numpy; attention pieces on hand-built cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnn_jax.quant as q
from bnn_jax.quant import bipft

RNG = np.random.default_rng(3)
f32 = np.float32


def np_bwn(w, layerwise):
    e = w.mean()
    if layerwise:
        m = np.abs(w).sum() / w.size
    else:
        m = np.abs(w).sum(axis=1, keepdims=True) / w.shape[1]
    return np.sign(w - e) * m


@pytest.mark.parametrize("shape", [(4, 6), (3, 2, 5)])
@pytest.mark.parametrize("layerwise", [True, False])
def test_bipft_weight_matches_reference(shape, layerwise):
    if not layerwise and len(shape) > 2:
        shape = shape[:2]  # the row-wise rule is for 2-D embedding tables
    w = RNG.normal(size=shape).astype(f32)
    y, vjp = jax.vjp(q.get("bipft_weight", layerwise=layerwise), jnp.asarray(w))
    expected = np_bwn(w, layerwise)
    np.testing.assert_array_equal(np.sign(y), np.sign(expected))
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    g = RNG.normal(size=shape).astype(f32)
    np.testing.assert_array_equal(vjp(jnp.asarray(g))[0], g)


def np_elastic1(x, alpha, g, signed):
    """The reference's 1-bit ElasticQuantBinarizer{Signed,Unsigned}: value, dx, dalpha."""
    if signed:
        y = np.sign(x) * alpha
        ga = np.sum(np.sign(x) * g) / np.sqrt(x.size)
        mid = (x / alpha >= -1) & (x / alpha <= 1)
    else:
        v = x / alpha
        y = np.clip(np.round(v), 0, 1) * alpha
        small, big = v < 0, v > 1
        mid = ~small & ~big
        ga = np.sum((big * 1.0 + mid * (np.round(v) - v)) * g) / np.sqrt(x.size)
    return y, g * mid, ga


def test_bipft_act_shift_and_scale_gradients():
    x = RNG.normal(size=(2, 3, 4)).astype(f32)
    shift = RNG.normal(size=(4,)).astype(f32) * 0.3
    alpha = f32(0.8)
    x[0, 0] = [0.8 - shift[0], -0.8 - shift[1], 0.4 - shift[2], 0.0 - shift[3]]  # boundaries
    g = RNG.normal(size=x.shape).astype(f32)
    quant = q.get("bipft_act")
    assert set(quant.learned) == {"alpha", "shift"}
    y, vjp = jax.vjp(lambda x, a, b: quant(x, alpha=a, shift=b), *map(jnp.asarray,
                                                                       (x, alpha, shift)))
    dx, da, db = vjp(jnp.asarray(g))
    xs = x + shift
    ey, edx, eda = np_elastic1(xs, alpha, g, signed=True)
    np.testing.assert_allclose(y, ey, rtol=1e-6)
    np.testing.assert_array_equal(dx, edx)
    np.testing.assert_allclose(da, eda, rtol=1e-5)
    np.testing.assert_allclose(db, edx.sum(axis=(0, 1)), rtol=1e-5, atol=1e-6)


def test_bipft_inits():
    x = RNG.normal(size=(3, 5)).astype(f32)
    init = q.get("bipft_act").init(jnp.asarray(x))
    np.testing.assert_allclose(init["alpha"], 2 * np.abs(x).mean(), rtol=1e-6)
    np.testing.assert_array_equal(init["shift"], np.zeros(5))
    p = np.abs(x)
    np.testing.assert_allclose(q.get("bipft_attn_probs").init(jnp.asarray(p))["alpha"],
                               4 * p.mean(), rtol=1e-6)


def test_bipft_attn_probs_matches_reference():
    p = jax.nn.softmax(jnp.asarray(RNG.normal(size=(2, 2, 3, 3)).astype(f32)), -1)
    p = np.asarray(p).copy()
    alpha = f32(0.4)
    p[0, 0, 0] = [0.2, 0.4, 0.4]  # tie at P/α = 0.5 (-> 0) and the top boundary P/α = 1
    g = RNG.normal(size=p.shape).astype(f32)
    y, vjp = jax.vjp(lambda p, a: q.bipft_attn_probs(p, alpha=a), jnp.asarray(p),
                     jnp.asarray(alpha))
    ey, edx, eda = np_elastic1(p, alpha, g, signed=False)
    np.testing.assert_allclose(y, ey, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(y)[0, 0, 0], np.array([0, alpha, alpha], f32))
    dx, da = vjp(jnp.asarray(g))
    np.testing.assert_array_equal(dx, edx)
    np.testing.assert_allclose(da, eda, rtol=1e-5)


@pytest.mark.parametrize("alpha", [1e-6, -0.3])
def test_bipft_alpha_below_floor_keeps_its_gradient(alpha):
    """BiPFT utils_quant.py floors alpha at 1e-5 in forward (lines 53, 118) and still returns
    grad_alpha from backward (lines 77-83, 141-144): the gradient is that of the floored alpha."""
    x = (RNG.normal(size=(2, 3, 4)) * 1e-5).astype(f32)
    g = RNG.normal(size=x.shape).astype(f32)
    shift = np.zeros(4, f32)
    cases = [(lambda x, a: q.bipft_act(x, alpha=a, shift=shift), x, True),
             (lambda p, a: q.bipft_attn_probs(p, alpha=a), np.abs(x), False)]
    for fn, inp, signed in cases:
        y, vjp = jax.vjp(fn, jnp.asarray(inp), jnp.asarray(alpha, f32))
        dx, da = vjp(jnp.asarray(g))
        ey, edx, eda = np_elastic1(inp, f32(1e-5), g, signed=signed)
        np.testing.assert_allclose(y, ey, rtol=1e-6)
        np.testing.assert_array_equal(dx, edx)
        np.testing.assert_allclose(da, eda, rtol=1e-5)
        assert abs(float(da)) > 0


def linear(kernel, bias):
    return {"kernel": jnp.asarray(kernel, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)}


# x = I₂: q_p = (1, 0), k_p = (1, 2), q_m = (2, 0), k_m = (0, 0), v_p = (1.5, −0.5).
EST = {"q_p": linear([1, 0], 0), "k_p": linear([0, 1], 1), "q_m": linear([2, 0], 0),
       "k_m": linear([1, 1], -1), "v_p": linear([1, -1], 0.5)}
X = np.eye(2, dtype=f32)[None]


def test_low_rank_residuals_hand_built():
    scores, value = bipft.low_rank_residuals(jnp.asarray(X), EST)
    # q_m·k_pᵀ + q_p·k_mᵀ + q_p·k_pᵀ = [[2, 4], [0, 0]] + 0 + [[1, 2], [0, 0]]
    np.testing.assert_array_equal(scores, [[[[3, 6], [0, 0]]]])
    np.testing.assert_array_equal(value, [[[[1.5], [-0.5]]]])


# sign(Q)·sign(K)ᵀ = 0 everywhere, so the softmax is uniform (0.5, 0.5): P/α = 0.5 is a tie.
QA = np.array([[1.0, 1.0], [1.0, 1.0]], f32)[None, None]
KA = np.array([[1.0, -1.0], [-1.0, 1.0]], f32)[None, None]
VA = np.array([[2.0, -1.0], [0.5, 0.5]], f32)[None, None]  # v_alpha = 2: (2,-2), (2,2)
ALPHAS = dict(q_alpha=jnp.float32(1.0), k_alpha=jnp.float32(1.0), v_alpha=jnp.float32(2.0))


@pytest.mark.parametrize("attn_alpha,mask,attention,context", [
    (1.0, None, [[0, 0], [0, 0]], [[0, 0], [0, 0]]),               # tie rounds to 0
    (0.9, None, [[0.9, 0.9], [0.9, 0.9]], [[3.6, 0], [3.6, 0]]),
    (0.9, [True, False], [[0.9, 0], [0.9, 0]], [[1.8, -1.8], [1.8, -1.8]]),  # key 1 masked
    (0.9, [0.0, -10000.0], [[0.9, 0], [0.9, 0]], [[1.8, -1.8], [1.8, -1.8]]),
])
def test_bipft_attention_hand_built(attn_alpha, mask, attention, context):
    m = None if mask is None else jnp.asarray(np.asarray(mask)[None, None, None, :])
    ctx, att = q.bipft_attention(jnp.asarray(QA), jnp.asarray(KA), jnp.asarray(VA), mask=m,
                                 attn_alpha=jnp.float32(attn_alpha), **ALPHAS)
    np.testing.assert_allclose(att[0, 0], attention, rtol=1e-6)
    np.testing.assert_allclose(ctx[0, 0], context, rtol=1e-6, atol=1e-6)


def test_bipft_attention_with_estimators_matches_numpy():
    ctx, att = q.bipft_attention(jnp.asarray(QA), jnp.asarray(KA), jnp.asarray(VA),
                                 jnp.asarray(X), estimators=EST, attn_alpha=jnp.float32(0.3),
                                 **ALPHAS)
    s = (np.zeros((2, 2)) + np.array([[3, 6], [0, 0]])) / np.sqrt(2)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    a = np.clip(np.round(p / 0.3), 0, 1) * 0.3
    vb = np.array([[2, -2], [2, 2]])
    expected = a @ vb + a @ np.array([[1.5], [-0.5]])
    np.testing.assert_allclose(att[0, 0], a, rtol=1e-6)
    np.testing.assert_allclose(ctx[0, 0], expected, rtol=1e-6)
    assert not np.allclose(a[0], a[1])  # the residual changed row 0 only


def test_bipft_attention_init_and_gradients():
    qkv = [jnp.asarray(RNG.normal(size=(1, 2, 3, 4)).astype(f32)) for _ in range(3)]
    x = jnp.asarray(RNG.normal(size=(1, 3, 8)).astype(f32))
    est = bipft.init_estimators(jax.random.PRNGKey(0), 8)
    alphas = bipft.bipft_attention_init(*qkv, x, estimators=est)
    np.testing.assert_allclose(alphas["q_alpha"], 2 * np.abs(np.asarray(qkv[0])).mean(),
                               rtol=1e-6)

    def loss(est, alphas):
        return jnp.sum(q.bipft_attention(*qkv, x, estimators=est, **alphas)[0] ** 2)

    g_est, g_alpha = jax.jit(jax.grad(loss, argnums=(0, 1)))(est, alphas)
    assert np.any(np.asarray(g_est["v_p"]["kernel"]) != 0)
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves((g_est, g_alpha)))

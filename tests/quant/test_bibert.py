"""BiBERT: weights/activations against numpy, Bi-Attention on hand-built cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnn_jax.quant as q

RNG = np.random.default_rng(2)
f32 = np.float32


def np_bibert_weight(w, g, axes):
    alpha = np.mean(np.abs(w), axis=axes, keepdims=True)
    c = w - np.mean(w, axis=axes, keepdims=True)
    y = alpha * np.sign(c)
    gc = g * (np.abs(c) <= 1)
    return y, gc - np.mean(gc, axis=axes, keepdims=True)  # back through the row centring


@pytest.mark.parametrize("shape,channel_axis,axes", [((5, 3), -1, (0,)), ((6, 4), 0, (1,)),
                                                      ((2, 2, 3, 4), -1, (0, 1, 2))])
def test_bibert_weight_matches_reference(shape, channel_axis, axes):
    w = (RNG.normal(size=shape) * 1.5).astype(f32)
    g = RNG.normal(size=shape).astype(f32)
    quant = q.get("bibert_weight", channel_axis=channel_axis)
    y, vjp = jax.vjp(quant, jnp.asarray(w))
    ey, eg = np_bibert_weight(w, g, axes)
    np.testing.assert_array_equal(np.sign(y), np.sign(ey))
    np.testing.assert_allclose(y, ey, rtol=1e-6)
    np.testing.assert_allclose(vjp(jnp.asarray(g))[0], eg, rtol=1e-5, atol=1e-6)


def test_bibert_weight_clip_boundary_is_inclusive():
    # Columns have mean 0, so the centred weight equals w: |w| = 1 passes, 3 does not.
    w = np.array([[1.0, 0.5], [-1.0, -0.5], [3.0, 2.0], [-3.0, -2.0]], f32)
    _, vjp = jax.vjp(q.bibert_weight, jnp.asarray(w))
    g = np.ones_like(w)
    np.testing.assert_allclose(vjp(jnp.asarray(g))[0], np_bibert_weight(w, g, (0,))[1])
    assert np.asarray(vjp(jnp.asarray(g))[0])[0, 0] != np.asarray(vjp(jnp.asarray(g))[0])[2, 0]


def test_bibert_act_and_qkv_sign_boundaries():
    x = np.array([1.0, -1.0, np.nextafter(f32(1), f32(0)), 1.5, 0.0, -0.3], f32)
    y, vjp = jax.vjp(q.bibert_act, jnp.asarray(x))
    np.testing.assert_array_equal(y, np.sign(x))  # sign(0) = 0 (torch.sign)
    np.testing.assert_array_equal(vjp(jnp.ones(6))[0], [1, 1, 1, 0, 1, 1])  # clamp: inclusive
    y, vjp = jax.vjp(q.bibert_sign, jnp.asarray(x))
    np.testing.assert_array_equal(y, np.sign(x))
    np.testing.assert_array_equal(vjp(jnp.ones(6))[0], [0, 0, 1, 0, 1, 1])  # BinaryQuantizer


# Hand-built Bi-Attention: sign(q) rows (1,1), (1,-1), (-1,1); sign(k) rows (1,-1), (1,1),
# (-1,-1). Scores·√2 = [[0, 2, -2], [2, 0, 0], [-2, 0, 0]]: four exact ties at 0.
Q = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 0.5]], f32)[None, None]
K = np.array([[1.0, -1.0], [0.3, 0.2], [-2.0, -1.0]], f32)[None, None]
V = np.array([[0.5, -2.0], [-1.0, 3.0], [0.1, -0.1]], f32)[None, None]  # signs ±(1,-1)


@pytest.mark.parametrize("rule,attention,context", [
    ("code", [[0, 1, 0], [1, 0, 0], [0, 0, 0]], [[-1, 1], [1, -1], [0, 0]]),
    ("paper", [[1, 1, 0], [1, 1, 1], [0, 1, 1]], [[0, 0], [1, -1], [0, 0]]),
])
def test_bi_attention_ties(rule, attention, context):
    ctx, att = q.bi_attention(jnp.asarray(Q), jnp.asarray(K), jnp.asarray(V), bool_rule=rule)
    np.testing.assert_array_equal(att[0, 0], attention)
    np.testing.assert_array_equal(ctx[0, 0], context)


@pytest.mark.parametrize("rule,attention,context", [
    ("code", [[0, 0, 0], [1, 0, 0], [0, 0, 0]], [[0, 0], [1, -1], [0, 0]]),
    ("paper", [[1, 0, 0], [1, 0, 1], [0, 0, 1]], [[1, -1], [2, -2], [1, -1]]),
])
@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_bi_attention_masking(rule, attention, context, kind):
    keep = np.array([True, False, True])[None, None, None, :]  # key 1 is padding
    mask = keep if kind == "bool" else np.where(keep, 0.0, -10000.0).astype(f32)
    ctx, att = q.bi_attention(jnp.asarray(Q), jnp.asarray(K), jnp.asarray(V), jnp.asarray(mask),
                              bool_rule=rule)
    np.testing.assert_array_equal(att[0, 0], attention)
    np.testing.assert_array_equal(ctx[0, 0], context)


def test_bi_attention_gradients_use_clipped_identity():
    q_, k_, v_ = (RNG.normal(size=(1, 2, 4, 3)).astype(f32) for _ in range(3))

    def loss(a, b, c):
        return jnp.sum(q.bi_attention(a, b, c)[0] * jnp.arange(3.0))

    gq, gk, gv = jax.grad(loss, argnums=(0, 1, 2))(*map(jnp.asarray, (q_, k_, v_)))
    # V: context = A·sign(V), so dV = (Aᵀ·dctx)·1[|V| < 1].
    att = np.asarray(q.bi_attention(*map(jnp.asarray, (q_, k_, v_)))[1])
    dctx = np.broadcast_to(np.arange(3.0, dtype=f32), (1, 2, 4, 3))
    np.testing.assert_allclose(gv, np.einsum("bhqk,bhqd->bhkd", att, dctx) * (np.abs(v_) < 1),
                               rtol=1e-6)
    for g, x in ((gq, q_), (gk, k_)):
        assert np.all(np.asarray(g)[np.abs(x) >= 1] == 0)
        assert np.all(np.isfinite(g))

"""Attention variants on tiny shapes against direct numpy computations written here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax.nn.attention import (BiAttention, BiPFTAttention, MultiHeadAttention,
                                  QKReparamAttention, SABAttention)


# An odd input width: a projection of sign(x) sums an odd number of +-1 terms and is never an
# exact 0, whose sign float32 rounding would decide. Scores sum an even number (ties do occur).
B, N, D, F, H = 2, 3, 9, 8, 2
DH = F // H
RNG = np.random.default_rng(7)
X = (RNG.standard_normal((B, N, D)) * 1.5).astype(np.float32)
# Padding mask: the second example may not attend to its last token.
PAD = np.ones((B, 1, 1, N), bool)
PAD[1, ..., -1] = False


def _sign(a):
    return np.where(a >= 0, 1.0, -1.0)


def _softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _heads(a):
    return a.reshape(B, -1, H, DH).transpose(0, 2, 1, 3)


def _merge(a):
    return a.transpose(0, 2, 1, 3).reshape(B, -1, H * DH)


def _kb(layer):
    k = np.asarray(layer.kernel[...], np.float64)
    b = None if layer.bias is None else np.asarray(layer.bias[...], np.float64)
    return k, b


def _run(m, x, mask):
    return np.asarray(nnx.jit(lambda m, x, mask: m(x, mask=mask))(m, jnp.asarray(x), mask))


def test_full_precision_attention_and_cross_attention():
    m = MultiHeadAttention(H, D, F, rngs=nnx.Rngs(0))
    (wq, bq), (wk, bk), (wv, bv), (wo, bo) = (_kb(m.query), _kb(m.key), _kb(m.value), _kb(m.out))
    kv = RNG.standard_normal((B, 5, D)).astype(np.float32)
    for inputs_kv, mask in ((None, PAD), (kv, None)):
        src = X if inputs_kv is None else kv
        q, k, v = _heads(X @ wq + bq), _heads(src @ wk + bk), _heads(src @ wv + bv)
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(DH)
        if mask is not None:
            s = np.where(mask, s, -np.inf)
        want = _merge(_softmax(s) @ v) @ wo + bo
        got = nnx.jit(lambda m, x, kv: m(x, kv, mask=mask))(
            m, jnp.asarray(X), None if inputs_kv is None else jnp.asarray(kv))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # A masked key has exactly zero influence.
    x2 = X.copy()
    x2[1, -1] += 5.0
    np.testing.assert_allclose(_run(m, x2, PAD)[1, :2], _run(m, X, PAD)[1, :2], rtol=1e-6,
                               atol=1e-6)


def test_quantized_projections_and_learned_probability_quantizer():
    m = MultiHeadAttention(H, D, F, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                           qkv_quantizer="ste_sign",
                           attn_quantizer=dict(name="lsq", bits=2, signed=False),
                           rngs=nnx.Rngs(1))
    (wq, bq), (wk, bk), (wv, bv), (wo, bo) = (_kb(m.query), _kb(m.key), _kb(m.value), _kb(m.out))
    xs = _sign(X)
    q, k, v = (_sign(_heads(xs @ _sign(w) + b)) for w, b in ((wq, bq), (wk, bk), (wv, bv)))
    p = _softmax(np.where(PAD, q @ k.transpose(0, 1, 3, 2) / np.sqrt(DH), -np.inf))
    step = 4 * np.abs(p).mean() / np.sqrt(3)  # LSQ's first-call step, unsigned (code rule)
    pq = np.round(np.clip(p / step, 0, 3)) * step
    want = _sign(_merge(pq @ v)) @ _sign(wo) + bo
    got = _run(m, X, PAD)
    np.testing.assert_allclose(m.attn_quant.step[...], step, rtol=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    g = nnx.jit(nnx.grad(lambda m: jnp.sum(m(jnp.asarray(X), mask=PAD) ** 2)))(m)
    assert np.isfinite(g.attn_quant.step[...]) and g.attn_quant.step[...] != 0
    assert np.any(np.asarray(g.query.kernel[...]) != 0)


def _bibert_w(w):
    alpha = np.abs(w).mean(0)
    return alpha * np.sign(w - w.mean(0))


@pytest.mark.parametrize("bool_rule", ["code", "paper"])
def test_bibert_bi_attention(bool_rule):
    m = BiAttention(H, D, F, bool_rule=bool_rule, rngs=nnx.Rngs(2))
    (wq, bq), (wk, bk), (wv, bv), (wo, bo) = (_kb(m.query), _kb(m.key), _kb(m.value), _kb(m.out))
    xs = np.sign(X)
    q, k, v = (_heads(xs @ _bibert_w(w) + b) for w, b in ((wq, bq), (wk, bk), (wv, bv)))
    s = np.sign(q) @ np.sign(k).transpose(0, 1, 3, 2) / np.sqrt(DH) + np.where(PAD, 0, -10000)
    a = (s > 0) if bool_rule == "code" else (s >= 0)
    want = np.sign(_merge(a @ np.sign(v))) @ _bibert_w(wo) + bo
    got = _run(m, X, PAD)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # Real-valued Q and the binary attention, captured for the DMD loss.
    y, inter = nnx.capture(m, nnx.Intermediate)(jnp.asarray(X), mask=PAD)
    np.testing.assert_allclose(y, got, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(inter["q"][0], q, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(inter["attention"][0], a)
    assert not hasattr(m, "q")  # nothing stored outside nnx.capture
    assert np.any(s == 0)  # ties at 0 exist, so the two bool rules are really told apart


def _bivit_w(w):
    return np.abs(w).mean(0) * _sign(w - w.mean(0))


def test_bivit_softmax_aware_binarization_forward():
    m = SABAttention(H, D, F, rngs=nnx.Rngs(3))
    (wq, bq), (wk, bk), (wv, bv), (wo, bo) = (_kb(m.query), _kb(m.key), _kb(m.value), _kb(m.out))
    np.testing.assert_allclose(m.query.kernel_alpha[...], np.abs(wq).mean(0), rtol=1e-6)
    xs = _sign(X)
    q, k, v = (_heads(xs @ _bivit_w(w) + b) for w, b in ((wq, bq), (wk, bk), (wv, bv)))
    s = _sign(q) @ _sign(k).transpose(0, 1, 3, 2) / np.sqrt(DH)
    p = _softmax(np.where(PAD, s, -np.inf))
    a = p >= 0.25 * p.max(-1, keepdims=True)
    want = _sign(_merge(a @ _sign(v))) @ _bivit_w(wo) + bo
    np.testing.assert_allclose(_run(m, X, PAD), want, rtol=1e-5, atol=1e-5)
    assert not np.all(a[np.broadcast_to(PAD, a.shape)])  # the threshold drops some keys


def test_bivit_attend_gradient_is_the_softmax_jacobian():
    m = SABAttention(H, D, F, rngs=nnx.Rngs(3))
    q, k, v = (jnp.asarray(RNG.standard_normal((B, H, N, DH)).astype(np.float32) * 0.8)
               for _ in range(3))
    dy = jnp.asarray(RNG.standard_normal((B, H, N, DH)).astype(np.float32))

    def ref(q, k, v):
        ste = lambda t: jax.lax.stop_gradient(jnp.where(t >= 0, 1.0, -1.0) - jnp.clip(t, -1, 1)) \
            + jnp.clip(t, -1, 1)  # noqa: E731
        s = ste(q) @ jnp.swapaxes(ste(k), -1, -2) / np.sqrt(DH)
        s = jnp.where(PAD, s, jnp.finfo(jnp.float32).min)
        p = jax.nn.softmax(s, -1)
        a = (p >= 0.25 * p.max(-1, keepdims=True)).astype(p.dtype)
        return (jax.lax.stop_gradient(a - p) + p) @ ste(v)

    got = nnx.jit(jax.grad(lambda q, k, v: jnp.sum(m.attend(q, k, v, mask=PAD) * dy),
                           argnums=(0, 1, 2)))(q, k, v)
    want = jax.jit(jax.grad(lambda q, k, v: jnp.sum(ref(q, k, v) * dy), argnums=(0, 1, 2)))(q, k, v)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
        assert np.any(np.asarray(g) != 0)


def _bipft_w(w):
    return np.abs(w).mean() * np.sign(w - w.mean())


@pytest.mark.parametrize("estimators", [True, False])
def test_bipft_attention_with_residual_estimators(estimators):
    m = BiPFTAttention(H, D, F, estimators=estimators, rngs=nnx.Rngs(4))
    (wq, bq), (wk, bk), (wv, bv), (wo, bo) = (_kb(m.query), _kb(m.key), _kb(m.value), _kb(m.out))
    got = _run(m, X, PAD)
    x = X.astype(np.float64)
    xb = 2 * np.abs(x).mean() * np.sign(x)  # first-call alpha = 2·mean|x|, shift 0
    q, k, v = (_heads(xb @ _bipft_w(w) + b) for w, b in ((wq, bq), (wk, bk), (wv, bv)))
    alphas = {n: 2 * np.abs(t).mean() for n, t in (("q", q), ("k", k), ("v", v))}
    qb, kb, vb = (alphas[n] * np.sign(t) for n, t in (("q", q), ("k", k), ("v", v)))
    s = qb @ kb.transpose(0, 1, 3, 2)
    if estimators:
        e = {n: x @ np.asarray(getattr(m, f"{n}_kernel")[...]) + float(
            getattr(m, f"{n}_bias")[...]) for n in ("q_p", "k_p", "q_m", "k_m", "v_p")}
        outer = lambda a, b: a[:, :, None] * b[:, None, :]  # noqa: E731
        s = s + ((outer(e["q_m"], e["k_p"]) + outer(e["q_p"], e["k_m"]))
                 + outer(e["q_p"], e["k_p"]))[:, None]
    p = _softmax(s / np.sqrt(DH) + np.where(PAD, 0, -10000))
    aa = 4 * np.abs(p).mean()
    np.testing.assert_allclose(m.attn_alpha[...], aa, rtol=1e-5)
    np.testing.assert_allclose(m.q_alpha[...], alphas["q"], rtol=1e-5)
    a = aa * np.clip(np.round(p / aa), 0, 1)
    ctx = a @ vb
    if estimators:
        ctx = ctx + a @ e["v_p"][:, None, :, None]
    c = _merge(ctx)
    want = (2 * np.abs(c).mean() * np.sign(c)) @ _bipft_w(wo) + bo
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    g = nnx.jit(nnx.grad(lambda m: jnp.sum(m(jnp.asarray(X), mask=PAD) ** 2)))(m)
    assert np.isfinite(g.attn_alpha[...]) and np.isfinite(g.q_alpha[...])
    if estimators:
        assert np.any(np.asarray(g.q_p_kernel[...]) != 0)


def _statsq(w, bits, axis):
    s = 2 * np.abs(w).mean(axis, keepdims=True)
    c = np.clip(w / s, -1, np.float32(1 - 1e-6))
    n = 2.0 ** (bits - 1)
    return s * (np.round(c * n - 0.5) + 0.5) / n


def test_ofq_query_key_reparameterization():
    m = QKReparamAttention(H, F, bits=2, input_quantizer=None, t_quantizer=None,
                           v_quantizer=None, attn_quantizer=None, out_input_quantizer=None,
                           rngs=nnx.Rngs(5))
    wq, wk = _kb(m.query)[0], _kb(m.key)[0]
    (wv, bv), (wo, bo) = _kb(m.value), _kb(m.out)
    wqk = np.einsum("chd,ehd->hce", wq.reshape(F, H, DH), wk.reshape(F, H, DH))
    wqk_q = _statsq(wqk, 2, 2)
    np.testing.assert_allclose(m.qk_weight(), wqk_q, rtol=1e-5, atol=1e-6)
    x = X[..., :F].astype(np.float64)
    logits = np.einsum("bnc,hce,bme->bhnm", x, wqk_q, x) / np.sqrt(DH)
    p = _softmax(np.where(PAD, logits, -np.inf))
    v = _heads(x @ _statsq(wv, 2, 0) + bv)
    want = _merge(p @ v) @ _statsq(wo, 2, 0) + bo
    np.testing.assert_allclose(_run(m, X[..., :F], PAD), want, rtol=1e-4, atol=1e-4)
    # Unquantized W_qk gives exactly the ordinary q·k logits of the same kernels.
    ref = np.einsum("bhnd,bhmd->bhnm", _heads(x @ wq), _heads(x @ wk))
    np.testing.assert_allclose(np.einsum("bnc,hce,bme->bhnm", x, wqk, x), ref, rtol=1e-9)


def test_ofq_default_lsq_quantizers_learn_under_jit():
    m = QKReparamAttention(H, F, rngs=nnx.Rngs(6))
    y = _run(m, X[..., :F], None)
    assert y.shape == (B, N, F) and np.all(np.isfinite(y))
    for q in (m.x_quant, m.t_quant, m.v_quant, m.attn_quant):
        assert isinstance(q.step, nnx.Param)
    assert isinstance(m.out.input_step, nnx.Param)
    g = nnx.jit(nnx.grad(lambda m: jnp.sum(m(jnp.asarray(X[..., :F])) ** 2)))(m)
    assert np.any(np.asarray(g.query.kernel[...]) != 0)
    assert np.all(np.isfinite(g.t_quant.step[...])) and np.any(g.t_quant.step[...] != 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_heads must divide"):
        MultiHeadAttention(4, D, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="bool_rule"):
        BiAttention(H, D, F, bool_rule="torch", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="ratio"):
        SABAttention(H, D, F, ratio=0.0, rngs=nnx.Rngs(0))

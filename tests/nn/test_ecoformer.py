"""EcoFormer attention against NumPy re-statements of the reference (ziplab/EcoFormer,
pvt/performer.py and pvt/hashing/ksh.py), written here independently of the code under test."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax.nn.ecoformer import EcoFormerAttention, refresh, refresh_hook
from bnn_jax.quant.ecoformer import hash_attention, ksh_fit, similarity_targets

B, N, D, H = 2, 10, 7, 2
RNG = np.random.default_rng(3)


def _np_normalize(a):
    return a / np.sqrt((a ** 2).sum(-1, keepdims=True))


def _np_features(x, anchors):
    """exp(-||x - a||² / 2σ), σ = mean over tokens and anchors per (example, head)."""
    d = ((x[:, :, :, None, :] - anchors[None, :, None, :, :]) ** 2).sum(-1)
    return np.exp(-d / (2 * d.mean(axis=(2, 3), keepdims=True)))


def _np_linear_attention_bias(h, v):
    """linear_attention_bias of performer.py, transcribed step by step."""
    n, c = h.shape[2], h.shape[3] + 1
    k_cumsum = h.sum(2)
    d_inv = 1.0 / (np.einsum("bhnd,bhd->bhn", h, k_cumsum) + n * c)
    context = np.einsum("bhnd,bhne->bhde", h, v)
    out = np.einsum("bhde,bhnd->bhne", context, h) + v * c
    return out * d_inv[..., None]


def _np_attention(p, x, state, at=None):
    """The reference forward in float64; with ``at`` = (y0, mask0) the sign is replaced by its
    straight-through linearization ``sign(y0) + 1[|y0| < 1]·(y - y0)`` (same value at the point,
    and its exact gradient is the clipped STE's)."""
    anchors, mvec, proj = state
    qk = _np_normalize((x @ p["wq"] + p["bq"]).reshape(B, N, H, -1).transpose(0, 2, 1, 3))
    v = (x @ p["wv"] + p["bv"]).reshape(B, N, H, -1).transpose(0, 2, 1, 3)
    phi = _np_features(qk, anchors) - mvec[None, :, None, :]
    y = np.einsum("bhnm,hkm->bhnk", phi, proj)
    if at is None:
        h = np.where(y >= 0, 1.0, -1.0)
    else:
        y0, mask0 = at
        h = np.where(y0 >= 0, 1.0, -1.0) + mask0 * (y - y0)
    ctx = _np_linear_attention_bias(h, v).transpose(0, 2, 1, 3).reshape(B, N, -1)
    return ctx @ p["wo"] + p["bo"], y


def _params(m):
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    return dict(wq=f64(m.query.kernel[...]), bq=f64(m.query.bias[...]),
                wv=f64(m.value.kernel[...]), bv=f64(m.value.bias[...]),
                wo=f64(m.out.kernel[...]), bo=f64(m.out.bias[...]))


def _fitted_layer():
    m = EcoFormerAttention(H, D + 1, rngs=nnx.Rngs(1), num_bits=6, num_anchors=5, topk=3)
    d = m.head_dim
    m.anchors[...] = jnp.asarray(_np_normalize(RNG.standard_normal((H, 5, d))), jnp.float32)
    m.mvec[...] = jnp.asarray(RNG.uniform(0.2, 0.6, (H, 5)), jnp.float32)
    m.proj[...] = jnp.asarray(RNG.standard_normal((H, 6, 5)) * 3, jnp.float32)
    return m


X = RNG.standard_normal((B, N, D + 1)).astype(np.float32)


def _state(m):
    return tuple(np.asarray(v[...], np.float64) for v in (m.anchors, m.mvec, m.proj))


def test_forward_and_backward_match_the_reference():
    m = _fitted_layer()
    p, x, state = _params(m), X.astype(np.float64), _state(m)
    want, y0 = _np_attention(p, x, state)
    assert np.abs(y0).min() > 1e-4  # no code decided by rounding
    at = (y0, (np.abs(y0) < 1).astype(np.float64))
    assert 0.1 < at[1].mean() < 0.9  # both sides of the STE's clip are exercised
    w = RNG.standard_normal((B, N, D + 1))

    def weighted(m):
        out = m(jnp.asarray(X))
        return jnp.sum(out * jnp.asarray(w, jnp.float32)), out

    (_, got), grads = nnx.jit(nnx.value_and_grad(weighted, has_aux=True))(m)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5)

    def loss(q):
        return float((_np_attention(q, x, state, at)[0] * w).sum())

    for name, layer, attr in (("wq", "query", "kernel"), ("bq", "query", "bias"),
                              ("wv", "value", "kernel")):
        grad = np.asarray(getattr(getattr(grads, layer), attr)[...], np.float64)
        fd = np.zeros_like(p[name])
        for idx in np.ndindex(p[name].shape):
            hi, lo = {**p, name: p[name].copy()}, {**p, name: p[name].copy()}
            hi[name][idx] += 1e-6
            lo[name][idx] -= 1e-6
            fd[idx] = (loss(hi) - loss(lo)) / 2e-6
        assert np.abs(fd).max() > 1e-3, name
        np.testing.assert_allclose(grad, fd, rtol=1e-3, atol=2e-4 * np.abs(fd).max(),
                                   err_msg=name)
    # The hash functions take no gradient: they are not parameters.
    assert set(nnx.to_pure_dict(grads)) == {"query", "value", "out"}


@pytest.mark.parametrize("bias_form", ["code", "kernel"])
def test_linear_form_equals_quadratic_form(bias_form):
    h = np.where(RNG.standard_normal((B, H, N, 8)) >= 0, 1.0, -1.0)
    v = RNG.standard_normal((B, H, N, 5))
    sim = np.einsum("bhik,bhjk->bhij", h, h)
    c = 8 + 1
    if bias_form == "code":
        num = np.einsum("bhij,bhje->bhie", sim, v) + c * v
        den = sim.sum(-1) + N * c
    else:
        assert (sim + c).min() > 0  # the shifted kernel is positive
        num = np.einsum("bhij,bhje->bhie", sim + c, v)
        den = (sim + c).sum(-1)
    got = hash_attention(jnp.asarray(h, jnp.float32), jnp.asarray(v, jnp.float32),
                         bias_form=bias_form)
    np.testing.assert_allclose(np.asarray(got), num / den[..., None], rtol=1e-5, atol=1e-6)
    # The code form is the reference's function.
    if bias_form == "code":
        np.testing.assert_allclose(np.asarray(got), _np_linear_attention_bias(h, v),
                                   rtol=1e-5, atol=1e-6)


def test_similarity_targets():
    x = _np_normalize(RNG.standard_normal((B, H, N, 4)))
    s = np.asarray(similarity_targets(jnp.asarray(x, jnp.float32), 3))
    sim = np.einsum("bhnd,bhmd->bhnm", x, x)
    order = np.argsort(sim, axis=-1)
    want = np.zeros_like(sim)
    np.put_along_axis(want, order[..., -3:], 1.0, axis=-1)
    np.put_along_axis(want, order[..., :3], -1.0, axis=-1)
    np.testing.assert_array_equal(s, want)


def _np_ksh(x, anchors, s, a_init, lr, momentum, iterations):
    """train_hashing_weight_woeig of ksh.py with the SGD-Nesterov gradient written by hand."""
    bsz, heads, n, _ = x.shape
    nbits = a_init.shape[1]
    k = _np_features(x, anchors)
    mvec = k.mean(2).mean(0)
    k = k - mvec[None, :, None, :]
    r = s * nbits
    proj, decisions = a_init.copy(), []

    def loss(y, r):
        return np.mean(-np.einsum("bhn,bhnl,bhl->bh", y, r, y) / (n * nbits))

    for bit in range(nbits):
        a0 = proj[:, bit, :].copy()
        a, buf = a0.copy(), np.zeros_like(a0)
        for it in range(iterations):
            z = np.einsum("bhnm,hm->bhn", k, a)
            y = 2 / (1 + np.exp(-z)) - 1
            dy = -np.einsum("bhnl,bhl->bhn", r + r.transpose(0, 1, 3, 2), y) / (n * nbits)
            dz = dy * (1 - y ** 2) / 2 / (bsz * heads)
            g = np.einsum("bhn,bhnm->hm", dz, k)
            buf = g if it == 0 else momentum * buf + g
            a = a - lr * (g + momentum * buf)
        y_old = np.where(np.einsum("bhnm,hm->bhn", k, a0) > 0, 1.0, -1.0)
        y_new = np.where(np.einsum("bhnm,hm->bhn", k, a) > 0, 1.0, -1.0)
        better = loss(y_new, r) < loss(y_old, r)
        decisions.append(better)
        proj[:, bit, :] = a if better else a0
        y = y_new if better else y_old
        r = r - y[..., :, None] * y[..., None, :]
    return proj, mvec, decisions


def test_ksh_solve_matches_reference():
    x = _np_normalize(RNG.standard_normal((2, 2, 12, 4)))
    anchors = x[0][:, [1, 4, 6, 9, 11]]
    s = np.asarray(similarity_targets(jnp.asarray(x, jnp.float32), 3), np.float64)
    a_init = RNG.standard_normal((2, 5, 5))
    decisions = []
    for lr in (0.5, -0.5):  # descent keeps most new rows; ascent must keep the old ones
        want, want_m, dec = _np_ksh(x, anchors, s, a_init, lr, 0.9, 15)
        got, got_m, finite = ksh_fit(*(jnp.asarray(a, jnp.float32) for a in (x, anchors, s,
                                                                               a_init)),
                                     learning_rate=lr, momentum=0.9, iterations=15)
        assert bool(finite)
        np.testing.assert_allclose(np.asarray(got_m), want_m, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
        decisions += dec
    assert True in decisions and False in decisions


def test_fit_takes_anchors_from_the_first_example_and_refresh_leaves_params():
    m = EcoFormerAttention(H, D + 1, rngs=nnx.Rngs(2), num_bits=4, num_anchors=6, topk=2,
                           ksh_iterations=5, ksh_learning_rate=0.05)
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(m, nnx.Param)))
    proj0 = np.asarray(m.proj[...])
    refresh_hook(m, {"image": X}, 7, seed=1)
    assert int(m.refreshes[...]) == 1 and m.pending_fit is None
    w = np.asarray(m.query.kernel[...]), np.asarray(m.query.bias[...])
    qk = _np_normalize((X @ w[0] + w[1]).reshape(B, N, H, -1).transpose(0, 2, 1, 3))
    anchors = np.asarray(m.anchors[...])
    for head in range(H):
        rows = [int(np.argmin(((qk[0, head] - a) ** 2).sum(-1))) for a in anchors[head]]
        np.testing.assert_allclose(qk[0, head, rows], anchors[head], atol=1e-6)
        assert len(set(rows)) == 6
    want_m = _np_features(qk, anchors).mean(2).mean(0)
    np.testing.assert_allclose(np.asarray(m.mvec[...]), want_m, rtol=1e-5)
    assert not np.array_equal(np.asarray(m.proj[...]), proj0)
    after = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(m, nnx.Param)))
    jax.tree.map(np.testing.assert_array_equal, params, after)
    # Another step draws other anchors; the same seed and step the same ones.
    refresh(m, jnp.asarray(X), seed=1, step=8)
    other = np.asarray(m.anchors[...])
    assert not np.array_equal(other, anchors)
    refresh(m, jnp.asarray(X), seed=1, step=7)
    np.testing.assert_array_equal(np.asarray(m.anchors[...]), anchors)
    assert int(m.refreshes[...]) == 3


def test_bad_inputs_are_refused():
    m = EcoFormerAttention(H, D + 1, rngs=nnx.Rngs(0), num_anchors=25)
    with pytest.raises(ValueError, match="num_anchors=25"):
        refresh(m, jnp.asarray(X))
    assert m.pending_fit is None
    with pytest.raises(ValueError, match="no mask"):
        m(jnp.asarray(X), mask=jnp.ones((B, 1, 1, N), bool))
    with pytest.raises(ValueError, match="self-attention"):
        m(jnp.asarray(X), jnp.asarray(X[:, :3]))
    with pytest.raises(ValueError, match="num_bits"):
        EcoFormerAttention(H, D + 1, rngs=nnx.Rngs(0), num_bits=0)
    with pytest.raises(ValueError, match="bias_form"):
        EcoFormerAttention(H, D + 1, rngs=nnx.Rngs(0), bias_form="paper")
    with pytest.raises(ValueError, match="no EcoFormerAttention"):
        refresh(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), jnp.ones((1, 2)))
    with pytest.raises(ValueError, match="input_key"):
        refresh_hook(m, {"input_ids": X}, 0)
    assert not hasattr(m, "key")

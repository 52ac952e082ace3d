"""BinaryDM Learnable Multi-basis Binarizer and progressive schedule against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnn_jax.quant as q

RNG = np.random.default_rng(4)
f32 = np.float32


def np_lmb2(w, s1, s2, g, axes):
    """Forward and hand-derived VJP of σ₁·S(W) + σ₂·S(W − σ₁·S(W)), S' = 1[|·| <= 1]."""
    S, h = np.sign, lambda x: (np.abs(x) <= 1).astype(f32)
    r = w - s1 * S(w)
    y = s1 * S(w) + s2 * S(r)
    dw = g * (s1 * h(w) + s2 * h(r) * (1 - s1 * h(w)))
    ds1 = np.sum(g * (S(w) - s2 * h(r) * S(w)), axis=axes, keepdims=True)
    ds2 = np.sum(g * S(r), axis=axes, keepdims=True)
    return y, dw, ds1, ds2


def kernel_with_edges(shape):
    w = (RNG.normal(size=shape) * 0.8).astype(f32)
    flat = w.reshape(-1)
    flat[:5] = [1.0, -1.0, 0.0, np.nextafter(f32(1), f32(2)), -1.5]
    return w


@pytest.mark.parametrize("shape,axes", [((6, 4), (0,)), ((3, 3, 2, 5), (0, 1, 2))])
def test_lmb_order2_forward_gradients_and_init(shape, axes):
    w = kernel_with_edges(shape)
    quant = q.get("binarydm_lmb")
    init = quant.init(jnp.asarray(w))
    s1 = np.mean(np.abs(w), axis=axes, keepdims=True)
    s2 = np.mean(np.abs(w - s1 * np.sign(w)), axis=axes, keepdims=True)
    np.testing.assert_allclose(init["sigma1"], s1, rtol=1e-6)
    np.testing.assert_allclose(init["sigma2"], s2, rtol=1e-6)
    # Perturb the sigmas so the test does not depend on the init values.
    s1 = (s1 * (1 + 0.3 * RNG.random(s1.shape))).astype(f32)
    s2 = (s2 * (1 + 0.3 * RNG.random(s2.shape))).astype(f32)
    g = RNG.normal(size=shape).astype(f32)
    y, vjp = jax.vjp(lambda w, a, b: quant(w, sigma1=a, sigma2=b), *map(jnp.asarray, (w, s1, s2)))
    dw, ds1, ds2 = vjp(jnp.asarray(g))
    ey, edw, eds1, eds2 = np_lmb2(w, s1, s2, g, axes)
    np.testing.assert_allclose(y, ey, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, edw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds1, eds1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds2, eds2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dynamic", [True, False])
def test_lmb_order1(dynamic):
    w = kernel_with_edges((5, 3))
    sigma = (RNG.random((1, 3)) + 0.5).astype(f32)
    g = RNG.normal(size=w.shape).astype(f32)
    quant = q.get("binarydm_lmb1", dynamic_scale=dynamic)
    y, vjp = jax.vjp(lambda w, s: quant(w, sigma1=s), jnp.asarray(w), jnp.asarray(sigma))
    dw, ds = vjp(jnp.asarray(g))
    scale = np.abs(w).mean(axis=0, keepdims=True) if dynamic else sigma
    np.testing.assert_allclose(y, scale * np.sign(w), rtol=1e-6)
    np.testing.assert_allclose(dw, g * scale * (np.abs(w) <= 1), rtol=1e-6)
    expected_ds = 0 * sigma if dynamic else np.sum(g * np.sign(w), axis=0, keepdims=True)
    np.testing.assert_allclose(ds, expected_ds, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(quant.init(jnp.asarray(w))["sigma1"],
                               np.abs(w).mean(axis=0, keepdims=True), rtol=1e-6)


class RefOrder1Linear:
    """ours_util.py ``BNNLinear`` with ``order=1`` (lines 190-226), weight ``[out, in]``.

    The first forward copies ``mean|W|`` per output row into ``scaling_first_order`` and sets
    ``init_scale``; later forwards use the stored (trained) value. Backward of
    ``BinaryQuantize(W)·σ``: dW = g·σ·1[|W| <= 1], dσ = Σ_in g·sign(W).
    """

    def __init__(self):
        self.init_scale = False
        self.sigma = None

    def forward_backward(self, w, g):
        if not self.init_scale:
            self.sigma = np.abs(w).mean(axis=1, keepdims=True)
        self.init_scale = True  # line 224: set on the order-1 path
        y = np.sign(w) * self.sigma
        dw = g * self.sigma * (np.abs(w) <= 1)
        dsigma = np.sum(g * np.sign(w), axis=1, keepdims=True)
        return y, dw, dsigma


def test_lmb_order1_default_learns_sigma_like_the_reference():
    """Three SGD steps on W and σ_I: the default keeps the learned σ_I, as ours_util.py."""
    ref = RefOrder1Linear()
    kernel = (RNG.normal(size=(6, 4)) * 0.5).astype(np.float64)  # Flax [in, out]
    quant = q.get("binarydm_lmb1")
    sigma = quant.init(jnp.asarray(kernel, f32))["sigma1"]
    w_ref, lr = kernel.T.copy(), 0.3
    for _ in range(3):
        g = RNG.normal(size=kernel.shape)
        y, pull = jax.vjp(lambda w, s: quant(w, sigma1=s), jnp.asarray(kernel, f32), sigma)
        dw, ds = pull(jnp.asarray(g, f32))
        ey, edw, eds = ref.forward_backward(w_ref, g.T)
        np.testing.assert_allclose(y, ey.T, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dw, edw.T, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ds, eds.T, rtol=1e-5, atol=1e-5)
        kernel, sigma = kernel - lr * np.asarray(dw, np.float64), sigma - lr * ds
        w_ref, ref.sigma = w_ref - lr * edw, ref.sigma - lr * eds
    # σ_I moved away from mean|W| (a recomputed scale would equal it).
    assert np.max(np.abs(ref.sigma - np.abs(w_ref).mean(axis=1, keepdims=True))) > 1e-2


def test_lmb_order2_beats_order1_reconstruction():
    w = RNG.normal(size=(64, 8)).astype(f32)
    init = q.get("binarydm_lmb").init(jnp.asarray(w))
    e2 = np.linalg.norm(np.asarray(q.binarydm_lmb(jnp.asarray(w), **init)) - w)
    e1 = np.linalg.norm(np.asarray(q.binarydm_lmb1(jnp.asarray(w), sigma1=init["sigma1"])) - w)
    assert e2 < 0.7 * e1


@pytest.mark.parametrize("step,binary,act", [
    (0, [0, 0, 0, 0, 1], 0), (1, [0, 0, 0, 1, 1], 0), (4, [1, 1, 1, 1, 1], 0),
    (5, [1, 1, 1, 1, 1], 1), (1000, [1, 1, 1, 1, 1], 1)])
def test_progressive_schedule_reference(step, binary, act):
    b, a, two = jax.jit(q.progressive_binarization)(jnp.asarray(step))
    np.testing.assert_array_equal(b, np.array(binary, bool))
    assert bool(a) == bool(act)
    assert bool(two)


def test_progressive_schedule_keeps_the_second_basis():
    # ddpm_ours.py never switches order-2 layers to one basis; single_basis_step opts in.
    assert bool(q.progressive_binarization(10**7)[2])
    assert not bool(q.progressive_binarization(100_000, single_basis_step=100_000)[2])
    assert bool(q.progressive_binarization(99_999, single_basis_step=100_000)[2])


def test_progressive_schedule_stretched():
    b, a, _ = q.progressive_binarization(3, num_groups=3, steps_per_group=2)
    np.testing.assert_array_equal(b, [False, True, True])
    assert not bool(a)
    assert bool(q.progressive_binarization(6, num_groups=3, steps_per_group=2)[1])
    with pytest.raises(ValueError, match="steps_per_group"):
        q.progressive_binarization(0, steps_per_group=0)


def np_actq(x, alpha, bits, g):
    """BinaryDM ``_ActQ`` (methods.md §9): signed LSQ without a floor; forward, dx, dalpha."""
    qn, qp = 2 ** (bits - 1), 2 ** (bits - 1) - 1
    v = x / alpha
    inside = ((v >= -qn) & (v <= qp)).astype(np.float64)
    c = np.clip(v, -qn, qp)
    y = np.round(c) * alpha
    ds = np.where(v < -qn, -qn, np.where(v > qp, qp, np.round(v) - v))
    return y, g * inside, np.sum(g * ds) / np.sqrt(x.size * qp)


@pytest.mark.parametrize("bits,shape", [(4, (5, 6)), (8, (2, 3, 4)), (2, (9,))])
def test_binarydm_act_dynamic_scale(bits, shape):
    x = (RNG.normal(size=shape) * 3).astype(f32)
    quant = q.get("binarydm_act", bits=bits)
    alpha0 = 2 * np.mean(np.abs(x.astype(np.float64))) / np.sqrt(2 ** (bits - 1) - 1)
    np.testing.assert_allclose(quant.init(jnp.asarray(x))["alpha"], alpha0, rtol=1e-6)
    g = RNG.normal(size=shape).astype(f32)
    # The stored alpha is ignored: the reference re-initializes it on every forward.
    y, pull = jax.vjp(lambda a, s: quant(a, alpha=s), jnp.asarray(x), jnp.float32(123.0))
    dx, dalpha = pull(jnp.asarray(g))
    ey, edx, _ = np_actq(x.astype(np.float64), alpha0, bits, g)
    np.testing.assert_allclose(y, ey, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, edx, rtol=1e-6)  # (g·α)/α rounds in float32
    assert float(dalpha) == 0.0


@pytest.mark.parametrize("bits", [3, 4])
def test_binarydm_act_learned_scale_and_boundaries(bits):
    qn, qp = 2 ** (bits - 1), 2 ** (bits - 1) - 1
    alpha = f32(0.5)
    edge_pts = []
    for p in (qp * 0.5, -qn * 0.5, 0.25, 0.0):
        p = f32(p)
        edge_pts += [p, np.nextafter(p, f32(9)), np.nextafter(p, f32(-9))]
    x = np.concatenate([RNG.normal(size=20).astype(f32) * 3, np.array(edge_pts, f32)])
    g = RNG.normal(size=x.shape).astype(f32)
    quant = q.get("binarydm_act", bits=bits, dynamic_scale=False)
    y, pull = jax.vjp(lambda a, s: quant(a, alpha=s), jnp.asarray(x), jnp.asarray(alpha))
    dx, dalpha = pull(jnp.asarray(g))
    ey, edx, eda = np_actq(x.astype(np.float64), 0.5, bits, g.astype(np.float64))
    np.testing.assert_allclose(y, ey, rtol=1e-6)
    np.testing.assert_array_equal(dx, edx)  # the range edges x/alpha = -Q_N, Q_P pass
    np.testing.assert_allclose(dalpha, eda, rtol=1e-5)


def test_binarydm_act_rejects_bad_parameters():
    with pytest.raises(ValueError, match="bits"):
        q.get("binarydm_act", bits=1)
    with pytest.raises(ValueError, match=r"\[True, False\]"):
        q.get("binarydm_act", dynamic_scale="yes")

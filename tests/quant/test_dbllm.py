"""DB-LLM Flexible Dual Binarization against numpy (2-bit init, nearest-level planes, STE)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnn_jax.quant as q

RNG = np.random.default_rng(5)
f32 = np.float32


def np_two_bit(w):
    lo, hi = w.min(axis=0, keepdims=True), w.max(axis=0, keepdims=True)
    s = (hi - lo) / f32(3)
    z = np.round(-lo / s)
    return s, z, s * (np.clip(np.round(w / s) + z, 0, 3) - z)


def np_planes(w, a1, a2, c):
    best = np.full(w.shape, np.inf)
    b1 = np.zeros_like(w)
    b2 = np.zeros_like(w)
    for p1, p2 in itertools.product((0, 1), (0, 1)):
        d = np.abs(w - (c + a1 * p1 + a2 * p2))
        better = d < best
        best = np.where(better, d, best)
        b1, b2 = np.where(better, p1, b1), np.where(better, p2, b2)
    return b1, b2


@pytest.mark.parametrize("shape", [(16, 3), (9, 5)])
def test_fdb_init_is_the_two_bit_quantizer(shape):
    w = RNG.normal(size=shape).astype(f32)
    quant = q.get("dbllm_fdb")
    init = quant.init(jnp.asarray(w))
    s, z, expected = np_two_bit(w)
    np.testing.assert_allclose(init["alpha1"], 2 * s, rtol=1e-6)
    np.testing.assert_allclose(init["alpha2"], s, rtol=1e-6)
    np.testing.assert_allclose(init["offset"], -s * z, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(quant(jnp.asarray(w), **init), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ste", ["clipped", "identity"])
def test_fdb_decoupled_scales_forward_and_gradients(ste):
    w = RNG.normal(size=(12, 4)).astype(f32)
    init = {k: np.asarray(v) for k, v in q.fdb_init(jnp.asarray(w)).items()}
    a1 = (init["alpha1"] * (1 + 0.4 * RNG.random((1, 4)))).astype(f32)  # no longer 2·α₂
    a2 = (init["alpha2"] * (1 - 0.4 * RNG.random((1, 4)))).astype(f32)
    c = init["offset"]
    w[0] = (c + a1 + a2)[0]  # the top level itself: inside the STE range
    w[1] = np.nextafter((c + a1 + a2)[0], f32(np.inf))  # just above: outside
    w[2] = np.nextafter(c[0], f32(-np.inf))
    g = RNG.normal(size=w.shape).astype(f32)
    quant = q.get("dbllm_fdb", ste=ste)
    y, vjp = jax.vjp(lambda w, a, b, o: quant(w, alpha1=a, alpha2=b, offset=o),
                     *map(jnp.asarray, (w, a1, a2, c)))
    dw, da1, da2, dc = vjp(jnp.asarray(g))
    b1, b2 = np_planes(w, a1, a2, c)
    np.testing.assert_allclose(y, c + a1 * b1 + a2 * b2, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(da1, np.sum(g * b1, axis=0, keepdims=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(da2, np.sum(g * b2, axis=0, keepdims=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dc, np.sum(g, axis=0, keepdims=True), rtol=1e-5, atol=1e-6)
    lo = np.minimum(c, c + a1 + a2)
    hi = c + a1 + a2
    inside = (w >= lo) & (w <= hi) if ste == "clipped" else np.ones_like(w, bool)
    np.testing.assert_array_equal(dw, g * inside)
    if ste == "clipped":
        assert inside[0].all() and not inside[1].any() and not inside[2].any()


def test_fdb_planes_are_binary_and_independent():
    w = RNG.normal(size=(40, 2)).astype(f32)
    init = q.fdb_init(jnp.asarray(w))
    b1, b2 = q.dbllm.dual_planes(jnp.asarray(w), init["alpha1"], init["alpha2"], init["offset"])
    assert set(np.unique(b1)) <= {0, 1} and set(np.unique(b2)) <= {0, 1}
    codes = 2 * np.asarray(b1) + np.asarray(b2)
    assert len(np.unique(codes)) == 4  # all four 2-bit codes occur

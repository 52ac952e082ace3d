"""OFQ (StatsQ, CGA, QK reparameterization) against numpy ports of nbasyl/OFQ (methods.md §12)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnn_jax.quant as q
from binarizer_oracles import rand, vjp

UPPER = np.float32(np.float32(1.0) - np.float32(1e-6))


def np_statsq(w, bits, axes):
    s = (2 * np.abs(w.astype(np.float64)).mean(axes, keepdims=True)).astype(np.float32)
    c = np.clip(w / s, np.float32(-1), UPPER)
    n = np.float32(2 ** (bits - 1))
    return s * ((np.round(c * n - np.float32(0.5)) + np.float32(0.5)) / n)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_statsq_levels_and_identity_ste(bits):
    for w in [rand((6, 4), bits), rand((3, 3, 2, 5), bits + 10)]:
        axes = tuple(range(w.ndim - 1))
        y, (dw,), g = vjp(q.get("statsq", bits=bits), w)
        np.testing.assert_allclose(y, np_statsq(w, bits, axes), rtol=1e-6)
        np.testing.assert_array_equal(dw, g)  # no clipping mask
        s = 2 * np.abs(w).mean(axes, keepdims=True)
        levels = np.unique(np.round(y / s * 2 ** bits, 3))
        assert len(levels) <= 2**bits + (bits == 1)  # mid-rise levels (k + 1/2)·s/n


def test_statsq_two_bit_levels():
    w = np.array([[2.0], [-2.0], [0.0], [0.0]], np.float32)  # s = 2·mean|W| = 2
    y = np.asarray(q.get("statsq", bits=2)(jnp.asarray(w)))
    # levels {±0.25, ±0.75}·s. W/s = 1 clips to 1 - 1e-6 (top level); W/s = -1 gives the tie
    # b = -2.5, rounded half-to-even to -2 (bottom level); W = 0 gives b = -0.5 -> 0 (+0.25·s).
    np.testing.assert_allclose(y[:, 0], [1.5, -1.5, 0.5, 0.5])


def np_cga_freeze(w_torch, bits, br):
    """nbasyl/OFQ cga.py ``freeze_outside_boundary_weight_idx``: 1 = frozen (rows on dim 1)."""
    s = 2 * np.abs(w_torch).mean(axis=1, keepdims=True).astype(np.float32)
    c = np.clip(w_torch / s, np.float32(-1), UPPER)
    b = c * np.float32(2 ** (bits - 1)) - np.float32(0.5)
    r = np.round(b)
    not_freeze = np.zeros_like(w_torch)
    for i in np.arange(start=r.min(), stop=r.max()):
        d = b - np.float32(i)
        not_freeze += ((d <= np.float32(0.5 + br)) & (d >= np.float32(0.5 - br))).astype(
            np.float32)
    return 1.0 - not_freeze


@pytest.mark.parametrize("bits,br", [(2, 0.005), (2, 0.1), (3, 0.05), (1, 0.2)])
def test_cga_mask_matches_reference(bits, br):
    w_torch = rand((5, 40), bits * 7)
    frozen = np_cga_freeze(w_torch, bits, br)
    mask = jax.jit(q.cga_mask, static_argnames=("bits", "boundary_range", "layout"))
    got = np.asarray(mask(jnp.asarray(w_torch), bits=bits, boundary_range=br, layout="torch"))
    np.testing.assert_array_equal(got, 1.0 - frozen)
    flax = np.asarray(mask(jnp.asarray(w_torch.T), bits=bits, boundary_range=br))
    np.testing.assert_array_equal(flax, 1.0 - frozen.T)
    if br >= 0.05:
        assert 0 < got.sum() < got.size  # both kinds occur


def test_cga_mask_inactive_apply_and_restore():
    w = jnp.asarray(rand((8, 3), 2))
    np.testing.assert_array_equal(q.cga_mask(w, active=jnp.bool_(False)), 1.0)
    active = jax.jit(lambda w, step: q.cga_mask(
        w, boundary_range=0.1, active=q.schedules.cga_active(step, 330, cga_steps=30)))
    np.testing.assert_array_equal(active(w, 299), 1.0)
    m = np.asarray(active(w, 300))
    np.testing.assert_array_equal(m, q.cga_mask(w, boundary_range=0.1))
    g, new = rand((8, 3), 3), rand((8, 3), 4)
    np.testing.assert_array_equal(q.cga_apply(g, m), g * m)
    np.testing.assert_array_equal(q.cga_restore(new, w, m), np.where(m == 1, new, w))


def test_qk_reparam_logits_equal_attention_logits():
    b, n, c, h = 2, 5, 8, 2
    x, wq, wk = rand((b, n, c), 1), rand((c, c), 2), rand((c, c), 3)
    w_qk = q.qk_reparam_weight(wq, wk, num_heads=h)
    assert w_qk.shape == (h, c, c)
    got = np.asarray(q.qk_reparam_logits(jnp.asarray(x), w_qk))
    qh = (x.astype(np.float64) @ wq).reshape(b, n, h, c // h)
    kh = (x.astype(np.float64) @ wk).reshape(b, n, h, c // h)
    np.testing.assert_allclose(got, np.einsum("bnhd,bmhd->bhnm", qh, kh), rtol=1e-4, atol=1e-4)
    # a quantizer on T = W_qk x^T is applied where OFQ applies its LSQ
    doubled = q.qk_reparam_logits(jnp.asarray(x), w_qk, t_quant=lambda t: 2 * t)
    np.testing.assert_allclose(doubled, 2 * got, rtol=1e-6)


def test_qk_reparam_quantizes_rows_with_statsq():
    wq, wk = rand((8, 8), 5), rand((8, 8), 6)
    w_qk = np.asarray(q.qk_reparam_weight(wq, wk, num_heads=2))
    y, (dwq, dwk), g = vjp(lambda a, b: q.qk_reparam(a, b, num_heads=2, bits=2), wq, wk)
    np.testing.assert_allclose(y, np_statsq(w_qk, 2, (2,)), rtol=1e-6)
    # identity STE on W_qk, then the product rule back to W_q and W_k
    ew = np.asarray(jax.vjp(lambda a, b: q.qk_reparam_weight(a, b, num_heads=2), wq, wk)[1](
        jnp.asarray(g))[0])
    np.testing.assert_allclose(dwq, ew, rtol=1e-6)
    assert np.abs(dwk).sum() > 0

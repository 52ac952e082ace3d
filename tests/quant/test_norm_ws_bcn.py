"""Weight Standardization and Batch-Channel Normalization against numpy (methods.md §17)."""

import jax.numpy as jnp
import numpy as np
import pytest

import bnn_jax.quant as q
from binarizer_oracles import rand, vjp


def np_ws(w, variant, eps=1e-5):
    w = w.astype(np.float64)
    axes, n = tuple(range(w.ndim - 1)), np.prod(w.shape[:-1])
    c = w - w.mean(axes, keepdims=True)
    ss = (c**2).sum(axes, keepdims=True)
    if variant == "ws":
        sd = np.sqrt(ss / (n - 1))
        return c / (sd + eps), c, sd + eps, lambda: (n - 1) * sd  # dσ/dc_j = c_j / ((n-1) sd)
    m = n - 1 if variant == "bcn" else n
    sigma = np.sqrt(ss / m + eps)
    return c / sigma, c, sigma, lambda: m * sigma


@pytest.mark.parametrize("variant", ["ws", "bcn", "paper"])
def test_weight_standardization(variant):
    for w in [rand((3, 3, 2, 4), 1), rand((5, 3), 2, scale=0.1)]:
        y, (dw,), g = vjp(lambda v: q.weight_standardization(v, variant=variant), w)
        ey, c, sigma, dsig_den = np_ws(w, variant)
        np.testing.assert_allclose(y, ey, rtol=2e-5, atol=1e-6)
        axes = tuple(range(w.ndim - 1))
        # y = c / σ(c): J^T g = (g − mean g)/σ − c · Σ(g c) / (σ² · dσ_den)
        expect = ((g - g.mean(axes, keepdims=True)) / sigma
                  - c * (g * c).sum(axes, keepdims=True) / (sigma**2 * dsig_den()))
        np.testing.assert_allclose(dw, expect, rtol=1e-4, atol=1e-5)


def test_weight_standardization_rejects_bad_variant():
    with pytest.raises(ValueError, match="ws"):
        q.weight_standardization(jnp.ones((2, 2)), variant="gn")


def np_bcn(x, bs, bb, gs, gb, groups, eps=1e-5, stats=None):
    x = x.astype(np.float64)
    axes = tuple(range(x.ndim - 1))
    mu, var = (x.mean(axes), x.var(axes)) if stats is None else stats
    y = (x - mu) / np.sqrt(var + eps) * bs + bb
    n, c = x.shape[0], x.shape[-1]
    z = y.reshape(n, -1, groups, c // groups)
    z = (z - z.mean((1, 3), keepdims=True)) / np.sqrt(z.var((1, 3), keepdims=True) + eps)
    return (z * gs[:, None] + gb[:, None]).reshape(x.shape)


def test_batch_channel_norm_forward_and_gradient():
    x = rand((3, 2, 2, 8), 3, scale=2.0) + 1.0
    bs, bb, gs, gb = rand((8,), 4), rand((8,), 5), rand((4,), 6), rand((4,), 7)
    fn = lambda v: q.batch_channel_norm(v, bn_scale=bs, bn_bias=bb, group_scale=gs,
                                        group_bias=gb, num_groups=4)
    y, (dx,), g = vjp(fn, x)
    np.testing.assert_allclose(y, np_bcn(x, bs, bb, gs, gb, 4), rtol=1e-4, atol=1e-4)
    # gradient: central differences of the float64 numpy formula along random directions
    rng = np.random.default_rng(0)
    for _ in range(3):
        d = rng.standard_normal(x.shape)
        f = lambda v: np.sum(g * np_bcn(v, bs, bb, gs, gb, 4))
        numeric = (f(x + 1e-4 * d) - f(x - 1e-4 * d)) / 2e-4
        np.testing.assert_allclose(np.sum(dx * d), numeric, rtol=2e-3, atol=2e-3)


def test_batch_channel_norm_running_stats():
    x = rand((2, 3, 4), 8)
    stats = (rand((4,), 9) * 0.1, np.abs(rand((4,), 10)) + 0.5)
    ones, zeros = np.ones(4, np.float32), np.zeros(4, np.float32)
    got = q.batch_channel_norm(jnp.asarray(x), bn_scale=ones, bn_bias=zeros,
                               group_scale=np.ones(2, np.float32),
                               group_bias=np.zeros(2, np.float32), num_groups=2, stats=stats)
    np.testing.assert_allclose(got, np_bcn(x, ones, zeros, np.ones(2), np.zeros(2), 2,
                                           stats=stats), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="divisible"):
        q.batch_channel_norm(jnp.asarray(x), bn_scale=ones, bn_bias=zeros, group_scale=ones,
                             group_bias=zeros, num_groups=3)

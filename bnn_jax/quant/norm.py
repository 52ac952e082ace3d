"""Weight Standardization and Batch-Channel Normalization (Qiao et al., arXiv 1903.10520).

Pure functions on channels-last arrays. WS is a differentiated reparameterization of the
kernel (per output channel, the last axis); BCN is per-channel batch norm with affine, then a
group normalization without affine, then a *per-group* affine (joe-siyuan-qiao/
Batch-Channel-Normalization ``imagenet/models/layers.py``).
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from bnn_jax.quant.core import exact_div, mean
from bnn_jax.quant.registry import check, check_choice, check_positive


def weight_standardization(w, *, eps=1e-5, variant="ws"):
    """Standardize each output filter of a kernel ``(..., out)``.

    ``variant="ws"`` (default, the WeightStandardization repository):
    ``(W - mean) / (std + eps)`` with the unbiased std; ``"bcn"`` (the BCN repository's
    ``Conv2d``): ``(W - mean) / sqrt(var + eps)``, unbiased var; ``"paper"``:
    ``(W - mean) / sqrt(var + eps)`` with the biased var of the paper's formula.
    """
    check_choice("variant", variant, ("ws", "bcn", "paper"))
    check_positive("eps", eps)
    check(w.ndim >= 2, f"weight_standardization expects a kernel (..., in, out), got {w.shape}")
    axes = tuple(range(w.ndim - 1))
    n = math.prod(w.shape[:-1])
    centred = w - mean(w, axis=axes, keepdims=True)
    ss = jnp.sum(jnp.square(centred), axis=axes, keepdims=True)
    if variant == "ws":
        return centred / (jnp.sqrt(exact_div(ss, float(n - 1))) + eps)
    var = exact_div(ss, float(n - 1 if variant == "bcn" else n))
    return centred / jnp.sqrt(var + eps)


def bcn_batch_stats(x):
    """Per-channel batch mean and biased variance of ``x`` (N, ..., C) (BN's training stats)."""
    axes = tuple(range(x.ndim - 1))
    mu = mean(x, axis=axes)
    return mu, mean(jnp.square(x - mu), axis=axes)


def batch_channel_norm(x, *, bn_scale, bn_bias, group_scale, group_bias, num_groups=32,
                       eps=1e-5, stats=None):
    """Batch-Channel Normalization of ``x`` (N, ..., C).

    BN per channel (batch statistics, or ``stats = (mean, var)``: running estimates as in
    micro-batch ``EstBN`` and at eval) with affine ``bn_scale, bn_bias`` of shape (C,); then
    normalization of each sample's channel group (C/G contiguous channels, all positions,
    biased variance, no affine); then the per-group affine ``group_scale, group_bias`` (G,).
    """
    c = x.shape[-1]
    check(c % num_groups == 0, f"channels ({c}) must be divisible by num_groups ({num_groups})")
    mu, var = bcn_batch_stats(x) if stats is None else stats
    y = (x - mu) / jnp.sqrt(var + eps) * bn_scale + bn_bias
    n = x.shape[0]
    g = y.reshape(n, -1, num_groups, c // num_groups)
    axes = (1, 3)
    gm = mean(g, axis=axes, keepdims=True)
    gv = mean(jnp.square(g - gm), axis=axes, keepdims=True)
    g = (g - gm) / jnp.sqrt(gv + eps)
    g = g * group_scale[:, None] + group_bias[:, None]
    return g.reshape(x.shape)

"""DB-LLM (Chen, Lv, Ding, Qin et al., ACL Findings 2024): Flexible Dual Binarization (FDB).

No official code is public; this follows the paper's description. A 2-bit asymmetric uniform
quantizer ``w = s·(q − z)``, ``q ∈ {0..3}`` is rewritten with two {0, 1} planes,
``q = 2·b₁ + b₂``, so ``w = α₁·b₁ + α₂·b₂ + c`` with ``α₁ = 2s``, ``α₂ = s``, ``c = −s·z``
(:func:`fdb_init`). FDB then learns ``α₁`` and ``α₂`` independently (per output channel), and
the planes may flip independently.

Choices made here (the paper's exact rules are not public):

* ``b₁, b₂`` are the planes of the NEAREST of the four levels ``c + α₁b₁ + α₂b₂`` (ties go to
  the first in the order 00, 01, 10, 11). At initialization this is exactly the 2-bit
  round-to-nearest quantizer.
* The offset ``c`` is passed like the scales and gets the ordinary gradient ``Σ g``; freeze it
  in the optimizer to keep it at its initial value.
* Straight-through for W: identity inside the closed range of the levels, zero outside
  (``ste="clipped"``, the LSQ/clipped-STE rule), or identity everywhere (``ste="identity"``).
* Scale gradients: ``dα₁ = Σ g·b₁``, ``dα₂ = Σ g·b₂`` (the planes are constants).

The Deviation-Aware Distillation loss is ``bnn_jax.train.losses.dad_loss``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bnn_jax.quant.core import estimator, exact_div, per_channel_axes, straight_through
from bnn_jax.quant.registry import check, check_choice, register


def fdb_init(x, channel_axis: int = -1) -> dict:
    """α₁ = 2s, α₂ = s, offset = −s·z from a per-channel 2-bit asymmetric min-max quantizer."""
    axes = per_channel_axes(x.ndim, channel_axis)
    w = jax.lax.stop_gradient(x)
    lo = jnp.min(w, axis=axes, keepdims=True)
    hi = jnp.max(w, axis=axes, keepdims=True)
    s = exact_div(hi - lo, 3.0)
    s = jnp.where(s > 0, s, 1.0).astype(w.dtype)  # a constant channel: any positive step
    z = jnp.round(-lo / s)
    return {"alpha1": 2 * s, "alpha2": s, "offset": -s * z}


def dual_planes(x, alpha1, alpha2, offset):
    """The two {0, 1} planes of the level nearest to x (ties to the lower code)."""
    codes = jnp.array([[0, 0], [0, 1], [1, 0], [1, 1]], x.dtype)
    levels = [offset + alpha1 * b1 + alpha2 * b2 for b1, b2 in codes]
    dist = jnp.stack([jnp.abs(x - lvl) for lvl in levels])
    best = jnp.argmin(dist, axis=0)  # first minimum wins ties
    return codes[best, 0], codes[best, 1]


@functools.lru_cache(maxsize=None)
def _fdb(ste: str):
    def forward(x, a1, a2, c):
        b1, b2 = dual_planes(x, a1, a2, c)
        return c + a1 * b1 + a2 * b2

    pass_x = estimator(
        lambda x, lo, hi: x,
        lambda x, lo, hi: ((x >= lo) & (x <= hi)).astype(x.dtype) if ste == "clipped"
        else jnp.ones_like(x))

    def surrogate(x, a1, a2, c):
        b1, b2 = jax.lax.stop_gradient(dual_planes(x, a1, a2, c))
        levels = jax.lax.stop_gradient(jnp.stack([c, c + a1, c + a2, c + a1 + a2]))
        lo, hi = jnp.min(levels, axis=0), jnp.max(levels, axis=0)
        return pass_x(x, lo, hi) + a1 * b1 + a2 * b2 + c

    return straight_through(forward, surrogate)


def _check(channel_axis=-1, ste="clipped"):
    check(isinstance(channel_axis, int), f"channel_axis must be an int, got {channel_axis!r}")
    check_choice("ste", ste, ("clipped", "identity"))


@register("dbllm_fdb", validate=_check, bits=2,
          init=lambda x, channel_axis=-1, ste="clipped": fdb_init(x, channel_axis),
          paper="DB-LLM: Accurate Dual-Binarization for Efficient LLMs (Chen et al., ACL "
                "Findings 2024)",
          formula="α₁·b₁ + α₂·b₂ + c, b ∈ {0,1} planes of the nearest level; α₁₀ = 2s, α₂₀ = s, "
                  "c₀ = −s·z from 2-bit asymmetric min-max; STE (clipped to the level range)",
          result="W2/A16 perplexity 7.23 vs previous SOTA 9.64 [ABS; model/dataset "
                 "unverified]")
def dbllm_fdb(x, *, alpha1, alpha2, offset, channel_axis=-1, ste="clipped"):
    """Flexible Dual Binarization of a weight with learned per-channel α₁, α₂ (and offset)."""
    del channel_axis  # only used by init; the learned shapes carry the broadcasting
    return _fdb(ste)(x, alpha1, alpha2, offset)

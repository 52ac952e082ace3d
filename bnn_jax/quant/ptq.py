"""Weight grids of post-training compression, held as quantizers so a compressed model keeps
what each linear was compressed to (``bnn_jax.compress`` writes their learned arrays).

* ``int_weight``: the asymmetric b-bit per-output-channel grid of GPTQ's ``Quantizer``
  (range widened to contain 0, ``scale = (max − min)/(2^b − 1)``, ``zero = round(−min/scale)``,
  ``ŵ = scale·(clip(round(w/scale) + zero, 0, 2^b − 1) − zero)``), the grid of RTN and GPTQ at
  2–4 bits. ``init`` is round-to-nearest's min-max statistics of the kernel.
* ``pbllm_ptq_weight``: the GPTQ-PB result (:func:`bnn_jax.quant.pbllm.gptq_pb`): where
  ``salient_mask`` is set, the 8-bit grid above; elsewhere the per-row "xnor" binarizer
  ``α·sign(w − μ) + μ``. ``init`` is magnitude saliency without compensation (exact count
  ``round(f·numel)``, both signs by |W|) and the statistics over the binarized entries.

Both return their input unchanged when it already lies on the grid, so a compressed kernel
and its arrays reproduce the compressed forward pass. Identity straight-through gradient.
Kernels are Flax ``[in, out]``: output channels are the last axis.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bnn_jax.quant.core import identity_ste
from bnn_jax.quant.registry import check_int_range, check_sign_zero, check, register


def int_grid(w, bits: int):
    """``(scale, zero)`` ``[1, out]`` of GPTQ's min-max grid including 0, per output channel."""
    lo = jnp.minimum(jnp.min(w, axis=0, keepdims=True), 0)
    hi = jnp.maximum(jnp.max(w, axis=0, keepdims=True), 0)
    scale = (hi - lo) / (2 ** bits - 1)
    scale = jnp.where(scale > 0, scale, jnp.ones_like(scale))
    return scale, jnp.round(-lo / scale)


def _on_grid(w, scale, zero, bits):
    q = jnp.clip(jnp.round(w / scale) + zero, 0, 2 ** bits - 1)
    return scale * (q - zero)


@functools.lru_cache(maxsize=None)
def _int(bits: int):
    return identity_ste(lambda w, s, z: _on_grid(w, s, z, bits))


def _int_init(x, bits=2):
    scale, zero = int_grid(jax.lax.stop_gradient(x), bits)
    return {"scale": scale, "zero": zero}


@register("int_weight", validate=lambda bits=2: check_int_range("bits", bits, 1, 16),
          init=_int_init, bits=lambda bits=2: bits,
          paper="GPTQ (Frantar et al., ICLR 2023) / round-to-nearest baselines of PB-LLM and "
                "DB-LLM",
          formula="scale·(clip(round(W/scale) + zero, 0, 2^b − 1) − zero), per output channel, "
                  "min-max range including 0; learned scale, zero; identity STE",
          result="– (a baseline grid) [GAP]")
def int_weight(x, *, scale, zero, bits=2):
    """Asymmetric ``bits``-bit fake quantization of a kernel on a stored per-channel grid."""
    return _int(bits)(x, scale, zero)


def _pb_forward(sign_zero: int, high_bits: int):
    def forward(w, mask, hs, hz, alpha, mu):
        d = w - mu
        sgn = jnp.sign(d) if sign_zero == 0 else jnp.where(d >= 0, 1.0, -1.0).astype(w.dtype)
        return jnp.where(mask != 0, _on_grid(w, hs, hz, high_bits), alpha * sgn + mu)
    return forward


@functools.lru_cache(maxsize=None)
def _pb(sign_zero: int, high_bits: int):
    return identity_ste(_pb_forward(sign_zero, high_bits))


def binarizer_stats(w, binarize):
    """Per-row ``(α, μ)`` ``[1, out]`` of the xnor binarizer over the entries to binarize."""
    keep = binarize.astype(w.dtype)
    count = jnp.maximum(jnp.sum(keep, axis=0, keepdims=True), 1)
    mu = jnp.sum(w * keep, axis=0, keepdims=True) / count
    alpha = jnp.sum(jnp.abs(w - mu) * keep, axis=0, keepdims=True) / count
    return alpha, mu


def _pb_init(x, salient_fraction=0.1, high_bits=8, sign_zero=0):
    w = jax.lax.stop_gradient(x)
    count = int(round(salient_fraction * w.size))
    flat = jnp.abs(w).reshape(-1)
    order = jnp.argsort(flat, stable=True)  # ties: the later index is salient
    mask = jnp.zeros(flat.shape, w.dtype).at[order[flat.size - count:]].set(1.0)
    mask = mask.reshape(w.shape) if count else jnp.zeros_like(w)
    hs, hz = int_grid(w, high_bits)
    alpha, mu = binarizer_stats(w, mask == 0)
    return {"salient_mask": mask, "high_scale": hs, "high_zero": hz, "alpha": alpha, "mu": mu}


def _check_pb(salient_fraction=0.1, high_bits=8, sign_zero=0):
    check(isinstance(salient_fraction, (int, float)) and 0 <= salient_fraction <= 1,
          f"salient_fraction must be in [0, 1], got {salient_fraction!r}")
    check_int_range("high_bits", high_bits, 2, 16)
    check_sign_zero(sign_zero)


@register("pbllm_ptq_weight", validate=_check_pb, init=_pb_init,
          bits=lambda salient_fraction=0.1, high_bits=8, **_: 1 + (high_bits - 1)
          * salient_fraction,
          paper="PB-LLM: Partially Binarized Large Language Models (Shang et al., ICLR 2024), "
                "GPTQ-PB",
          formula="where(mask, 8-bit min-max grid (incl. 0) per output channel, "
                  "α·sign(W − μ) + μ per output channel), sign(0)=0 (sign_zero=1: +1); "
                  "learned mask, grid, α, μ; identity STE",
          result="– (paper Tables not transcribed) [GAP]")
def pbllm_ptq_weight(x, *, salient_mask, high_scale, high_zero, alpha, mu,
                     salient_fraction=0.1, high_bits=8, sign_zero=0):
    """A partially binarized kernel on stored GPTQ-PB grids (``salient_fraction`` only
    matters to ``init``)."""
    del salient_fraction
    return _pb(sign_zero, high_bits)(x, salient_mask, high_scale, high_zero, alpha, mu)

"""BitNet b1.58 (Ma et al., 2024) and BitNet b1.58 Reloaded (Nielsen & Schneider-Kamp, 2024).

No official b1.58 training code exists; the formulas follow the authors' "Training Tips, Code
and FAQ" snippet and the Reloaded authors' ``bitlinear`` package (schneiderkamplab/bitlinear,
``bitlinear.py``/``measures.py``, commit 7b66f06):

* weights: ``s = 1/max(measure|W|, eps)`` per tensor, ``W_q = clip(round(W·s), −1, 1)/s``;
  measure = mean (b1.58) or median (Reloaded; ``torch.median`` returns the LOWER middle value
  of an even count, and so does this module);
* activations: per token (last axis) ``s = Q/max(max|x|, eps)``,
  ``x_q = clip(round(x·s), −128, 127)/s`` with Q = 127 (b1.58 FAQ) or 128 (Reloaded, which
  takes Q = max(|−128|, |127|)).

Both use the identity straight-through estimator (``x + sg(q(x) − x)``, no clipping); the
scales are stop-gradient statistics. The paper writes ``RoundClip(W/(γ+ε), −1, 1)``: that is
``eps_rule="add"``; the FAQ code's ``max(γ, ε)`` is the default. The normalisation in front of
the activation quantizer (SubLN/RMSNorm in b1.58, LayerNorm without affine in Reloaded) belongs
to the layer, not to these functions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bnn_jax.quant.core import identity_ste, mean
from bnn_jax.quant.registry import check_choice, check_int_range, check_positive, register


def lower_median(a: jax.Array) -> jax.Array:
    """Median of all elements, the lower middle value for an even count (``torch.median``)."""
    flat = jnp.sort(a.reshape(-1))
    return flat[(flat.size - 1) // 2]


def absmean_scale(w: jax.Array, measure: str = "mean") -> jax.Array:
    """γ = mean|W| (b1.58) or lower-median |W| (Reloaded) over the whole tensor, stop-gradient."""
    a = jnp.abs(jax.lax.stop_gradient(w))
    return mean(a) if measure == "mean" else lower_median(a)


@functools.lru_cache(maxsize=None)
def _weight(measure: str, eps: float, eps_rule: str):
    def forward(w):
        gamma = absmean_scale(w, measure)
        if eps_rule == "clamp":
            s = 1.0 / jnp.maximum(gamma, eps)
            return jnp.clip(jnp.round(w * s), -1, 1) / s
        return gamma * jnp.clip(jnp.round(w / (gamma + eps)), -1, 1)

    return identity_ste(forward)


def _check_weight(measure="mean", eps=1e-5, eps_rule="clamp"):
    check_choice("measure", measure, ("mean", "median"))
    check_positive("eps", eps)
    check_choice("eps_rule", eps_rule, ("clamp", "add"))


@register("bitnet_weight", validate=_check_weight, bits=1.58,
          aliases=("bitnet_b158_weight",),
          paper="BitNet b1.58 (Ma et al., 2024); median: BitNet b1.58 Reloaded (Nielsen & "
                "Schneider-Kamp, 2024)",
          formula="s = 1/max(γ, ε), γ = mean|W| (or median|W|) per tensor; "
                  "clip(round(W·s), −1, 1)/s; identity STE",
          result="3B LLaMA-style W1.58/A8: ppl 9.91 vs FP 10.04, zero-shot avg 50.2 vs 49.7 "
                 "[MEM]; Reloaded: – [GAP]")
def bitnet_weight(x, *, measure="mean", eps=1e-5, eps_rule="clamp"):
    """Fake-quantized ternary weights γ·RoundClip(W/γ, −1, 1) with a per-tensor scale.

    ``measure="median"`` is BitNet b1.58 Reloaded; ``eps_rule="add"`` is the paper's
    ``W/(γ+ε)`` (the default ``"clamp"`` is the FAQ code's ``1/max(γ, ε)``).
    """
    return _weight(measure, float(eps), eps_rule)(x)


@functools.lru_cache(maxsize=None)
def _act(bits: int, numerator: float, eps: float):
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def forward(x):
        absmax = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
        s = numerator / jnp.maximum(absmax, eps)
        return jnp.clip(jnp.round(x * s), lo, hi) / s

    return identity_ste(forward)


def _check_act(bits=8, variant="b1.58", eps=1e-5):
    check_int_range("bits", bits, 2, 16)
    check_choice("variant", variant, ("b1.58", "reloaded"))
    check_positive("eps", eps)


@register("bitnet_act", validate=_check_act, bits=lambda bits=8, variant="b1.58", eps=1e-5: bits,
          aliases=("bitnet_b158_act",),
          paper="BitNet b1.58 (Ma et al., 2024); variant='reloaded': BitNet b1.58 Reloaded "
                "(Nielsen & Schneider-Kamp, 2024)",
          formula="per token s = 127/max(max|x|, ε) (Reloaded 128); "
                  "clip(round(x·s), −128, 127)/s; identity STE",
          result="3B LLaMA-style W1.58/A8: ppl 9.91 vs FP 10.04 [MEM]")
def bitnet_act(x, *, bits=8, variant="b1.58", eps=1e-5):
    """Per-token absmax fake quantization over the last axis (8 bits by default)."""
    qmax = 2 ** (bits - 1)
    numerator = float(qmax - 1 if variant == "b1.58" else qmax)
    return _act(bits, numerator, float(eps))(x)

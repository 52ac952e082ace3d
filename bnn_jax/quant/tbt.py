"""TBT, Binary and Ternary NLG (Liu et al., ACL 2023): statistics weights, elastic activations.

Follows facebookresearch/Ternary_Binary_Transformer ``quant/utils_quant.py`` (commit 715407e):

* Weights (linear layers AND the token-embedding table, ``QuantizeEmbedding``): one scale per
  output row, no learned parameters, identity straight-through gradient. Binary:
  ``a = sg(mean|W|)``, ``a·sign(W)``; ternary: ``a = sg(4/3·mean|W|)``, ``a·round(clip(W/a,-1,1))``.
  No mean centring (unlike BiBERT/BiT).
* Activations of 1-2 bits: the *elastic* binarizer, an LSQ variant with a learned scalar scale
  ``alpha`` whose first-call value is ``2·mean|x|/sqrt(Q')`` (signed) or ``4·mean|x|/sqrt(Q')``
  (unsigned); unsigned 2-bit subtracts the dynamic ``min(x)`` (not learned, no gradient).
* 8-bit activations: min-max symmetric/asymmetric quantization after clipping to ±2.5.

Conventions of the reference kept here: ``sign(0) = 0`` (``torch.sign``; ``sign_zero=1`` selects +1
for truly binary, packable outputs), round half to even, LSQ gradient scale ``1/sqrt(numel·Q_P)``,
alpha floored at 1e-5 inside the forward only (``utils_quant.py`` lines 39-47 and 107-115): the
backward uses the floored value but still returns the full ``grad_alpha`` (lines 60-72, 128-137), so
alpha keeps its gradient below the floor. The forward is the exact quantized value (the reference's
detach trick ``sg(q − W) + W`` can differ from q by one rounding of the subtraction).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from bnn_jax.quant.core import (estimator, exact_div, identity_ste, mean,
                                per_channel_axes, sign_of, straight_through)
from bnn_jax.quant.registry import (check, check_choice, check_int_range, check_positive,
                                    check_sign_zero, register)

ELASTIC_EPS = 1e-5


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------

_identity = identity_ste(lambda w, q: q)


def _check_weight(bits=1, channel_axis=-1, sign_zero=0):
    check_choice("bits", bits, (1, 2))
    check_sign_zero(sign_zero)
    check(channel_axis is None or isinstance(channel_axis, int),
          f"channel_axis must be an int or None, got {channel_axis!r}")


@register("tbt_weight", validate=_check_weight, bits=lambda bits=1, **_:
          1 if bits == 1 else 1.58,
          paper="TBT: Binary and Ternary Natural Language Generation (Liu et al., ACL 2023)",
          formula="bits=1: a·sign(W), sign(0)=0 (sign_zero=1: +1), a = sg(mean_row|W|); "
                  "bits=2: a·round(clip(W/a,−1,1)), a = sg(4/3·mean_row|W|); identity STE; "
                  "also the embedding table",
          result="XSUM BART-base W1-E1-A1 R1/R2/RL 31.68/11.19/25.29; W2-E2-A2 "
                 "36.21/14.38/29.07 [README]")
def tbt_weight(x, *, bits=1, channel_axis=-1, sign_zero=0):
    """TBT statistics-based binary (bits=1) or ternary (bits=2) weight, one scale per row.

    ``channel_axis`` holds the rows of the paper (output channels): -1 for a Flax ``Dense``
    kernel ``[in, out]``; 0 for an embedding table ``[vocab, features]`` (one scale per token,
    as the reference's ``QuantizeEmbedding``); None for one scale per tensor.
    """
    axes = per_channel_axes(x.ndim, channel_axis)
    w = jax.lax.stop_gradient(x)
    alpha = mean(jnp.abs(w), axis=axes, keepdims=True)
    if bits == 2:
        alpha = (4 / 3) * alpha
    # An all-zero row has alpha = 0; the reference divides by it (NaN), here it stays 0.
    safe = jnp.where(alpha > 0, alpha, jnp.ones_like(alpha))
    if bits == 1:
        q = alpha * sign_of(sign_zero)(w / safe)
    else:
        q = alpha * jnp.round(jnp.clip(w / safe, -1.0, 1.0))
    return _identity(x, q)


# --------------------------------------------------------------------------------------------
# Elastic activation quantizer (learned scale), shared with BiPFT
# --------------------------------------------------------------------------------------------

def elastic_levels(bits: int, signed: bool, unsigned_two_bit_levels: int = 2) -> tuple[int, int]:
    """(Q_N, Q_P) of the elastic quantizer; TBT's signed 1-2 bit range is {-1, 0, 1}."""
    if signed:
        if bits in (1, 2):
            return -1, 1
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if bits == 2:
        return 0, unsigned_two_bit_levels
    return 0, 2 ** bits - 1


def elastic_init(x, *, bits: int, signed: bool):
    """First-call alpha: 2·mean|x|/sqrt(Q') signed, 4·mean|x|/sqrt(Q') unsigned (reference's
    ``AlphaInit``; Q' = 2^(b−1)−1 (0 → 1) signed, 2^b − 1 unsigned, independent of Q_P)."""
    qp = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1
    qp = qp or 1
    factor = 2.0 if signed else 4.0
    return exact_div(factor * mean(jnp.abs(x)), math.sqrt(qp))


@functools.lru_cache(maxsize=None)
def _elastic(bits: int, signed: bool, qp2: int, sign_zero: int):
    qn, qp = elastic_levels(bits, signed, qp2)
    dynamic_min = (not signed) and bits >= 2
    sgn = sign_of(sign_zero)

    def floor(alpha):
        return jnp.where(alpha > ELASTIC_EPS, alpha, ELASTIC_EPS).astype(jnp.result_type(alpha))

    def shifted(x):
        # Unsigned >= 2 bits quantizes x − min(x); min is a Python number (.item()) in the
        # reference, so it carries no gradient.
        m = jax.lax.stop_gradient(jnp.min(x)) if dynamic_min else 0.0
        return x - m, m

    def forward(x, alpha):
        a = floor(alpha)
        if signed and bits == 1:
            return sgn(x) * a
        xin, m = shifted(x)
        q = jnp.clip(jnp.round(xin / a), qn, qp) * a
        return q + m if dynamic_min else q

    pass_x = estimator(lambda x, xin, a: x,
                       lambda x, xin, a: ((xin / a >= qn) & (xin / a <= qp)).astype(x.dtype))

    def surrogate(x, alpha):
        # The floored alpha enters the backward only as a saved value, as in the reference's
        # autograd.Function: grad_alpha is still returned below the floor, so a collapsed
        # alpha can recover.
        a = jax.lax.stop_gradient(floor(alpha))
        xin, _ = shifted(x)
        v = jax.lax.stop_gradient(xin / a)
        if signed and bits == 1:
            coef = sgn(jax.lax.stop_gradient(x))
        else:
            coef = jnp.where(v < qn, qn, jnp.where(v > qp, qp, jnp.round(v) - v))
        lsq_scale = 1.0 / math.sqrt(x.size * qp)
        # d/dx: 1[Q_N <= x/a <= Q_P]; d/dalpha: sum(g · coef) · lsq_scale (LSQ rule).
        return pass_x(x, jax.lax.stop_gradient(xin), a) + alpha * (
            jax.lax.stop_gradient(coef * lsq_scale).astype(x.dtype))

    return straight_through(forward, surrogate)


def elastic_quantize(x, alpha, *, bits: int = 1, signed: bool = True,
                     unsigned_two_bit_levels: int = 2, sign_zero: int = 0):
    """The elastic (LSQ-style) quantizer of TBT/BiT/BiPFT with learned scalar ``alpha``.

    ``unsigned_two_bit_levels``: Q_P of unsigned 2-bit; TBT uses 2 (levels {0, 1, 2}), BiT and
    BiPFT use 3. ``sign_zero``: the signed 1-bit value at 0 (reference 0, or 1 for +1).
    """
    sign_of(sign_zero)  # reject a bad value with the valid choices
    return _elastic(bits, signed, unsigned_two_bit_levels, sign_zero)(x, alpha)


def _check_act(bits=1, signed=True, sign_zero=0):
    check_choice("bits", bits, (1, 2))
    check_choice("signed", signed, (True, False))
    check_sign_zero(sign_zero)


def _act_init(x, bits=1, signed=True, sign_zero=0):
    return {"alpha": elastic_init(x, bits=bits, signed=signed)}


@register("tbt_act", validate=_check_act, init=_act_init,
          bits=lambda bits=1, **_: 1 if bits == 1 else 1.58,
          paper="TBT: Binary and Ternary Natural Language Generation (Liu et al., ACL 2023)",
          formula="elastic: signed A1 α·sign(x), sign(0)=0 (sign_zero=1: +1), A2 "
                  "α·clip(round(x/α),−1,1); unsigned A1 α·clip(round(x/α),0,1), A2 "
                  "α·clip(round((x−min x)/α),0,2)+min x; "
                  "g·1[Q_N ≤ x/α ≤ Q_P], dα LSQ with scale 1/sqrt(N·Q_P); "
                  "α₀ = 2·mean|x| (signed) or 4·mean|x|/sqrt(2^b−1) (unsigned); α floored at "
                  "1e-5 in the forward only, dα kept (utils_quant.py l. 39-72, 107-137)",
          result="XSUM BART-base W1-E1-A1 R1/R2/RL 31.68/11.19/25.29; W2-E2-A2 "
                 "36.21/14.38/29.07 [README]")
def tbt_act(x, *, alpha, bits=1, signed=True, sign_zero=0):
    """TBT elastic activation quantizer (1 or 2 bits, signed or unsigned), learned ``alpha``.

    Signed for the inputs of q/k/v/out/fc1 and for Q, K, V; unsigned for the fc2 input and
    the attention probabilities. ``init(x)`` gives the reference's first-call alpha. The paper
    is sometimes read as having a learnable shift: the reference has none (only the dynamic
    min of unsigned 2-bit), and neither has this function.
    """
    return elastic_quantize(x, alpha, bits=bits, signed=signed, unsigned_two_bit_levels=2,
                            sign_zero=sign_zero)


# --------------------------------------------------------------------------------------------
# Min-max 8-bit activations (clip 2.5)
# --------------------------------------------------------------------------------------------

def _minmax_axes(x, layerwise):
    if layerwise:
        return tuple(range(x.ndim))
    # Reference: last axis for <= 3-D inputs; per (batch, head) over the last two axes for 4-D.
    return (x.ndim - 2, x.ndim - 1) if x.ndim == 4 else (x.ndim - 1,)


@functools.lru_cache(maxsize=None)
def _minmax(bits: int, symmetric: bool, clip_value: float, layerwise: bool):
    def forward(x):
        c = jnp.asarray(clip_value, x.dtype)
        xc = jnp.where(x < c, x, c)
        xc = jnp.where(xc > -c, xc, -c)
        axes = _minmax_axes(x, layerwise)
        if symmetric:
            s = (2 ** (bits - 1) - 1) / jnp.max(jnp.abs(xc), axis=axes, keepdims=True)
            return jnp.round(xc * s) / s
        hi = jnp.max(xc, axis=axes, keepdims=True)
        lo = jnp.min(xc, axis=axes, keepdims=True)
        span = (hi - lo) + 1e-8
        levels = 2 ** bits - 1
        q = exact_div(jnp.round(((xc - lo) / span) * levels), float(levels))
        return q * span + lo

    def derivative(x):
        # The reference zeroes the gradient AT the clip value too (ge/le), unlike larq.
        return ((x > -clip_value) & (x < clip_value)).astype(x.dtype)

    return estimator(forward, derivative)


def _check_act8(bits=8, symmetric=True, clip_value=2.5, layerwise=True):
    check_int_range("bits", bits, 2, 16)
    check_choice("symmetric", symmetric, (True, False))
    check_positive("clip_value", clip_value)
    check_choice("layerwise", layerwise, (True, False))


@register("tbt_act8", validate=_check_act8,
          bits=lambda bits=8, symmetric=True, clip_value=2.5, layerwise=True: bits,
          paper="TBT: Binary and Ternary Natural Language Generation (Liu et al., ACL 2023)",
          formula="c = clip(x, ±2.5); symmetric round(c·s)/s, s = 127/max|c|; asymmetric "
                  "round((c−min)/(max−min)·255)/255·(max−min)+min; g·1[|x| < 2.5]",
          result="XSUM BART-base W1-E1-A8 R1/R2/RL 40.96/18.37/33.30; W2-E2-A8 "
                 "42.40/19.54/34.51 [README]")
def tbt_act8(x, *, bits=8, symmetric=True, clip_value=2.5, layerwise=True):
    """TBT's min-max (not learned) 8-bit activation quantizer with clipping at ±clip_value.

    ``layerwise=True`` (what TBT's linear layers pass) uses one range per tensor; False uses
    one per row of the last axis (per (batch, head) for 4-D attention tensors).
    """
    return _minmax(bits, symmetric, float(clip_value), layerwise)(x)

"""BiBERT (Qin et al., ICLR 2022): row-centred binary weights, sign activations, Bi-Attention.

Follows htqin/BiBERT ``transformer/utils_quant.py`` and ``modeling_quant.py`` (commit 91fd347).
``sign(0) = 0`` throughout (``torch.sign``); ``sign_zero=1`` selects +1 (truly binary, packable).
Two straight-through rules appear in the reference:

* linear-layer weights and inputs use the detach trick through ``clamp(·, −1, 1)``: gradient
  ``1[|x| <= 1]`` (boundary included), and for weights it flows back through the row centring;
* Q, K, V and the attention ``bool`` use ``BinaryQuantizer``/``ZMeanBinaryQuantizer``, whose
  backward zeroes ``|x| >= 1``: gradient ``1[|x| < 1]`` (boundary excluded).

The Direction-Matching Distillation and hidden-state losses live in ``bnn_jax.train.losses``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bnn_jax.quant.core import (SIGN_ZERO, clipped_ste, clipped_ste_derivative, estimator,
                                exact_div, mean, per_channel_axes, sign_of)
from bnn_jax.quant.registry import (check, check_choice, check_sign_zero, register)

MASK_VALUE = -10000.0  # BERT's additive attention mask for padded keys

# Linear inputs: sign through the clamp detach trick (boundary passes).
_SIGN_INCLUSIVE = {z: clipped_ste(sign_of(z)) for z in SIGN_ZERO}
# Weights: a·sign(c) with the gradient of clamp(c, -1, 1).
_WEIGHT_SIGN = {z: estimator(lambda c, a, f=sign_of(z): a * f(c),
                             lambda c, a: clipped_ste_derivative(c, 1.0))
                for z in SIGN_ZERO}
# BinaryQuantizer: gradient zeroed for |x| >= 1.
_SIGN_EXCLUSIVE = {z: estimator(sign_of(z),
                                lambda x: clipped_ste_derivative(x, 1.0, inclusive=False))
                   for z in SIGN_ZERO}
# ZMeanBinaryQuantizer: sign then −1 → 0, so 0 where x <= 0 (ties at 0 give 0).
_bool_code = estimator(lambda x: (x > 0).astype(x.dtype),
                       lambda x: clipped_ste_derivative(x, 1.0, inclusive=False))
# The paper's bool(x) = 1 if x >= 0.
_bool_paper = estimator(lambda x: (x >= 0).astype(x.dtype),
                        lambda x: clipped_ste_derivative(x, 1.0, inclusive=False))


def additive_mask(mask, dtype):
    """An attention mask as BERT's additive 0 / −10000 (a boolean mask: True = may attend)."""
    mask = jnp.asarray(mask)
    if mask.dtype == jnp.bool_:
        return jnp.where(mask, 0.0, MASK_VALUE).astype(dtype)
    return mask


def _check_weight(channel_axis=-1, sign_zero=0):
    check(channel_axis is None or isinstance(channel_axis, int),
          f"channel_axis must be an int or None, got {channel_axis!r}")
    check_sign_zero(sign_zero)



@register("bibert_weight", validate=_check_weight,
          paper="BiBERT: Accurate Fully Binarized BERT (Qin et al., ICLR 2022)",
          formula="sg(mean_row|W|)·sign(W − mean_row W), sign(0)=0 (sign_zero=1: +1); "
                  "g·1[|W − μ| ≤ 1] through the centring",
          result="GLUE dev avg 63.2 (BERT-base W1-E1-A1, no data augmentation) [MEM]")
def bibert_weight(x, *, channel_axis=-1, sign_zero=0):
    """BiBERT weight: scale from the UNcentred row, sign of the row-centred weight.

    ``channel_axis``: -1 for a Flax ``Dense`` kernel ``[in, out]``, 0 for the word-embedding
    table ``[vocab, hidden]`` (the reference binarizes it the same way, per vocabulary row).
    """
    axes = per_channel_axes(x.ndim, channel_axis)
    alpha = jax.lax.stop_gradient(mean(jnp.abs(x), axis=axes, keepdims=True))
    centred = x - mean(x, axis=axes, keepdims=True)
    return _WEIGHT_SIGN[sign_zero](centred, alpha)


@register("bibert_act", validate=check_sign_zero,
          paper="BiBERT: Accurate Fully Binarized BERT (Qin et al., ICLR 2022)",
          formula="sign(x), sign(0)=0 (sign_zero=1: +1), no scale; g·1[|x| ≤ 1] (clamp detach "
                  "trick)",
          result="GLUE dev avg 63.2 (BERT-base W1-E1-A1, no data augmentation) [MEM]")
def bibert_act(x, *, sign_zero=0):
    """BiBERT's binarization of every linear layer's input."""
    return _SIGN_INCLUSIVE[sign_zero](x, 1.0)


def bibert_sign(x: jax.Array, *, sign_zero: int = 0) -> jax.Array:
    """sign(x) (0 at 0, or +1 with ``sign_zero=1``) with gradient 1[|x| < 1]: BiBERT's
    binarizer of Q, K and V."""
    sign_of(sign_zero)  # reject a bad value with the valid choices
    return _SIGN_EXCLUSIVE[sign_zero](x)


def bi_attention(q, k, v, mask=None, *, bool_rule: str = "code", sign_zero: int = 0):
    """BiBERT Bi-Attention: ``bool(sign(Q)·sign(K)ᵀ/√d + mask) · sign(V)``, no softmax.

    ``q, k, v``: ``[..., heads, tokens, head_dim]`` real-valued projections. ``mask``: None, an
    additive float mask broadcastable to the scores (BERT's 0 / −10000), or a boolean
    "may attend" mask (True = keep), converted to 0 / −10000. ``bool_rule="code"`` maps a
    score of exactly 0 to 0 (the reference's ``sign`` then −1 → 0); ``"paper"`` maps it to 1
    (``bool(x) = 1 if x >= 0``). ``sign_zero`` is the sign of Q, K, V at 0. Returns
    ``(context, binary_attention)``; attention dropout, if wanted, goes on the scores before
    ``bool`` (as in the reference) and is the caller's.
    """
    check_choice("bool_rule", bool_rule, ("code", "paper"))
    check(q.shape[-1] == k.shape[-1] and k.shape[-2] == v.shape[-2],
          f"incompatible q/k/v shapes {q.shape}, {k.shape}, {v.shape}")
    qb, kb = bibert_sign(q, sign_zero=sign_zero), bibert_sign(k, sign_zero=sign_zero)
    scores = exact_div(jnp.einsum("...qd,...kd->...qk", qb, kb), float(q.shape[-1]) ** 0.5)
    if mask is not None:
        scores = scores + additive_mask(mask, scores.dtype)
    attention = (_bool_code if bool_rule == "code" else _bool_paper)(scores)
    context = jnp.einsum("...qk,...kd->...qd", attention, bibert_sign(v, sign_zero=sign_zero))
    return context, attention

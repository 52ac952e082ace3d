"""BiBERT (Qin et al., ICLR 2022): row-centred binary weights, sign activations, Bi-Attention.

Follows htqin/BiBERT ``transformer/utils_quant.py`` and ``modeling_quant.py`` (commit 91fd347).
``sign(0) = 0`` throughout (``torch.sign``). Two straight-through rules appear in the reference:

* linear-layer weights and inputs use the detach trick through ``clamp(·, −1, 1)``: gradient
  ``1[|x| <= 1]`` (boundary included), and for weights it flows back through the row centring;
* Q, K, V and the attention ``bool`` use ``BinaryQuantizer``/``ZMeanBinaryQuantizer``, whose
  backward zeroes ``|x| >= 1``: gradient ``1[|x| < 1]`` (boundary excluded).

The Direction-Matching Distillation and hidden-state losses live in ``bnn_jax.train.losses``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bnn_jax.quant.core import clipped_ste, estimator, exact_div, mean, sign0
from bnn_jax.quant.registry import check, check_choice, register
from bnn_jax.quant.tbt import per_channel_axes

MASK_VALUE = -10000.0  # BERT's additive attention mask for padded keys

_sign_inclusive = clipped_ste(sign0)
_weight_sign = estimator(lambda c, a: a * sign0(c),
                         lambda c, a: (jnp.abs(c) <= 1).astype(c.dtype))
_sign_exclusive = estimator(sign0, lambda x: (jnp.abs(x) < 1).astype(x.dtype))
# ZMeanBinaryQuantizer: sign then −1 → 0, so 0 where x <= 0 (ties at 0 give 0).
_bool_code = estimator(lambda x: (x > 0).astype(x.dtype),
                       lambda x: (jnp.abs(x) < 1).astype(x.dtype))
# The paper's bool(x) = 1 if x >= 0.
_bool_paper = estimator(lambda x: (x >= 0).astype(x.dtype),
                        lambda x: (jnp.abs(x) < 1).astype(x.dtype))


def _check_weight(channel_axis=-1):
    check(channel_axis is None or isinstance(channel_axis, int),
          f"channel_axis must be an int or None, got {channel_axis!r}")


@register("bibert_weight", validate=_check_weight,
          paper="BiBERT: Accurate Fully Binarized BERT (Qin et al., ICLR 2022)",
          formula="sg(mean_row|W|)·sign(W − mean_row W); g·1[|W − μ| ≤ 1] through the centring",
          result="GLUE dev avg 63.2 (BERT-base W1-E1-A1, no data augmentation) [MEM]")
def bibert_weight(x, *, channel_axis=-1):
    """BiBERT weight: scale from the UNcentred row, sign of the row-centred weight.

    ``channel_axis``: -1 for a Flax ``Dense`` kernel ``[in, out]``, 0 for the word-embedding
    table ``[vocab, hidden]`` (the reference binarizes it the same way, per vocabulary row).
    """
    axes = per_channel_axes(x.ndim, channel_axis)
    alpha = jax.lax.stop_gradient(mean(jnp.abs(x), axis=axes, keepdims=True))
    centred = x - mean(x, axis=axes, keepdims=True)
    return _weight_sign(centred, alpha)


@register("bibert_act",
          paper="BiBERT: Accurate Fully Binarized BERT (Qin et al., ICLR 2022)",
          formula="sign(x), sign(0)=0, no scale; g·1[|x| ≤ 1] (clamp detach trick)",
          result="GLUE dev avg 63.2 (BERT-base W1-E1-A1, no data augmentation) [MEM]")
def bibert_act(x):
    """BiBERT's binarization of every linear layer's input."""
    return _sign_inclusive(x, 1.0)


def bibert_sign(x: jax.Array) -> jax.Array:
    """sign(x) (0 at 0) with gradient 1[|x| < 1]: BiBERT's binarizer of Q, K and V."""
    return _sign_exclusive(x)


def bi_attention(q, k, v, mask=None, *, bool_rule: str = "code"):
    """BiBERT Bi-Attention: ``bool(sign(Q)·sign(K)ᵀ/√d + mask) · sign(V)``, no softmax.

    ``q, k, v``: ``[..., heads, tokens, head_dim]`` real-valued projections. ``mask``: None, an
    additive float mask broadcastable to the scores (BERT's 0 / −10000), or a boolean
    "may attend" mask (True = keep), converted to 0 / −10000. ``bool_rule="code"`` maps a
    score of exactly 0 to 0 (the reference's ``sign`` then −1 → 0); ``"paper"`` maps it to 1
    (``bool(x) = 1 if x >= 0``). Returns ``(context, binary_attention)``; attention dropout, if
    wanted, goes on the scores before ``bool`` (as in the reference) and is the caller's.
    """
    check_choice("bool_rule", bool_rule, ("code", "paper"))
    check(q.shape[-1] == k.shape[-1] and k.shape[-2] == v.shape[-2],
          f"incompatible q/k/v shapes {q.shape}, {k.shape}, {v.shape}")
    qb, kb = bibert_sign(q), bibert_sign(k)
    scores = exact_div(jnp.einsum("...qd,...kd->...qk", qb, kb), float(q.shape[-1]) ** 0.5)
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype == jnp.bool_:
            mask = jnp.where(mask, 0.0, MASK_VALUE).astype(scores.dtype)
        scores = scores + mask
    attention = (_bool_code if bool_rule == "code" else _bool_paper)(scores)
    context = jnp.einsum("...qk,...kd->...qd", attention, bibert_sign(v))
    return context, attention

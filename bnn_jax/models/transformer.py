"""Shared pre-LayerNorm Transformer blocks (Vaswani et al. 2017; pre-LN as in GPT-2/T5).

:class:`EncoderBlock` (self-attention + MLP) and :class:`DecoderBlock` (causal self-attention,
cross-attention, MLP) compose :class:`bnn_jax.nn.MultiHeadAttention` and
:class:`bnn_jax.nn.QuantLinear`, so every projection takes the model's quantizers. Each block
sows its output as ``hidden`` (``nnx.Intermediate``) for hidden-state distillation; the
attention layers sow their real-valued ``q``, ``k``, ``v`` (BiBERT's DMD).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bnn_jax.nn import MultiHeadAttention, QuantLinear
from bnn_jax.nn.attention import merge_heads


class MLP(nnx.Module):
    """``fc2(gelu(fc1(x)))`` with quantized layers."""

    def __init__(self, hidden: int, intermediate: int, *, quant: dict, rngs: nnx.Rngs):
        self.fc1 = QuantLinear(hidden, intermediate, **quant, rngs=rngs)
        self.fc2 = QuantLinear(intermediate, hidden, **quant, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.gelu(self.fc1(x)))


class EncoderBlock(nnx.Module):
    """``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, hidden: int, intermediate: int, num_heads: int, *, quant: dict,
                 rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(hidden, rngs=rngs)
        self.attn = MultiHeadAttention(num_heads, hidden, **quant, rngs=rngs)
        self.ln2 = nnx.LayerNorm(hidden, rngs=rngs)
        self.mlp = MLP(hidden, intermediate, quant=quant, rngs=rngs)

    def __call__(self, x, mask):
        x = x + self.attn(self.ln1(x), mask=mask)
        x = x + self.mlp(self.ln2(x))
        self.sow(nnx.Intermediate, "hidden", x, capture_noop=True)
        return x


class DecoderBlock(nnx.Module):
    """Causal self-attention, cross-attention to the encoder output, MLP; all pre-LN."""

    def __init__(self, hidden: int, intermediate: int, num_heads: int, *, quant: dict,
                 rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(hidden, rngs=rngs)
        self.self_attn = MultiHeadAttention(num_heads, hidden, **quant, rngs=rngs)
        self.ln2 = nnx.LayerNorm(hidden, rngs=rngs)
        self.cross_attn = MultiHeadAttention(num_heads, hidden, **quant, rngs=rngs)
        self.ln3 = nnx.LayerNorm(hidden, rngs=rngs)
        self.mlp = MLP(hidden, intermediate, quant=quant, rngs=rngs)

    def __call__(self, x, memory, self_mask, cross_mask, cache=None, index=None):
        """Without ``cache``: the block output. With ``cache`` (``k``, ``v`` ``[B, H, S, d]``):
        the new tokens' keys/values are written at slots ``[index, index+T)``, ``self_mask``
        ``[B, 1, T, S]`` says which slots each token sees; returns ``(output, cache)``."""
        h = self.ln1(x)
        if cache is None:
            x = x + self.self_attn(h, mask=self_mask)
        else:
            q, k, v = self.self_attn.project(h, h)
            k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype),
                                             (0, 0, index, 0))
            v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype),
                                             (0, 0, index, 0))
            cache = {"k": k, "v": v}
            ctx = self.self_attn.attend(q, k, v, mask=self_mask, inputs=h)
            x = x + self.self_attn.out(merge_heads(ctx))
        x = x + self.cross_attn(self.ln2(x), memory, mask=cross_mask)
        x = x + self.mlp(self.ln3(x))
        self.sow(nnx.Intermediate, "hidden", x, capture_noop=True)
        return x if cache is None else (x, cache)


def padding_mask(attention_mask) -> jax.Array:
    """``[B, M]`` 1/0 keys -> boolean may-attend ``[B, 1, 1, M]``."""
    return jnp.asarray(attention_mask).astype(bool)[:, None, None, :]


def causal_mask(length: int) -> jax.Array:
    """Boolean ``[1, 1, L, L]``: position ``i`` attends to ``j <= i``."""
    return jnp.tril(jnp.ones((length, length), bool))[None, None]


def check_length(name: str, ids, max_len: int) -> None:
    """Inputs longer than the position table are an error (before anything is computed)."""
    if ids.ndim != 2 or ids.shape[1] > max_len:
        raise ValueError(f"{name}: input of shape {tuple(ids.shape)}; expected [batch, length] "
                         f"with length <= max_len={max_len}")


def quant_fields(input_quantizer: Any, kernel_quantizer: Any, kernel_constraint: Any) -> dict:
    """The quantizer arguments every projection of a block takes."""
    return dict(input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer,
                kernel_constraint=kernel_constraint)

"""A small BERT-style encoder classifier: token, position and segment embeddings, pre-LN
Transformer blocks, the first token's state through a tanh pooler to ``num_labels`` outputs.

Embeddings, pooler and head stay in full precision (as BiBERT keeps them); the blocks' linear
layers take the quantizers. ``model(input_ids, attention_mask=None, token_type_ids=None)``.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from bnn_jax.models.transformer import EncoderBlock, check_length, padding_mask, quant_fields


class Model(nnx.Module):
    """Sequence classifier (``num_labels`` logits; one output for regression)."""

    def __init__(self, *, vocab_size: int, max_len: int, num_labels: int, rngs: nnx.Rngs,
                 hidden: int = 64, intermediate: int = 128, num_layers: int = 2,
                 num_heads: int = 4, type_vocab_size: int = 2, input_quantizer: Any = None,
                 kernel_quantizer: Any = None, kernel_constraint: Any = None):
        quant = quant_fields(input_quantizer, kernel_quantizer, kernel_constraint)
        self.max_len = max_len
        self.tokens = nnx.Embed(vocab_size, hidden, rngs=rngs)
        self.positions = nnx.Embed(max_len, hidden, rngs=rngs)
        self.segments = nnx.Embed(type_vocab_size, hidden, rngs=rngs)
        self.blocks = nnx.List([EncoderBlock(hidden, intermediate, num_heads, quant=quant,
                                             rngs=rngs) for _ in range(num_layers)])
        self.ln = nnx.LayerNorm(hidden, rngs=rngs)
        self.pooler = nnx.Linear(hidden, hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, num_labels, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None):
        """``[B, num_labels]`` for ``input_ids [B, L]``."""
        check_length("text_encoder", input_ids, self.max_len)
        segments = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        x = (self.tokens(input_ids) + self.positions(jnp.arange(input_ids.shape[1]))[None]
             + self.segments(segments))
        mask = None if attention_mask is None else padding_mask(attention_mask)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(jnp.tanh(self.pooler(self.ln(x)[:, 0])))

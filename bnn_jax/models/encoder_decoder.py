"""A small Transformer encoder-decoder (Vaswani et al. 2017) with pre-LN blocks and a shared
token embedding tied to the output layer (as BART does).

``model(input_ids, decoder_input_ids, attention_mask=None) -> logits [B, T, V]``; the block
linear layers take the quantizers, embeddings and final norms stay in full precision.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from bnn_jax.models.transformer import (DecoderBlock, EncoderBlock, causal_mask, check_length,
                                        padding_mask, quant_fields)


class Model(nnx.Module):
    """Encoder-decoder LM over one shared vocabulary."""

    def __init__(self, *, vocab_size: int, max_len: int, rngs: nnx.Rngs, hidden: int = 64,
                 intermediate: int = 128, num_layers: int = 2, num_heads: int = 4,
                 input_quantizer: Any = None, kernel_quantizer: Any = None,
                 kernel_constraint: Any = None):
        quant = quant_fields(input_quantizer, kernel_quantizer, kernel_constraint)
        self.max_len = max_len
        self.tokens = nnx.Embed(vocab_size, hidden, rngs=rngs)
        self.positions = nnx.Embed(max_len, hidden, rngs=rngs)
        self.encoder = nnx.List([EncoderBlock(hidden, intermediate, num_heads, quant=quant,
                                              rngs=rngs) for _ in range(num_layers)])
        self.decoder = nnx.List([DecoderBlock(hidden, intermediate, num_heads, quant=quant,
                                              rngs=rngs) for _ in range(num_layers)])
        self.enc_ln = nnx.LayerNorm(hidden, rngs=rngs)
        self.dec_ln = nnx.LayerNorm(hidden, rngs=rngs)

    def _embed(self, ids):
        return self.tokens(ids) + self.positions(jnp.arange(ids.shape[1]))[None]

    def encode(self, input_ids, attention_mask=None):
        """Encoder states ``[B, S, D]``."""
        check_length("encoder_decoder", input_ids, self.max_len)
        x = self._embed(input_ids)
        mask = None if attention_mask is None else padding_mask(attention_mask)
        for block in self.encoder:
            x = block(x, mask)
        return self.enc_ln(x)

    def decode(self, decoder_input_ids, memory, attention_mask=None):
        """Logits ``[B, T, V]`` of the decoder over encoder states ``memory``."""
        check_length("encoder_decoder", decoder_input_ids, self.max_len)
        y = self._embed(decoder_input_ids)
        self_mask = causal_mask(decoder_input_ids.shape[1])
        cross = None if attention_mask is None else padding_mask(attention_mask)
        for block in self.decoder:
            y = block(y, memory, self_mask, cross)
        return self.tokens.attend(self.dec_ln(y))

    def __call__(self, input_ids, decoder_input_ids, attention_mask=None):
        return self.decode(decoder_input_ids, self.encode(input_ids, attention_mask),
                           attention_mask)

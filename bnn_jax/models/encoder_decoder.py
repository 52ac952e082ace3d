"""A small Transformer encoder-decoder (Vaswani et al. 2017) with pre-LN blocks and a shared
token embedding tied to the output layer (as BART does).

``model(input_ids, decoder_input_ids, attention_mask=None) -> logits [B, T, V]``; the block
linear layers take the quantizers, embeddings and final norms stay in full precision. For
:func:`bnn_jax.generate.generate` it has ``encode``, ``init_cache`` and a cached ``decode``
(decoder self-attention keys/values in fixed slots; cross-attention recomputed from the
encoder states each step).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from bnn_jax.models.transformer import (DecoderBlock, EncoderBlock, causal_mask, check_length,
                                        padding_mask, quant_fields)


class Model(nnx.Module):
    """Encoder-decoder LM over one shared vocabulary."""

    is_encoder_decoder = True

    def __init__(self, *, vocab_size: int, max_len: int, rngs: nnx.Rngs, hidden: int = 64,
                 intermediate: int = 128, num_layers: int = 2, num_heads: int = 4,
                 input_quantizer: Any = None, kernel_quantizer: Any = None,
                 kernel_constraint: Any = None):
        quant = quant_fields(input_quantizer, kernel_quantizer, kernel_constraint)
        self.max_len = max_len
        self.num_heads, self.head_dim = num_heads, hidden // num_heads
        self.tokens = nnx.Embed(vocab_size, hidden, rngs=rngs)
        self.positions = nnx.Embed(max_len, hidden, rngs=rngs)
        self.encoder = nnx.List([EncoderBlock(hidden, intermediate, num_heads, quant=quant,
                                              rngs=rngs) for _ in range(num_layers)])
        self.decoder = nnx.List([DecoderBlock(hidden, intermediate, num_heads, quant=quant,
                                              rngs=rngs) for _ in range(num_layers)])
        self.enc_ln = nnx.LayerNorm(hidden, rngs=rngs)
        self.dec_ln = nnx.LayerNorm(hidden, rngs=rngs)

    def _embed(self, ids, positions=None):
        positions = jnp.arange(ids.shape[1])[None] if positions is None else positions
        return self.tokens(ids) + self.positions(positions)

    def encode(self, input_ids, attention_mask=None):
        """Encoder states ``[B, S, D]``."""
        check_length("encoder_decoder", input_ids, self.max_len)
        x = self._embed(input_ids)
        mask = None if attention_mask is None else padding_mask(attention_mask)
        for block in self.encoder:
            x = block(x, mask)
        return self.enc_ln(x)

    def __call__(self, input_ids, decoder_input_ids, attention_mask=None):
        """Teacher-forced logits ``[B, T, V]``."""
        check_length("encoder_decoder", decoder_input_ids, self.max_len)
        memory = self.encode(input_ids, attention_mask)
        y = self._embed(decoder_input_ids)
        self_mask = causal_mask(decoder_input_ids.shape[1])
        cross = None if attention_mask is None else padding_mask(attention_mask)
        for block in self.decoder:
            y = block(y, memory, self_mask, cross)
        return self.tokens.attend(self.dec_ln(y))

    def init_cache(self, batch_size: int, max_len: int, dtype=jnp.float32) -> list:
        """Empty decoder self-attention K/V slots ``[batch, heads, max_len, head_dim]``."""
        if max_len > self.max_len:
            raise ValueError(f"encoder_decoder: a cache of {max_len} slots is longer than the "
                             f"model's max_len={self.max_len}")
        shape = (batch_size, self.num_heads, max_len, self.head_dim)
        return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
                for _ in self.decoder]

    def decode(self, input_ids, cache, *, index, positions, kv_mask, encoded, encoder_mask):
        """Logits of decoder tokens ``input_ids [B, T]`` written at slots ``[index, index+T)``;
        token ``t`` sees the valid slots (``kv_mask``) up to ``index + t``."""
        t, slots = input_ids.shape[1], cache[0]["k"].shape[2]
        seen = jnp.arange(slots)[None, :] <= (index + jnp.arange(t))[:, None]
        self_mask = (seen[None] & kv_mask[:, None, :])[:, None]
        cross = padding_mask(encoder_mask)
        y = self._embed(input_ids, positions)
        new_cache = []
        for block, c in zip(self.decoder, cache):
            y, c = block(y, encoded, self_mask, cross, c, index)
            new_cache.append(c)
        return self.tokens.attend(self.dec_ln(y)), new_cache

"""BART (Lewis et al., 2020) encoder-decoder with TBT's quantizer placement (Liu et al., 2023).

Module and parameter names follow Hugging Face's ``BartForConditionalGeneration`` (``shared``,
``encoder/layers[i]/self_attn``, ``fc1``, ``fc2``, ``self_attn_layer_norm``,
``final_layer_norm``, ``decoder/layers[i]/encoder_attn``, ``layernorm_embedding``,
``final_logits_bias``) so checkpoints map by name (:mod:`bnn_jax.models.hub`); the attention
projections are ``query``/``key``/``value``/``out``. Learned positions are offset by 2 as in
``BartLearnedPositionalEmbedding``. BART is post-LN; ``pre_norm=True`` with final layer norms
and ``scale_embedding=True`` (token embeddings times ``sqrt(hidden)``) is mBART
(:mod:`bnn_jax.models.mbart`).

``bits="W{w}E{e}A{a}"`` places TBT's quantizers (:func:`bnn_jax.models.transformer.tbt_placement`):
``w``-bit statistics weights in every block linear, ``e``-bit token table, ``a``-bit elastic
(1-2 bits) or min-max (8 bits) activations on the q/k/v/out/fc1 inputs and Q/K/V (signed),
the fc2 input and attention probabilities (unsigned); 32 keeps a part in full precision. The LM
head (tied to the latent table), positions and LayerNorms stay full precision. Encoder and
decoder hidden states (embeddings output, then every layer, the last after the final
LayerNorm as Hugging Face returns them) are sown as ``hidden_states``; ``weights="twn"`` is
TBT's ternary baseline (TWN weights in the block linears).

:meth:`Model.encode` / :meth:`Model.decode` are the encoder-decoder protocol of
:mod:`bnn_jax.generate`: a fixed-size self-attention cache per decoder layer and cross-attention
keys/values computed once from the encoder output. The 8-bit min-max and unsigned 2-bit
quantizers take ranges over the whole tensor, so with them a cached step sees other ranges than
a full forward; 1-bit and signed 2-bit activations quantize element-wise and decode exactly.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bnn_jax.models.transformer import (Attention, QuantEmbed, activation, check_positive_ints,
                                        layer_norm, pretrained_fields, tbt_placement)
from bnn_jax.nn import QuantLinear
from bnn_jax.quant.registry import check

POSITION_OFFSET = 2  # BartLearnedPositionalEmbedding: rows 0-1 are never looked up
# TBT's student layers -> teacher layers of a 6-layer stack (``run_summarization_no_trainer.py``
# ``distill_mappings``, lines 98-104): which teacher layer initializes each student layer.
TBT_LAYER_MAPS = {1: (5,), 2: (0, 5), 3: (0, 2, 5), 4: (0, 2, 3, 5), 5: (0, 1, 3, 4, 5),
                  6: (0, 1, 2, 3, 4, 5)}


def tbt_layer_map(student: int, teacher: int) -> list[int]:
    """The teacher layer each of ``student`` layers starts from (and is distilled to)."""
    if student == teacher:
        return list(range(student))
    check(teacher == 6 and student in TBT_LAYER_MAPS,
          f"TBT maps 1-6 student layers onto a 6-layer teacher; got {student} student and "
          f"{teacher} teacher layers (use a 6-layer teacher or as many layers as it has)")
    return list(TBT_LAYER_MAPS[student])


def tbt_hidden_map(student: int, teacher: int) -> list[int]:
    """Teacher hidden state (0 = embeddings output, ``l+1`` = layer ``l``) per student state,
    as TBT's hidden-state loss pairs them (``run_summarization_no_trainer.py`` l. 716-723)."""
    return [0] + [j + 1 for j in tbt_layer_map(student, teacher)]


class FeedForward(nnx.Module):
    """``fc2(act(fc1(x)))``; fc1's input signed, fc2's input (after the nonlinearity) unsigned."""

    def __init__(self, hidden, ffn, *, act, place, rngs):
        self.act = act
        self.fc1 = QuantLinear(hidden, ffn, input_quantizer=place["signed"],
                               kernel_quantizer=place["kernel"], rngs=rngs)
        self.fc2 = QuantLinear(ffn, hidden, input_quantizer=place["unsigned"],
                               kernel_quantizer=place["kernel"], rngs=rngs)

    def __call__(self, x):
        return self.fc2(activation(self.act)(self.fc1(x)))


def _attention(hidden, heads, place, rngs) -> Attention:
    return Attention(heads, hidden, input_quantizer=place["signed"],
                     kernel_quantizer=place["kernel"], qkv_quantizer=place["signed"],
                     attn_quantizer=place["unsigned"], rngs=rngs)


class EncoderLayer(nnx.Module):
    """Self-attention and feed-forward sublayers, post-LN (BART) or pre-LN (mBART)."""

    def __init__(self, hidden, heads, ffn, *, act, pre_norm, eps, place, rngs):
        self.pre_norm = pre_norm
        self.self_attn = _attention(hidden, heads, place, rngs)
        self.self_attn_layer_norm = layer_norm(hidden, eps, rngs)
        self.mlp = FeedForward(hidden, ffn, act=act, place=place, rngs=rngs)
        self.final_layer_norm = layer_norm(hidden, eps, rngs)

    def sublayer(self, x, norm, fn):
        if self.pre_norm:
            return x + fn(norm(x))
        return norm(x + fn(x))

    def __call__(self, x, mask):
        x = self.sublayer(x, self.self_attn_layer_norm, lambda h: self.self_attn(h, mask=mask))
        return self.sublayer(x, self.final_layer_norm, self.mlp)


class DecoderLayer(EncoderLayer):
    """Causal self-attention, cross-attention on the encoder output, feed-forward."""

    def __init__(self, hidden, heads, ffn, *, act, pre_norm, eps, place, rngs):
        super().__init__(hidden, heads, ffn, act=act, pre_norm=pre_norm, eps=eps, place=place,
                         rngs=rngs)
        self.encoder_attn = _attention(hidden, heads, place, rngs)
        self.encoder_attn_layer_norm = layer_norm(hidden, eps, rngs)

    def __call__(self, x, mask, encoded, encoder_mask, cache=None, index=None, cross_kv=None):
        """Full forward (``cache`` None) or a cached step; returns ``(x, cache)``."""
        def self_attn(h):
            nonlocal cache
            if cache is None:
                return self.self_attn(h, mask=mask)
            out, cache = self.self_attn.step(h, cache, index, mask)
            return out

        def cross(h):
            if cross_kv is None:
                return self.encoder_attn(h, encoded, mask=encoder_mask)
            return self.encoder_attn.cross(h, cross_kv, encoder_mask)

        x = self.sublayer(x, self.self_attn_layer_norm, self_attn)
        x = self.sublayer(x, self.encoder_attn_layer_norm, cross)
        return self.sublayer(x, self.final_layer_norm, self.mlp), cache


class Stack(nnx.Module):
    """Token + learned positions, embedding LayerNorm, the layers, optional final LayerNorm."""

    def __init__(self, layer_cls, num_layers, hidden, heads, ffn, *, max_len, act, pre_norm,
                 final_norm, eps, place, rngs):
        self.embed_positions = nnx.Embed(max_len + POSITION_OFFSET, hidden, rngs=rngs)
        self.layernorm_embedding = layer_norm(hidden, eps, rngs)
        self.layers = nnx.List([layer_cls(hidden, heads, ffn, act=act, pre_norm=pre_norm,
                                          eps=eps, place=place, rngs=rngs)
                                for _ in range(num_layers)])
        self.layer_norm = layer_norm(hidden, eps, rngs) if final_norm else None

    def embed(self, tokens, positions):
        x = self.layernorm_embedding(tokens + self.embed_positions(positions + POSITION_OFFSET))
        self.sow(nnx.Intermediate, "hidden_states", x, capture_noop=True)
        return x

    def finish(self, x):
        return x if self.layer_norm is None else self.layer_norm(x)

    def sow_state(self, x, *, last: bool):
        """Record a layer's output; the last one after the final LayerNorm, as Hugging Face's
        ``hidden_states`` (mBART appends it after ``layer_norm``)."""
        self.sow(nnx.Intermediate, "hidden_states", self.finish(x) if last else x,
                 capture_noop=True)


class Model(nnx.Module):
    """BART: ``model(input_ids, decoder_input_ids, attention_mask=None,
    decoder_attention_mask=None) -> logits [B, T, V]``.

    Defaults are a small BART; BART-base is ``hidden=768, ffn=3072, heads=12,
    encoder_layers=decoder_layers=6, max_len=1024``. ``pretrained``: a local Hugging Face
    directory whose architecture and weights the model takes (the layer counts, when given,
    may be smaller: layers picked by :func:`tbt_layer_map`, TBT's student from its teacher).
    """

    is_encoder_decoder = True
    pre_norm_default = False

    def __init__(self, *, vocab_size: int, max_len: int, rngs: nnx.Rngs, hidden: int = 64,
                 ffn: int = 128, encoder_layers: int | None = None,
                 decoder_layers: int | None = None, encoder_heads: int = 4,
                 decoder_heads: int | None = None, encoder_ffn: int | None = None,
                 decoder_ffn: int | None = None, act: str = "gelu", pre_norm: bool | None = None,
                 scale_embedding: bool | None = None, norm_eps: float = 1e-5,
                 bits: str | None = None, weights: str = "tbt", pretrained: str = ""):
        name = type(self).__module__.rsplit(".", 1)[-1]
        if pretrained:  # the checkpoint's architecture; the layer counts may be smaller
            arch = pretrained_fields(pretrained, name, vocab_size=vocab_size, max_len=max_len,
                                     layers=dict(encoder_layers=encoder_layers,
                                                 decoder_layers=decoder_layers))
            hidden, act = arch.get("hidden", hidden), arch.get("act", act)
            encoder_layers = arch.get("encoder_layers", encoder_layers)
            decoder_layers = arch.get("decoder_layers", decoder_layers)
            encoder_heads = arch.get("encoder_heads", encoder_heads)
            decoder_heads = arch.get("decoder_heads", decoder_heads)
            encoder_ffn = arch.get("encoder_ffn", encoder_ffn)
            decoder_ffn = arch.get("decoder_ffn", decoder_ffn)
            scale_embedding = arch.get("scale_embedding", scale_embedding)
        encoder_layers = 2 if encoder_layers is None else encoder_layers
        decoder_layers = 2 if decoder_layers is None else decoder_layers
        decoder_heads = encoder_heads if decoder_heads is None else decoder_heads
        encoder_ffn = ffn if encoder_ffn is None else encoder_ffn
        decoder_ffn = ffn if decoder_ffn is None else decoder_ffn
        pre_norm = self.pre_norm_default if pre_norm is None else pre_norm
        scale_embedding = self.pre_norm_default if scale_embedding is None else scale_embedding
        check_positive_ints(name, vocab_size=vocab_size, max_len=max_len, hidden=hidden,
                            encoder_layers=encoder_layers, decoder_layers=decoder_layers,
                            encoder_heads=encoder_heads, decoder_heads=decoder_heads,
                            encoder_ffn=encoder_ffn, decoder_ffn=decoder_ffn)
        for heads in (encoder_heads, decoder_heads):
            check(hidden % heads == 0, f"{name}: heads={heads} must divide hidden={hidden}")
        activation(act)
        check(pre_norm in (True, False), f"{name}: pre_norm must be a bool, got {pre_norm!r}")
        place = tbt_placement(bits, weights)
        self.vocab_size, self.max_len, self.hidden, self.bits = vocab_size, max_len, hidden, bits
        self.embed_scale = hidden ** 0.5 if scale_embedding else 1.0
        common = dict(max_len=max_len, act=act, pre_norm=pre_norm, final_norm=pre_norm,
                      eps=norm_eps, place=place, rngs=rngs)
        self.shared = QuantEmbed(vocab_size, hidden, quantizer=place["embed"], rngs=rngs)
        self.encoder = Stack(EncoderLayer, encoder_layers, hidden, encoder_heads, encoder_ffn,
                             **common)
        self.decoder = Stack(DecoderLayer, decoder_layers, hidden, decoder_heads, decoder_ffn,
                             **common)
        self.final_logits_bias = nnx.Param(jnp.zeros((1, vocab_size)))
        if pretrained:
            from bnn_jax.models import hub

            t = hub.checkpoint_layers(pretrained)
            hub.load_student(self, pretrained, layer_map={
                "encoder/layers": tbt_layer_map(encoder_layers, t["encoder"]),
                "decoder/layers": tbt_layer_map(decoder_layers, t["decoder"])})

    def _tokens(self, ids):
        return self.shared(ids) * self.embed_scale

    def _check(self, ids, what):
        check(ids.ndim == 2, f"{what} must be [batch, length], got shape {tuple(ids.shape)}")
        check(ids.shape[1] <= self.max_len, f"{what} of length {ids.shape[1]} is longer than "
                                            f"the model's max_len={self.max_len}")

    def encode(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> dict:
        """Encoder output ``hidden [B, S, D]`` and every decoder layer's cross-attention
        keys/values (``cross``), computed once for decoding."""
        hidden = self.encoder_hidden(input_ids, attention_mask)
        return {"hidden": hidden,
                "cross": [layer.encoder_attn.kv(hidden) for layer in self.decoder.layers]}

    def encoder_hidden(self, input_ids, attention_mask=None):
        """The encoder's output ``[B, S, D]``."""
        self._check(input_ids, "input_ids")
        b, s = input_ids.shape
        mask = self._key_mask(attention_mask, b, s)
        enc = self.encoder
        x = enc.embed(self._tokens(input_ids), jnp.arange(s)[None])
        for i, layer in enumerate(enc.layers):
            x = layer(x, mask)
            enc.sow_state(x, last=i == len(enc.layers) - 1)
        return enc.finish(x)

    @staticmethod
    def _key_mask(attention_mask, b, s):
        if attention_mask is None:
            return None
        return jnp.asarray(attention_mask).astype(bool).reshape(b, 1, 1, s)

    def _logits(self, x):
        return self.shared.attend(x) + self.final_logits_bias[...]

    def __call__(self, input_ids: jax.Array, decoder_input_ids: jax.Array,
                 attention_mask: jax.Array | None = None,
                 decoder_attention_mask: jax.Array | None = None) -> jax.Array:
        """Teacher-forced logits of ``decoder_input_ids`` given the source ``input_ids``."""
        encoded = self.encoder_hidden(input_ids, attention_mask)
        self._check(decoder_input_ids, "decoder_input_ids")
        b, t = decoder_input_ids.shape
        mask = jnp.tril(jnp.ones((t, t), bool))[None, None]
        if decoder_attention_mask is not None:
            mask = mask & self._key_mask(decoder_attention_mask, b, t)
        enc_mask = self._key_mask(attention_mask, b, input_ids.shape[1])
        dec = self.decoder
        x = dec.embed(self._tokens(decoder_input_ids), jnp.arange(t)[None])
        for i, layer in enumerate(dec.layers):
            x, _ = layer(x, mask, encoded, enc_mask)
            dec.sow_state(x, last=i == len(dec.layers) - 1)
        return self._logits(dec.finish(x))

    # -- KV-cache decoding (the encoder-decoder protocol of bnn_jax.generate) -------------------

    def init_cache(self, batch_size: int, max_len: int, dtype: Any = jnp.float32) -> list:
        """Empty self-attention K/V slots ``[batch, heads, max_len, head_dim]`` per layer."""
        check(max_len <= self.max_len, f"a cache of {max_len} slots is longer than the "
                                       f"model's max_len={self.max_len}")
        return [layer.self_attn.init_cache(batch_size, max_len, dtype)
                for layer in self.decoder.layers]

    def decode(self, input_ids: jax.Array, cache: list, *, index: jax.Array,
               positions: jax.Array, kv_mask: jax.Array, encoded: dict,
               encoder_mask: jax.Array | None = None) -> tuple[jax.Array, list]:
        """Logits of decoder tokens ``input_ids [B, T]`` written at slots ``[index, index+T)``;
        token ``t`` attends to the valid slots ``s <= index + t`` and the whole source."""
        check(input_ids.ndim == 2, f"input_ids must be [batch, length], got shape "
                                   f"{tuple(input_ids.shape)}")
        b, t = input_ids.shape
        slots = cache[0]["k"].shape[2]
        query_slot = index + jnp.arange(t)
        mask = ((jnp.arange(slots)[None, :] <= query_slot[:, None])[None]
                & kv_mask.astype(bool)[:, None, :])[:, None]
        enc_mask = (None if encoder_mask is None else
                    self._key_mask(encoder_mask, b, encoder_mask.shape[1]))
        dec = self.decoder
        x = dec.embed(self._tokens(input_ids), positions)
        new_cache = []
        for layer, c, kv in zip(dec.layers, cache, encoded["cross"]):
            x, c = layer(x, mask, None, enc_mask, cache=c, index=index, cross_kv=kv)
            new_cache.append(c)
        return self._logits(dec.finish(x)), new_cache

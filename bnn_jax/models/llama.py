"""A LLaMA-style decoder LM (Touvron et al., 2023) whose linears can carry quantizers.

Pre-norm blocks of RMSNorm -> grouped-query self-attention with rotary position embeddings ->
RMSNorm -> SwiGLU MLP, then a final RMSNorm and the LM head. Module and parameter names follow
Hugging Face's ``LlamaForCausalLM`` (``embed_tokens``, ``layers[i].self_attn.q_proj``,
``mlp.gate_proj``, ``input_layernorm``, ``norm``, ``lm_head``) so checkpoints map by name
(:mod:`bnn_jax.models.hub`); rotary embeddings use its half-split layout (``rotate_half``).

Every linear inside the blocks is a :class:`bnn_jax.nn.QuantLinear` with this model's
``input_quantizer``/``kernel_quantizer``: BitNet b1.58 is ``kernel_quantizer="bitnet_weight"``,
``input_quantizer="bitnet_act"``; the embedding and the LM head stay in full precision, as in
BitNet. ``subln`` adds the normalization BitNet puts inside every BitLinear, in front of the
activation quantizer: ``"rms"`` (parameter-free RMSNorm, BitNet b1.58's SubLN) or ``"layer"``
(LayerNorm without affine, BitNet b1.58 Reloaded's ``bitlinear``); it has no parameters, so
checkpoints load unchanged. Each block's output is sown as ``hidden_states``
(``nnx.Intermediate``) for distillation. :meth:`Model.decode` is the KV-cache step of
:mod:`bnn_jax.generate`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bnn_jax.nn import QuantLinear
from bnn_jax.nn.attention import apply_mask
from bnn_jax.quant.registry import check


SUBLN = ("rms", "layer")

#: ``config.partition_rules`` for fsdp x model parallelism (Megatron-style): Q/K/V, gate and
#: up projections split their outputs over ``model``, O and down projections their inputs, so
#: each block needs one all-reduce per branch; the other dimension, the embedding and the LM
#: head are split over ``fsdp``. Paths also match the optimizer's moments of these parameters
#: and a kernel quantizer's learned arrays (``kernel_alpha1``, ``kernel_salient_mask``).
PARTITION_RULES = (
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj)/kernel", ("fsdp", "model")),
    (r"(o_proj|down_proj)/kernel", ("model", "fsdp")),
    (r"embed_tokens/embedding", ("model", "fsdp")),
    (r"lm_head/kernel", ("fsdp", "model")),
    (r".*", "replicate"),
)


def subln(x: jax.Array, kind: str | None, eps: float) -> jax.Array:
    """Parameter-free normalization over features of a BitLinear input (identity for None)."""
    if kind is None:
        return x
    xf = x.astype(jnp.float32)
    if kind == "layer":
        xf = xf - jnp.mean(xf, axis=-1, keepdims=True)
    return (xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)).astype(x.dtype)


def rotary_angles(positions: jax.Array, head_dim: int, theta: float) -> jax.Array:
    """``pos · θ^(-2i/d)`` for ``i < d/2``, duplicated to ``[..., d]`` (HF's half layout)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.concatenate([freqs, freqs], axis=-1)


def apply_rotary(x: jax.Array, angles: jax.Array) -> jax.Array:
    """Rotate ``x [B, T, heads, d]`` by ``angles [B, T, d]``: ``x·cos + rotate_half(x)·sin``."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]
    return (x * cos + rotated * sin).astype(x.dtype)


class Attention(nnx.Module):
    """Grouped-query self-attention: ``num_kv_heads`` K/V heads shared by groups of Q heads
    (``rope_theta=None``: no rotary embedding, for models with learned positions)."""

    def __init__(self, hidden: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
                 rope_theta: float | None, bias: bool, quant: dict, rngs: nnx.Rngs,
                 subln: str | None = None, eps: float = 1e-6):
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.rope_theta, self.subln, self.eps = rope_theta, subln, eps
        self.q_proj = QuantLinear(hidden, num_heads * head_dim, use_bias=bias, rngs=rngs, **quant)
        self.k_proj = QuantLinear(hidden, num_kv_heads * head_dim, use_bias=bias, rngs=rngs,
                                  **quant)
        self.v_proj = QuantLinear(hidden, num_kv_heads * head_dim, use_bias=bias, rngs=rngs,
                                  **quant)
        self.o_proj = QuantLinear(num_heads * head_dim, hidden, use_bias=bias, rngs=rngs, **quant)

    def __call__(self, x, positions, mask, cache=None, index=None):
        """``x [B, T, D]``, ``mask [B, T, S]`` (True = may attend); with a cache, the new K/V
        are written at slots ``[index, index+T)`` and the queries attend over all S slots."""
        b, t, _ = x.shape
        kv, g, d = self.num_kv_heads, self.num_heads // self.num_kv_heads, self.head_dim
        x = subln(x, self.subln, self.eps)
        q = self.q_proj(x).reshape(b, t, kv * g, d)
        k = self.k_proj(x).reshape(b, t, kv, d)
        if self.rope_theta is not None:
            angles = rotary_angles(positions, d, self.rope_theta)
            q, k = apply_rotary(q, angles), apply_rotary(k, angles)
        v = self.v_proj(x).reshape(b, t, kv, d)
        if cache is not None:
            k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype),
                                             (0, index, 0, 0))
            v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype),
                                             (0, index, 0, 0))
            cache = {"k": k, "v": v}
        q = q.reshape(b, t, kv, g, d)
        scores = jnp.einsum("btkgd,bskd->bkgts", q, k) * d ** -0.5
        scores = apply_mask(scores.astype(jnp.float32), mask[:, None, None])
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, kv * g * d)
        return self.o_proj(subln(out, self.subln, self.eps)), cache


class MLP(nnx.Module):
    """SwiGLU: ``down(silu(gate(x)) · up(x))`` (Shazeer, 2020)."""

    def __init__(self, hidden: int, intermediate: int, *, bias: bool, quant: dict,
                 rngs: nnx.Rngs, subln: str | None = None, eps: float = 1e-6):
        self.subln, self.eps = subln, eps
        self.gate_proj = QuantLinear(hidden, intermediate, use_bias=bias, rngs=rngs, **quant)
        self.up_proj = QuantLinear(hidden, intermediate, use_bias=bias, rngs=rngs, **quant)
        self.down_proj = QuantLinear(intermediate, hidden, use_bias=bias, rngs=rngs, **quant)

    def __call__(self, x):
        x = subln(x, self.subln, self.eps)
        h = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
        return self.down_proj(subln(h, self.subln, self.eps))


class Block(nnx.Module):
    """Pre-norm decoder block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, hidden, intermediate, num_heads, num_kv_heads, head_dim, *, rope_theta,
                 norm_eps, attention_bias, mlp_bias, quant, rngs, subln=None):
        self.input_layernorm = nnx.RMSNorm(hidden, epsilon=norm_eps, rngs=rngs)
        self.self_attn = Attention(hidden, num_heads, num_kv_heads, head_dim,
                                   rope_theta=rope_theta, bias=attention_bias, quant=quant,
                                   rngs=rngs, subln=subln, eps=norm_eps)
        self.post_attention_layernorm = nnx.RMSNorm(hidden, epsilon=norm_eps, rngs=rngs)
        self.mlp = MLP(hidden, intermediate, bias=mlp_bias, quant=quant, rngs=rngs,
                       subln=subln, eps=norm_eps)

    def __call__(self, x, positions, mask, cache=None, index=None):
        h, cache = self.self_attn(self.input_layernorm(x), positions, mask, cache, index)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, cache


class Model(nnx.Module):
    """LLaMA-style decoder: ``model(input_ids, positions=None, segment_ids=None) -> logits``.

    ``num_kv_heads`` < ``num_heads`` is grouped-query attention (it must divide
    ``num_heads``); ``head_dim`` defaults to ``hidden // num_heads``. ``tie_embeddings`` reuses
    the embedding as the LM head.
    """

    def __init__(self, *, vocab_size: int, max_len: int, rngs: nnx.Rngs, hidden: int = 128,
                 intermediate: int = 344, num_layers: int = 2, num_heads: int = 4,
                 num_kv_heads: int | None = None, head_dim: int | None = None,
                 rope_theta: float = 10000.0, norm_eps: float = 1e-6,
                 tie_embeddings: bool = False, attention_bias: bool = False,
                 mlp_bias: bool = False, subln: str | None = None,
                 input_quantizer: Any = None, kernel_quantizer: Any = None,
                 kernel_constraint: Any = None):
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        for name, v in (("vocab_size", vocab_size), ("max_len", max_len), ("hidden", hidden),
                        ("intermediate", intermediate), ("num_layers", num_layers),
                        ("num_heads", num_heads), ("num_kv_heads", num_kv_heads)):
            check(isinstance(v, int) and not isinstance(v, bool) and v > 0,
                  f"llama: {name} must be a positive integer, got {v!r}")
        check(num_heads % num_kv_heads == 0,
              f"llama: num_kv_heads={num_kv_heads} must divide num_heads={num_heads}")
        if head_dim is None:
            check(hidden % num_heads == 0,
                  f"llama: num_heads={num_heads} must divide hidden={hidden} (or give head_dim)")
            head_dim = hidden // num_heads
        check(head_dim % 2 == 0, f"llama: head_dim must be even (rotary pairs), got {head_dim}")
        check(subln is None or subln in SUBLN,
              f"llama: subln must be None or one of {list(SUBLN)}, got {subln!r}")
        self.vocab_size, self.max_len, self.hidden = vocab_size, max_len, hidden
        self.num_layers, self.num_kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        self.tie_embeddings = tie_embeddings
        quant = dict(input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer,
                     kernel_constraint=kernel_constraint)
        self.embed_tokens = nnx.Embed(vocab_size, hidden, rngs=rngs)
        self.layers = nnx.List([
            Block(hidden, intermediate, num_heads, num_kv_heads, head_dim, rope_theta=rope_theta,
                  norm_eps=norm_eps, attention_bias=attention_bias, mlp_bias=mlp_bias,
                  quant=quant, rngs=rngs, subln=subln) for _ in range(num_layers)])
        self.norm = nnx.RMSNorm(hidden, epsilon=norm_eps, rngs=rngs)
        self.lm_head = (None if tie_embeddings else
                        nnx.Linear(hidden, vocab_size, use_bias=False, rngs=rngs))

    def _embed(self, input_ids, positions):
        del positions  # rotary: positions enter in the attention
        return self.embed_tokens(input_ids)

    def _logits(self, x):
        x = self.norm(x)
        return self.embed_tokens.attend(x) if self.tie_embeddings else self.lm_head(x)

    def _check_ids(self, input_ids, what="input_ids"):
        check(input_ids.ndim == 2, f"llama: {what} must be [batch, length], got shape "
                                   f"{tuple(input_ids.shape)}")

    def __call__(self, input_ids: jax.Array, positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None) -> jax.Array:
        """Logits ``[B, L, V]``; causal attention, within a segment when ``segment_ids`` given."""
        self._check_ids(input_ids)
        b, length = input_ids.shape
        check(length <= self.max_len, f"llama: sequence of length {length} is longer than the "
                                      f"model's max_len={self.max_len}")
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length), (b, length))
        mask = jnp.tril(jnp.ones((length, length), bool))[None]
        if segment_ids is not None:
            mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
        x = self._embed(input_ids, positions)
        for layer in self.layers:
            x, _ = layer(x, positions, mask)
            self.sow(nnx.Intermediate, "hidden_states", x, capture_noop=True)
        return self._logits(x)

    # -- KV-cache decoding (the protocol of bnn_jax.generate) ---------------------------------

    def init_cache(self, batch_size: int, max_len: int, dtype: Any = jnp.float32) -> list:
        """Empty K/V slots ``[batch, max_len, kv_heads, head_dim]`` per layer."""
        check(max_len <= self.max_len, f"llama: a cache of {max_len} slots is longer than the "
                                       f"model's max_len={self.max_len}")
        shape = (batch_size, max_len, self.num_kv_heads, self.head_dim)
        return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
                for _ in range(self.num_layers)]

    def decode(self, input_ids: jax.Array, cache: list, *, index: jax.Array,
               positions: jax.Array, kv_mask: jax.Array) -> tuple[jax.Array, list]:
        """Logits of ``input_ids [B, T]`` written at cache slots ``[index, index+T)``.

        ``kv_mask [B, S]`` marks the slots holding real tokens (these T included); token ``t``
        attends to valid slots ``s ≤ index + t``.
        """
        self._check_ids(input_ids)
        t, slots = input_ids.shape[1], cache[0]["k"].shape[1]
        query_slot = index + jnp.arange(t)
        mask = (jnp.arange(slots)[None, :] <= query_slot[:, None])[None] & kv_mask[:, None, :]
        x = self._embed(input_ids, positions)
        new_cache = []
        for layer, c in zip(self.layers, cache):
            x, c = layer(x, positions, mask, c, index)
            new_cache.append(c)
        return self._logits(x), new_cache

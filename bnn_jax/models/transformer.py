"""Transformer blocks shared by the text models.

Pre-LayerNorm blocks (Vaswani et al. 2017; pre-LN as in GPT-2/T5) of the small task models:
:class:`EncoderBlock` (self-attention + MLP) and :class:`DecoderBlock` (causal self-attention,
cross-attention, MLP) compose :class:`bnn_jax.nn.MultiHeadAttention` and
:class:`bnn_jax.nn.QuantLinear`, so every projection takes the model's quantizers. Each block
sows its output as ``hidden`` (``nnx.Intermediate``) for hidden-state distillation; the
attention layers sow their real-valued ``q``, ``k``, ``v`` (BiBERT's DMD).

Pieces of the encoder (BERT) and encoder-decoder (BART, mBART) language models:

* :class:`QuantEmbed` — a token-embedding table whose rows can carry a weight quantizer (TBT's
  ``QuantizeEmbedding``, BiBERT's and BiPFT's binarized word embeddings); ``attend`` is the tied
  output projection and always reads the latent full-precision table.
* :class:`Attention` — softmax multi-head attention (:class:`bnn_jax.nn.MultiHeadAttention`)
  with the query scaled by ``d^-1/2`` *before* its quantizer, as TBT's ``modeling_bart_quant.py``
  (line 250, ``q_proj(x) * scaling``, quantized at line 289), plus a fixed-size KV cache for
  decoding and precomputed cross-attention keys/values.
* :func:`tbt_placement` — TBT's quantizer placement from a ``"W{w}E{e}A{a}"`` bit setting.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bnn_jax.nn import QuantLinear
from bnn_jax.nn.attention import MultiHeadAttention, apply_mask, merge_heads, split_heads
from bnn_jax.nn.layers import as_quantizer
from bnn_jax.quant.registry import check

ACTIVATIONS = {"gelu": lambda x: jax.nn.gelu(x, approximate=False), "relu": jax.nn.relu,
               "gelu_new": lambda x: jax.nn.gelu(x, approximate=True)}
FULL = 32  # the bit width that means "full precision" in a bit setting


def activation(name: str):
    """The feed-forward nonlinearity named as Hugging Face configs name it."""
    check(name in ACTIVATIONS, f"unknown activation {name!r}; valid: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def parse_bits(bits: str | None) -> tuple[int, int, int] | None:
    """``"W2E2A8"`` -> ``(2, 2, 8)``; None (or ``"W32E32A32"``) is full precision."""
    if bits is None:
        return None
    m = re.fullmatch(r"W(\d+)E(\d+)A(\d+)", str(bits))
    check(m is not None, f"bits must look like 'W2E2A8' (weights, embedding, activations) or "
                         f"be None, got {bits!r}")
    w, e, a = map(int, m.groups())
    check(w in (1, 2, FULL) and e in (1, 2, FULL) and a in (1, 2, 8, FULL),
          f"bits={bits!r}: weights and embedding take 1, 2 or {FULL} bits, activations "
          f"1, 2, 8 or {FULL}")
    return w, e, a


WEIGHT_RULES = ("tbt", "twn")


def tbt_placement(bits: str | None, weights: str = "tbt") -> dict[str, Any]:
    """TBT's quantizers by role (``modeling_bart_quant.py``, ``utils_quant.py``).

    ``kernel``: every linear of the blocks (statistics weights, per output row); ``embed``:
    the token table (per row); ``signed``: inputs of q/k/v/out/fc1 and the Q, K, V states
    (``sym_quant_qkvo``); ``unsigned``: the fc2 input and the attention probabilities
    (``sym_quant_ffn_attn = False``). A8 is the min-max quantizer (symmetric for signed,
    asymmetric for unsigned). The LM head, positions and LayerNorms stay full precision.
    ``weights="twn"`` (TBT's ternary baseline, 2-bit weights only) puts Ternary Weight
    Networks' rule, per output row, on the block linears; the token table keeps TBT's rule.
    """
    from bnn_jax.quant.registry import check_choice

    check_choice("weights", weights, WEIGHT_RULES)
    parsed = parse_bits(bits)
    none = dict(kernel=None, embed=None, signed=None, unsigned=None)
    if parsed is None:
        return none
    w, e, a = parsed
    out = dict(none)
    if w != FULL:
        out["kernel"] = dict(name="tbt_weight", bits=w)
    if weights == "twn":
        check(w == 2, f"weights='twn' is a ternary baseline: it needs 2-bit weights, got "
                      f"bits={bits!r}")
        out["kernel"] = dict(name="twn", per_channel=True)
    if e != FULL:
        out["embed"] = dict(name="tbt_weight", bits=e, channel_axis=0)
    if a in (1, 2):
        out["signed"] = dict(name="tbt_act", bits=a, signed=True)
        out["unsigned"] = dict(name="tbt_act", bits=a, signed=False)
    elif a == 8:
        out["signed"] = dict(name="tbt_act8", symmetric=True)
        out["unsigned"] = dict(name="tbt_act8", symmetric=False)
    return out


class QuantEmbed(nnx.Module):
    """Token embedding ``table[ids]`` with an optional weight quantizer on the table."""

    def __init__(self, num_embeddings: int, features: int, *, quantizer: Any = None,
                 rngs: nnx.Rngs, init_std: float = 0.02):
        self.num_embeddings, self.features = num_embeddings, features
        self.embedding = nnx.Param(
            init_std * jax.random.normal(rngs.params(), (num_embeddings, features)))
        self.quantizer = as_quantizer(quantizer, role="embedding quantizer")
        q = self.quantizer
        check(q is None or not q.learned,
              f"embedding quantizer {getattr(q, 'name', q)!r} has learned arrays "
              f"{list(getattr(q, 'learned', ()))}; only statistics quantizers are supported")

    def table(self) -> jax.Array:
        """The table as lookups see it (quantized when a quantizer is set)."""
        t = self.embedding[...]
        return t if self.quantizer is None else self.quantizer(t)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.table(), ids, axis=0)

    def attend(self, x: jax.Array) -> jax.Array:
        """``x @ tableᵀ`` with the latent (full-precision) table: a tied LM head."""
        return jnp.einsum("...d,vd->...v", x, self.embedding[...])


class Attention(MultiHeadAttention):
    """Softmax attention, query scaled before its quantizer; probabilities (before their
    quantizer) sown as ``attention``. ``step`` / ``cross`` are the cached decoding paths."""

    def attend(self, q, k, v, *, mask=None, inputs=None) -> jax.Array:
        q = self.q_quant(q * self.head_dim ** -0.5)
        k, v = self.k_quant(k), self.v_quant(v)
        scores = apply_mask(jnp.einsum("bhqd,bhkd->bhqk", q, k), mask)
        probs = jax.nn.softmax(scores, axis=-1)
        # Sown before its quantizer: TBT's attention-map loss reads these (Hugging Face's
        # output_attentions, modeling_bart_quant.py l. 308-330).
        self.sow(nnx.Intermediate, "attention", probs, capture_noop=True)
        return jnp.einsum("bhqk,bhkd->bhqd", self.attn_quant(probs), v)

    def kv(self, inputs_kv: jax.Array) -> dict[str, jax.Array]:
        """Keys and values ``[B, H, S, d]`` of ``inputs_kv`` (cross-attention, computed once)."""
        return {"k": split_heads(self.key(inputs_kv), self.num_heads),
                "v": split_heads(self.value(inputs_kv), self.num_heads)}

    def init_cache(self, batch_size: int, slots: int, dtype: Any = jnp.float32) -> dict:
        shape = (batch_size, self.num_heads, slots, self.head_dim)
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}

    def step(self, x, cache, index, mask):
        """Self-attention of ``x [B, T, D]`` written at cache slots ``[index, index+T)``;
        ``mask [B, 1, T, S]`` over all slots."""
        new = self.kv(x)
        cache = {n: jax.lax.dynamic_update_slice(cache[n], new[n].astype(cache[n].dtype),
                                                 (0, 0, index, 0)) for n in ("k", "v")}
        q = split_heads(self.query(x), self.num_heads)
        return self.out(merge_heads(self.attend(q, cache["k"], cache["v"], mask=mask))), cache

    def cross(self, x, kv, mask):
        """Attention of ``x`` over precomputed keys/values ``kv`` (from :meth:`kv`)."""
        q = split_heads(self.query(x), self.num_heads)
        return self.out(merge_heads(self.attend(q, kv["k"], kv["v"], mask=mask)))


def pretrained_fields(directory: str, model: str, *, vocab_size: int, max_len: int,
                      layers: dict[str, int | None]) -> dict[str, Any]:
    """The architecture of a checkpoint a student starts from: its ``config.json`` fields,
    the student's own layer counts where given (``layers``; None takes the checkpoint's).
    The data's vocabulary must be the checkpoint's, its length at most the checkpoint's."""
    from bnn_jax.models import hub

    ck = hub.model_fields(hub.read_config(directory))
    check(ck.get("vocab_size") == vocab_size,
          f"{model}: pretrained={directory!r} has a vocabulary of {ck.get('vocab_size')} "
          f"tokens, the data {vocab_size}; use the checkpoint's tokenizer (data.tokenizer)")
    check(max_len <= ck.get("max_len", max_len),
          f"{model}: the data's sequences of {max_len} tokens are longer than the "
          f"{ck.get('max_len')} positions of pretrained={directory!r}")
    out = {k: v for k, v in ck.items() if k not in ("vocab_size", "max_len", "head",
                                                      "num_labels")}
    out.update({k: v for k, v in layers.items() if v is not None})
    return out


def layer_norm(features: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm over features with scale and bias (always full precision)."""
    return nnx.LayerNorm(features, epsilon=eps, rngs=rngs)


def check_positive_ints(model: str, **values) -> None:
    """A clear error for any value that is not a positive integer."""
    for name, v in values.items():
        check(isinstance(v, int) and not isinstance(v, bool) and v > 0,
              f"{model}: {name} must be a positive integer, got {v!r}")


class MLP(nnx.Module):
    """``fc2(act(fc1(x)))`` with quantized layers (``act`` default: tanh-approximated GELU);
    ``fc2_input_quantizer`` (if given) replaces the input quantizer of ``fc2`` alone, e.g. an
    unsigned quantizer after the GELU."""

    def __init__(self, hidden: int, intermediate: int, *, quant: dict, rngs: nnx.Rngs,
                 act: Any = jax.nn.gelu, fc2_input_quantizer: Any = None):
        self.fc1 = QuantLinear(hidden, intermediate, **quant, rngs=rngs)
        fc2 = quant if fc2_input_quantizer is None else {
            **quant, "input_quantizer": fc2_input_quantizer}
        self.fc2 = QuantLinear(intermediate, hidden, **fc2, rngs=rngs)
        self.act = act

    def __call__(self, x):
        return self.fc2(self.act(self.fc1(x)))


class EncoderBlock(nnx.Module):
    """``x + attn(ln(x))`` then ``x + mlp(ln(x))``.

    ``attention`` builds the attention layer as ``attention(num_heads, hidden, rngs=rngs)``
    (default: :class:`bnn_jax.nn.MultiHeadAttention` with the block's quantizers); ``mlp``
    holds extra :class:`MLP` arguments (``act``, ``fc2_input_quantizer``).
    """

    def __init__(self, hidden: int, intermediate: int, num_heads: int, *, quant: dict,
                 rngs: nnx.Rngs, attention: Any = None, norm_eps: float = 1e-6,
                 mlp: dict | None = None):
        self.ln1 = nnx.LayerNorm(hidden, epsilon=norm_eps, rngs=rngs)
        if attention is None:
            self.attn = MultiHeadAttention(num_heads, hidden, **quant, rngs=rngs)
        else:
            self.attn = attention(num_heads, hidden, rngs=rngs)
        self.ln2 = nnx.LayerNorm(hidden, epsilon=norm_eps, rngs=rngs)
        self.mlp = MLP(hidden, intermediate, quant=quant, rngs=rngs, **(mlp or {}))

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

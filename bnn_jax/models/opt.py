"""OPT (Zhang et al., 2022): a pre-LayerNorm decoder with learned positions and a ReLU MLP.

The decoder of Hugging Face's ``OPTForCausalLM`` with ``do_layer_norm_before=True`` (every
size but 350M): token embedding plus a learned position embedding whose row ``p + 2`` holds
position ``p`` (OPT keeps the offset of 2 from fairseq), blocks of LayerNorm -> multi-head
self-attention (biased projections) -> residual, LayerNorm -> ``fc2(relu(fc1(x)))`` ->
residual, a final LayerNorm and the LM head tied to the token embedding. The attention is
:class:`bnn_jax.models.llama.Attention` without rotary embedding, and the model reuses the
forward pass and KV-cache decoding of :class:`bnn_jax.models.llama.Model`; parameter names
follow Hugging Face's (``self_attn_layer_norm``, ``fc1``, ``final_layer_norm``), with the
attention's ``out_proj`` as ``o_proj``. Block linears carry this model's quantizers.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from bnn_jax.models import llama
from bnn_jax.nn import QuantLinear
from bnn_jax.quant.registry import check

#: OPT's position embedding stores position p at row p + 2.
POSITION_OFFSET = 2


class Block(nnx.Module):
    """Pre-LN block: ``x + attn(ln(x))``, then ``x + fc2(relu(fc1(ln(x))))``."""

    def __init__(self, hidden: int, ffn: int, num_heads: int, *, eps: float, bias: bool,
                 quant: dict, rngs: nnx.Rngs, subln: str | None = None):
        self.self_attn_layer_norm = nnx.LayerNorm(hidden, epsilon=eps, rngs=rngs)
        self.self_attn = llama.Attention(hidden, num_heads, num_heads, hidden // num_heads,
                                         rope_theta=None, bias=bias, quant=quant, rngs=rngs,
                                         subln=subln, eps=eps)
        self.final_layer_norm = nnx.LayerNorm(hidden, epsilon=eps, rngs=rngs)
        self.fc1 = QuantLinear(hidden, ffn, use_bias=bias, rngs=rngs, **quant)
        self.fc2 = QuantLinear(ffn, hidden, use_bias=bias, rngs=rngs, **quant)
        self.subln, self.eps = subln, eps

    def __call__(self, x, positions, mask, cache=None, index=None):
        h, cache = self.self_attn(self.self_attn_layer_norm(x), positions, mask, cache, index)
        x = x + h
        h = self.fc1(llama.subln(self.final_layer_norm(x), self.subln, self.eps))
        h = jax.nn.relu(h)
        return x + self.fc2(llama.subln(h, self.subln, self.eps)), cache


class Model(llama.Model):
    """OPT decoder: ``model(input_ids, positions=None, segment_ids=None) -> logits``."""

    def __init__(self, *, vocab_size: int, max_len: int, rngs: nnx.Rngs, hidden: int = 128,
                 ffn: int = 512, num_layers: int = 2, num_heads: int = 4, norm_eps: float = 1e-5,
                 bias: bool = True, subln: str | None = None, input_quantizer: Any = None,
                 kernel_quantizer: Any = None, kernel_constraint: Any = None):
        for name, v in (("vocab_size", vocab_size), ("max_len", max_len), ("hidden", hidden),
                        ("ffn", ffn), ("num_layers", num_layers), ("num_heads", num_heads)):
            check(isinstance(v, int) and not isinstance(v, bool) and v > 0,
                  f"opt: {name} must be a positive integer, got {v!r}")
        check(hidden % num_heads == 0,
              f"opt: num_heads={num_heads} must divide hidden={hidden}")
        check(subln is None or subln in llama.SUBLN,
              f"opt: subln must be None or one of {list(llama.SUBLN)}, got {subln!r}")
        self.vocab_size, self.max_len, self.hidden = vocab_size, max_len, hidden
        self.num_layers, self.num_kv_heads = num_layers, num_heads
        self.head_dim = hidden // num_heads
        self.tie_embeddings = True
        quant = dict(input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer,
                     kernel_constraint=kernel_constraint)
        self.embed_tokens = nnx.Embed(vocab_size, hidden, rngs=rngs)
        self.embed_positions = nnx.Embed(max_len + POSITION_OFFSET, hidden, rngs=rngs)
        self.layers = nnx.List([Block(hidden, ffn, num_heads, eps=norm_eps, bias=bias,
                                      quant=quant, rngs=rngs, subln=subln)
                                for _ in range(num_layers)])
        self.norm = nnx.LayerNorm(hidden, epsilon=norm_eps, rngs=rngs)
        self.lm_head = None

    def _embed(self, input_ids, positions):
        return self.embed_tokens(input_ids) + self.embed_positions(positions + POSITION_OFFSET)

"""Multi-head attention for binary/low-bit transformers: one skeleton, one variant per method.

:class:`MultiHeadAttention` is the skeleton: quantized Q/K/V/O projections (:class:`QuantLinear`
named ``query``, ``key``, ``value``, ``out``, so :func:`bnn_jax.nn.quantize` rules can address
them), the head split ``[B, N, H·d] -> [B, H, N, d]`` and the output merge. Its ``attend`` is
softmax attention with optional quantizers on Q, K, V and on the probabilities. The variants
override ``attend`` (or ``context``) with the pure functions of :mod:`bnn_jax.quant`:

* :class:`BiAttention` — BiBERT's Bi-Attention (``bool`` of binary scores, no softmax);
* :class:`SABAttention` — BiViT's softmax-aware binarization;
* :class:`BiPFTAttention` — BiPFT's elastic binarizers and low-rank residual estimators;
* :class:`QKReparamAttention` — OFQ's query-key reparameterization.

Masks: boolean "may attend" arrays broadcastable to ``[B, H, N, M]`` (True = keep) or additive
float masks. Attention dropout is left to the caller.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bnn_jax.nn.activations import Quantize
from bnn_jax.nn.layers import QuantLinear
from bnn_jax.quant.bibert import bi_attention
from bnn_jax.quant.bipft import ESTIMATORS, bipft_attention, bipft_attention_init, init_estimators
from bnn_jax.quant.bivit import sab_binarize
from bnn_jax.quant.ofq import qk_reparam, qk_reparam_logits
from bnn_jax.quant.registry import check, check_choice

__all__ = ["BiAttention", "BiPFTAttention", "MultiHeadAttention", "QKReparamAttention",
           "SABAttention", "apply_mask", "merge_heads", "split_heads"]


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
    """``[B, N, H·d] -> [B, H, N, d]``."""
    b, n, f = x.shape
    return x.reshape(b, n, num_heads, f // num_heads).transpose(0, 2, 1, 3)


def merge_heads(x: jax.Array) -> jax.Array:
    """``[B, H, N, d] -> [B, N, H·d]``."""
    b, h, n, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, n, h * d)


def apply_mask(scores: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Boolean mask: masked scores become the dtype's minimum (softmax gives exactly 0 there);
    float mask: added to the scores."""
    if mask is None:
        return scores
    mask = jnp.asarray(mask)
    if mask.dtype == jnp.bool_:
        return jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    return scores + mask


class MultiHeadAttention(nnx.Module):
    """Multi-head (self or cross) attention with quantized projections and optional quantizers
    on Q, K, V (``qkv_quantizer``) and on the attention probabilities (``attn_quantizer``).

    ``input_quantizer``/``kernel_quantizer``/``kernel_constraint`` apply to all four
    projections; re-target single ones with :func:`bnn_jax.nn.quantize`. Under
    ``nnx.capture(model, nnx.Intermediate)`` the real-valued Q, K, V ``[B, H, N, d]`` (and the
    variants' binary attention) are recorded as ``q``, ``k``, ``v`` (``attention``) for
    distillation losses such as BiBERT's DMD; outside ``nnx.capture`` nothing is stored.
    """

    def __init__(self, num_heads: int, in_features: int, qkv_features: int | None = None,
                 out_features: int | None = None, *, input_quantizer: Any = None,
                 kernel_quantizer: Any = None, kernel_constraint: Any = None,
                 qkv_quantizer: Any = None, attn_quantizer: Any = None, use_bias: bool = True,
                 rngs: nnx.Rngs):
        qkv_features = in_features if qkv_features is None else qkv_features
        out_features = in_features if out_features is None else out_features
        check(isinstance(num_heads, int) and num_heads >= 1 and qkv_features % num_heads == 0,
              f"num_heads must divide qkv_features={qkv_features}, got {num_heads!r}")
        self.num_heads, self.head_dim = num_heads, qkv_features // num_heads
        self.in_features, self.qkv_features, self.out_features = (in_features, qkv_features,
                                                                  out_features)
        proj = dict(input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer,
                    kernel_constraint=kernel_constraint, use_bias=use_bias, rngs=rngs)
        self.query = QuantLinear(in_features, qkv_features, **proj)
        self.key = QuantLinear(in_features, qkv_features, **proj)
        self.value = QuantLinear(in_features, qkv_features, **proj)
        self.out = QuantLinear(qkv_features, out_features, **proj)
        self.q_quant = Quantize(qkv_quantizer)
        self.k_quant = Quantize(qkv_quantizer)
        self.v_quant = Quantize(qkv_quantizer)
        self.attn_quant = Quantize(attn_quantizer)

    def project(self, inputs_q: jax.Array, inputs_kv: jax.Array):
        """Real-valued Q, K, V in ``[B, H, N, d]``."""
        q = split_heads(self.query(inputs_q), self.num_heads)
        k = split_heads(self.key(inputs_kv), self.num_heads)
        v = split_heads(self.value(inputs_kv), self.num_heads)
        for name, t in (("q", q), ("k", k), ("v", v)):
            self.sow(nnx.Intermediate, name, t, capture_noop=True)
        return q, k, v

    def attend(self, q, k, v, *, mask=None, inputs=None) -> jax.Array:
        """Softmax attention ``P·V``, ``P = softmax(Q Kᵀ/√d + mask)``, with the optional
        quantizers applied to Q, K, V and P."""
        q, k, v = self.q_quant(q), self.k_quant(k), self.v_quant(v)
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k) * self.head_dim ** -0.5
        probs = self.attn_quant(jax.nn.softmax(apply_mask(scores, mask), axis=-1))
        return jnp.einsum("bhqk,bhkd->bhqd", probs, v)

    def context(self, inputs_q, inputs_kv, mask) -> jax.Array:
        """Per-head context ``[B, H, N, d]`` before the output projection."""
        q, k, v = self.project(inputs_q, inputs_kv)
        return self.attend(q, k, v, mask=mask, inputs=inputs_q)

    def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array | None = None, *,
                 mask: jax.Array | None = None) -> jax.Array:
        """Attention of ``inputs_q [B, N, D]`` over ``inputs_kv`` (default: itself)."""
        inputs_kv = inputs_q if inputs_kv is None else inputs_kv
        return self.out(merge_heads(self.context(inputs_q, inputs_kv, mask)))


class BiAttention(MultiHeadAttention):
    """BiBERT's Bi-Attention (Qin et al., ICLR 2022): ``bool(sign Q·sign Kᵀ/√d + mask)·sign V``.

    Projections default to BiBERT's (``bibert_weight`` kernels, ``bibert_act`` inputs).
    ``bool_rule="code"`` maps a score of exactly 0 to 0 as the released code does; ``"paper"``
    maps it to 1. Boolean masks become BERT's additive −10000 (see
    :func:`bnn_jax.quant.bi_attention`).
    """

    def __init__(self, num_heads: int, in_features: int, qkv_features: int | None = None,
                 out_features: int | None = None, *, bool_rule: str = "code",
                 input_quantizer: Any = "bibert_act", kernel_quantizer: Any = "bibert_weight",
                 **kwargs):
        check_choice("bool_rule", bool_rule, ("code", "paper"))
        super().__init__(num_heads, in_features, qkv_features, out_features,
                         input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer,
                         **kwargs)
        self.bool_rule = bool_rule

    def attend(self, q, k, v, *, mask=None, inputs=None) -> jax.Array:
        """Binary attention {0, 1} times sign(V); no softmax."""
        context, attention = bi_attention(q, k, v, mask, bool_rule=self.bool_rule)
        self.sow(nnx.Intermediate, "attention", attention, capture_noop=True)
        return context


class SABAttention(MultiHeadAttention):
    """BiViT's softmax-aware binarization (He et al., ICCV 2023).

    ``A = 1[P ≥ ratio·max_j P]`` with ``P = softmax(sign Q·sign Kᵀ·d^-½ + mask)``; the
    gradient is the exact softmax Jacobian. Context ``A·sign V`` (no rescaling). Q, K, V and
    the projection inputs use ``bnn_ste`` with the exclusive boundary; kernels ``bivit_weight``
    (learned per-channel scale).
    """

    def __init__(self, num_heads: int, in_features: int, qkv_features: int | None = None,
                 out_features: int | None = None, *, ratio: float = 0.25,
                 input_quantizer: Any = dict(name="bnn_ste", boundary="exclusive"),
                 kernel_quantizer: Any = "bivit_weight",
                 qkv_quantizer: Any = dict(name="bnn_ste", boundary="exclusive"),
                 binarize_attention: bool = True, **kwargs):
        check(isinstance(ratio, (int, float)) and 0 < ratio <= 1,
              f"ratio must be a number in (0, 1], got {ratio!r}")
        check_choice("binarize_attention", binarize_attention, (True, False))
        super().__init__(num_heads, in_features, qkv_features, out_features,
                         input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer,
                         qkv_quantizer=qkv_quantizer, **kwargs)
        self.ratio = ratio
        self.binarize_attention = binarize_attention

    def attend(self, q, k, v, *, mask=None, inputs=None) -> jax.Array:
        """Thresholded-softmax attention {0, 1} times the quantized V (``binarize_attention=
        False``: the softmax probabilities, for a full-precision stage)."""
        q, k, v = self.q_quant(q), self.k_quant(k), self.v_quant(v)
        scores = apply_mask(jnp.einsum("bhqd,bhkd->bhqk", q, k) * self.head_dim ** -0.5, mask)
        if not self.binarize_attention:
            return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(scores, axis=-1), v)
        attention = sab_binarize(scores, ratio=self.ratio)
        self.sow(nnx.Intermediate, "attention", attention, capture_noop=True)
        return jnp.einsum("bhqk,bhkd->bhqd", attention, v)


class BiPFTAttention(MultiHeadAttention):
    """BiPFT's binary self-attention (Xing et al., AAAI 2024).

    Elastic binarizers of Q, K, V (``q_alpha``, ``k_alpha``, ``v_alpha``) and of the softmax
    probabilities (``attn_alpha``), all learned and set by the reference's first-call rule;
    with ``estimators=True`` (the pretraining code) the rank-1 residual estimators ``q_p``,
    ``k_p``, ``q_m``, ``k_m``, ``v_p`` (``Linear(in_features, 1)`` on the layer input) add to
    the scores and the context. The released fine-tuning config has them off
    (``estimators=False``). Projections default to ``bipft_weight`` / ``bipft_act``.
    """

    def __init__(self, num_heads: int, in_features: int, qkv_features: int | None = None,
                 out_features: int | None = None, *, estimators: bool = True,
                 input_quantizer: Any = "bipft_act", kernel_quantizer: Any = "bipft_weight",
                 rngs: nnx.Rngs, **kwargs):
        check_choice("estimators", estimators, (True, False))
        super().__init__(num_heads, in_features, qkv_features, out_features,
                         input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer,
                         rngs=rngs, **kwargs)
        self.use_estimators = estimators
        if estimators:
            for name, p in init_estimators(rngs.params(), in_features).items():
                setattr(self, f"{name}_kernel", nnx.Param(p["kernel"]))
                setattr(self, f"{name}_bias", nnx.Param(p["bias"]))

    def learned_pending(self) -> bool:
        """True until the first call has set the elastic binarizers' alphas."""
        return not hasattr(self, "attn_alpha")

    def estimators(self) -> dict | None:
        """The estimator parameters in :func:`bnn_jax.quant.bipft_attention`'s format."""
        if not self.use_estimators:
            return None
        return {n: {"kernel": getattr(self, f"{n}_kernel")[...],
                    "bias": getattr(self, f"{n}_bias")[...]} for n in ESTIMATORS}

    def attend(self, q, k, v, *, mask=None, inputs=None) -> jax.Array:
        """Elastic-binary attention with the residual estimators of the layer input."""
        est = self.estimators()
        if not hasattr(self, "attn_alpha"):
            init = bipft_attention_init(q, k, v, inputs, estimators=est, mask=mask)
            for name, value in init.items():
                setattr(self, name, nnx.Param(jax.lax.stop_gradient(jnp.asarray(value))))
        alphas = {n: getattr(self, n)[...] for n in ("q_alpha", "k_alpha", "v_alpha",
                                                     "attn_alpha")}
        context, attention = bipft_attention(q, k, v, inputs, estimators=est, mask=mask,
                                             **alphas)
        self.sow(nnx.Intermediate, "attention", attention, capture_noop=True)
        return context


class QKReparamAttention(MultiHeadAttention):
    """OFQ's attention with query-key reparameterization (Liu, Liu, Cheng; ICML 2023;
    nbasyl/OFQ ``src/quantization/modules/attention.py::QAttention_qkreparam``), self-attention.

    Per head the logits are ``x_q·T·d^-½`` with ``T = Q_t(W_qk,h·x_qᵀ)`` and ``W_qk,h =
    W_q,h W_k,hᵀ`` quantized by StatsQ per row (:func:`bnn_jax.quant.qk_reparam`); ``x_q`` is
    the block input after ``input_quantizer``. ``query``/``key`` only hold ``W_q``, ``W_k``
    (no bias: a bias would not fold into ``W_qk``). The OFQ defaults (``"default"``) are:

    * ``input_quantizer``: ``ofq_lsq`` (learned bias, per-token LSQ step, learned bias), the
      reference's ``LSQ_input`` shared by the logits and the value path;
    * ``t_quantizer``: per-token LSQ of ``T`` viewed as ``[B, N·H, C]`` (one step per token and
      head, ``quan_a_qkx_fn``) between the learned biases ``t_bias_before``/``t_bias_after``
      of shape ``(H·C,)`` (``move_qkx_b4``/``move_qkx_aft``);
    * ``v_quantizer``: ``ofq_lsq`` with one step per channel (``move_v_b4`` ->
      ``LsqQuantizer4v`` -> ``move_v_aft``) on ``x_q·StatsQ(W_v) + b_v``;
    * ``attn_quantizer``: unsigned per-token (per query) LSQ of the probabilities;
    * ``kernel_quantizer``: StatsQ for V and the output projection, whose input takes
      ``ofq_lsq`` per token (``QLinear``).

    Each quantizer may be replaced (a registry spec) or switched off (None).
    """

    def __init__(self, num_heads: int, in_features: int, qkv_features: int | None = None,
                 out_features: int | None = None, *, bits: int = 2,
                 input_quantizer: Any = "default", t_quantizer: Any = "default",
                 v_quantizer: Any = "default", attn_quantizer: Any = "default",
                 kernel_quantizer: Any = "default", out_input_quantizer: Any = "default",
                 use_bias: bool = True, rngs: nnx.Rngs):
        check(qkv_features in (None, in_features),
              f"QKReparamAttention: qkv_features must equal in_features={in_features} "
              f"(W_qk is in_features x in_features), got {qkv_features!r}")

        def pick(value, default):
            return default if isinstance(value, str) and value == "default" else value

        act = dict(name="ofq_lsq", bits=bits, granularity="token")
        input_quantizer = pick(input_quantizer, act)
        out_input_quantizer = pick(out_input_quantizer, act)
        t_quantizer = pick(t_quantizer, dict(name="lsq", bits=bits, granularity="token"))
        v_quantizer = pick(v_quantizer, dict(act, granularity="channel"))
        attn_quantizer = pick(attn_quantizer, dict(name="lsq", bits=bits, signed=False,
                                                   granularity="token"))
        kernel_quantizer = pick(kernel_quantizer, dict(name="statsq", bits=bits))
        super().__init__(num_heads, in_features, in_features, out_features,
                         kernel_quantizer=kernel_quantizer, attn_quantizer=attn_quantizer,
                         use_bias=use_bias, rngs=rngs)
        # Q and K are never applied as layers: only their kernels enter W_qk.
        self.query = QuantLinear(in_features, in_features, use_bias=False, rngs=rngs)
        self.key = QuantLinear(in_features, in_features, use_bias=False, rngs=rngs)
        # The block input is quantized once and shared by the logits and the value path.
        self.x_quant = Quantize(input_quantizer)
        self.value = QuantLinear(in_features, in_features, kernel_quantizer=kernel_quantizer,
                                 use_bias=use_bias, rngs=rngs)
        self.v_quant = Quantize(v_quantizer)
        self.out = QuantLinear(in_features, self.out_features,
                               input_quantizer=out_input_quantizer,
                               kernel_quantizer=kernel_quantizer, use_bias=use_bias, rngs=rngs)
        self.t_quant = Quantize(t_quantizer)
        self.t_biases = t_quantizer is not None
        if self.t_biases:
            zeros = jnp.zeros((num_heads * in_features,), jnp.float32)
            self.t_bias_before = nnx.Param(zeros)
            self.t_bias_after = nnx.Param(zeros)
        self.bits = bits

    def qk_weight(self) -> jax.Array:
        """The quantized per-head ``W_qk`` of shape ``(H, C, C)``."""
        return qk_reparam(self.query.kernel[...], self.key.kernel[...],
                          num_heads=self.num_heads, bits=self.bits)

    def quantize_t(self, t: jax.Array) -> jax.Array:
        """OFQ's ``T`` path: ``[B, H, C, M]`` -> bias -> LSQ per (token, head) -> bias."""
        if not self.t_biases:
            return t
        b, h, c, m = t.shape
        tokens = t.transpose(0, 3, 1, 2).reshape(b, m, h * c) + self.t_bias_before[...]
        q = self.t_quant(tokens.reshape(b, m * h, c)).reshape(b, m, h * c)
        q = q + self.t_bias_after[...]
        return q.reshape(b, m, h, c).transpose(0, 2, 3, 1)

    def context(self, inputs_q, inputs_kv, mask) -> jax.Array:
        """Per-head context from the reparameterized logits and the quantized V."""
        check(inputs_kv is inputs_q, "QKReparamAttention is self-attention only")
        xq = self.x_quant(inputs_q)
        logits = qk_reparam_logits(xq, self.qk_weight(), t_quant=self.quantize_t)
        scores = apply_mask(logits * self.head_dim ** -0.5, mask)
        probs = self.attn_quant(jax.nn.softmax(scores, axis=-1))
        v = split_heads(self.v_quant(self.value(xq)), self.num_heads)
        self.sow(nnx.Intermediate, "v", v, capture_noop=True)
        return jnp.einsum("bhqk,bhkd->bhqd", probs, v)

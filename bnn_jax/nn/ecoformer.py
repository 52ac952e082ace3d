"""EcoFormer attention (Liu, Pan, He, Cai, Zhuang; NeurIPS 2022): binary hash codes of the
shared query/key replace the softmax kernel in an O(N) linear attention.

:class:`EcoFormerAttention` follows ``EcoformerSelfAttention`` / ``EcoformerFastAttention`` of
github.com/ziplab/EcoFormer (``pvt/performer.py``): one projection ``query`` serves as queries
and keys (the reference's ``to_qk``, initialised from the pretrained query rows, ``main.py``
204-216), L2-normalized per token and hashed to ``num_bits`` bits by kernelized supervised
hashing (:mod:`bnn_jax.quant.ecoformer`). The hash functions (anchors, kernel means, projection
``A``) are :class:`HashState` variables: no gradient reaches them. They are fitted by
:func:`refresh`, which the step hook ``"ecoformer_refresh"`` (:func:`refresh_hook`) runs on the
reference's schedule: the reference refits on the first batch of every ``k``-th epoch
(``main.py`` 321-326 with ``set_retrain``), so ``config.hooks = [dict(name="ecoformer_refresh",
every=k * steps_per_epoch, at_start=True)]``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bnn_jax.nn.attention import MultiHeadAttention, split_heads
from bnn_jax.quant.ecoformer import (BIAS_FORMS, hash_attention, hash_codes, ksh_fit,
                                     l2_normalize, similarity_targets)
from bnn_jax.quant.registry import check, check_choice

__all__ = ["EcoFormerAttention", "HashState", "refresh", "refresh_hook"]


class HashState(nnx.Variable):
    """EcoFormer's hash functions: set by :func:`refresh`, never by the optimizer."""


_ksh_fit = jax.jit(ksh_fit, static_argnames=("learning_rate", "momentum", "iterations"))


def _positive_int(name: str, value: Any) -> None:
    check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
          f"{name} must be a positive integer, got {value!r}")


class EcoFormerAttention(MultiHeadAttention):
    """Self-attention ``out(hash_attention(h(q̂), v))`` with ``q̂ = query(x)/||query(x)||``.

    ``num_bits`` (b = 16), ``num_anchors`` (m = 25) and ``topk`` (10) are the reference configs'
    ``nbits``, ``m``, ``topk`` (``pvt/configs/pvt_v2/*_ecoformer.py``); the KSH solver's
    ``ksh_learning_rate``/``ksh_momentum``/``ksh_iterations`` default to ``KernelSH``'s
    (5e-4, 0.9, 100). ``bias_form`` picks the positivity bias (see
    :func:`bnn_jax.quant.ecoformer.hash_attention`). There is no ``key`` projection, no
    attention mask and no cross-attention. Under ``nnx.capture`` the normalized ``qk``, ``v``
    and the codes ``hash`` are recorded.
    """

    def __init__(self, num_heads: int, in_features: int, qkv_features: int | None = None,
                 out_features: int | None = None, *, num_bits: int = 16, num_anchors: int = 25,
                 topk: int = 10, ksh_learning_rate: float = 5e-4, ksh_momentum: float = 0.9,
                 ksh_iterations: int = 100, bias_form: str = "code", rngs: nnx.Rngs,
                 **kwargs):
        for name, value in (("num_bits", num_bits), ("num_anchors", num_anchors),
                            ("topk", topk), ("ksh_iterations", ksh_iterations)):
            _positive_int(name, value)
        check_choice("bias_form", bias_form, BIAS_FORMS)
        for name in ("qkv_quantizer", "attn_quantizer"):
            check(kwargs.get(name) is None,
                  f"EcoFormerAttention has no {name} (its attention is the hash codes)")
        super().__init__(num_heads, in_features, qkv_features, out_features, rngs=rngs,
                         **kwargs)
        del self.key  # queries are keys: ``query`` is the shared projection
        self.num_bits, self.num_anchors, self.topk = num_bits, num_anchors, topk
        self.ksh_learning_rate, self.ksh_momentum = float(ksh_learning_rate), float(ksh_momentum)
        self.ksh_iterations = ksh_iterations
        self.bias_form = bias_form
        h, d = self.num_heads, self.head_dim
        # KernelSH's buffers: A ~ N(0, 1), anchors and means 0 until the first refresh.
        self.proj = HashState(jax.random.normal(rngs.params(), (h, num_bits, num_anchors)))
        self.anchors = HashState(jnp.zeros((h, num_anchors, d)))
        self.mvec = HashState(jnp.zeros((h, num_anchors)))
        self.refreshes = HashState(jnp.zeros((), jnp.int32))
        # (seed, step, layer): set by `refresh` so the next call fits the hash functions first.
        self.pending_fit: tuple[int, int, int] | None = None

    def fit(self, qk: jax.Array, key: jax.Array) -> None:
        """Fit the hash functions to normalized ``qk [B, H, N, d]`` (``EcoformerFastAttention``
        with ``is_trained=False``): ``num_anchors`` random tokens of the first example as
        anchors, top-/bottom-``topk`` targets, then :func:`~bnn_jax.quant.ecoformer.ksh_fit`."""
        qk = jax.lax.stop_gradient(qk.astype(jnp.float32))
        n = qk.shape[2]
        check(n >= self.num_anchors and n >= self.topk,
              f"EcoFormer hashing needs at least num_anchors={self.num_anchors} and "
              f"topk={self.topk} tokens per example, got {n}; lower them for small inputs")
        anchors = qk[0][:, jax.random.permutation(key, n)[:self.num_anchors]]
        proj, mvec, finite = _ksh_fit(qk, anchors, similarity_targets(qk, self.topk),
                                      self.proj[...], learning_rate=self.ksh_learning_rate,
                                      momentum=self.ksh_momentum, iterations=self.ksh_iterations)
        try:
            finite = bool(finite)
        except jax.errors.ConcretizationTypeError:  # fitted inside a trace: no check possible
            finite = True
        if not finite:
            raise FloatingPointError("EcoFormer: the KSH solve produced NaN; lower "
                                     "ksh_learning_rate")
        self.proj[...], self.anchors[...], self.mvec[...] = proj, anchors, mvec
        self.refreshes[...] = self.refreshes[...] + 1

    def codes(self, qk: jax.Array) -> jax.Array:
        """The ±1 hash codes ``[B, H, N, b]`` of normalized ``qk``."""
        return hash_codes(qk, self.anchors[...], self.mvec[...], self.proj[...])

    def context(self, inputs_q, inputs_kv, mask) -> jax.Array:
        """Per-head context of the binary-code linear attention, ``[B, H, N, d]``."""
        check(mask is None, "EcoFormerAttention takes no mask: its linear attention sums over "
              "every token")
        check(inputs_kv is inputs_q, "EcoFormerAttention is self-attention only")
        qk = l2_normalize(split_heads(self.query(inputs_q), self.num_heads))
        v = split_heads(self.value(inputs_q), self.num_heads)
        self.sow(nnx.Intermediate, "qk", qk, capture_noop=True)
        self.sow(nnx.Intermediate, "v", v, capture_noop=True)
        if self.pending_fit is not None:
            seed, step, index = self.pending_fit
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), step), index)
            self.fit(qk, key)
            self.pending_fit = None
        h = self.codes(qk)
        self.sow(nnx.Intermediate, "hash", h, capture_noop=True)
        return hash_attention(h, v, bias_form=self.bias_form)


def hash_layers(model: nnx.Module) -> list[EcoFormerAttention]:
    """Every :class:`EcoFormerAttention` in ``model``, in graph order."""
    return [m for _, m in nnx.iter_modules(model) if isinstance(m, EcoFormerAttention)]


def refresh(model: nnx.Module, inputs: Any, *, seed: int = 0, step: int = 0) -> int:
    """Refit every EcoFormer layer's hash functions during one forward pass of ``inputs``.

    As in the reference, each layer fits on the tokens it receives in that pass, so later
    layers see the earlier layers' new codes. Returns the number of layers refitted.
    """
    layers = hash_layers(model)
    check(bool(layers), f"{type(model).__name__} has no EcoFormerAttention layer to refresh")
    for i, layer in enumerate(layers):
        layer.pending_fit = (int(seed), int(step), i)
    try:
        model(inputs)
    finally:
        missed = [i for i, layer in enumerate(layers) if layer.pending_fit is not None]
        for layer in layers:
            layer.pending_fit = None
    check(not missed, f"EcoFormer layers {missed} were not called by the model's forward pass")
    return len(layers)


def refresh_hook(model: nnx.Module, batch: dict, step: int, *, seed: int = 0,
                 input_key: str = "image") -> None:
    """Step hook ``"ecoformer_refresh"``: :func:`refresh` on ``batch[input_key]``."""
    check(input_key in batch, f"ecoformer_refresh: the batch has no {input_key!r}; its keys: "
          f"{sorted(batch)} (set the hook's input_key)")
    refresh(model, jnp.asarray(batch[input_key]), seed=seed, step=step)


def _validate(seed: int = 0, input_key: str = "image") -> None:
    check(isinstance(seed, int) and not isinstance(seed, bool),
          f"ecoformer_refresh: seed must be an integer, got {seed!r}")
    check(isinstance(input_key, str) and bool(input_key),
          f"ecoformer_refresh: input_key must be a batch key, got {input_key!r}")


refresh_hook.validate = _validate

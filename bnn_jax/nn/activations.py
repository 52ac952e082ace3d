"""Learnable activations and small blocks of binary networks: DPReLU, RPReLU, RSign, LearnableBias,
squeeze-excitation with quantized 1x1 convs, and the Weight-Standardized conv.

Where a method is a registered function of :mod:`bnn_jax.quant` (RSign, RPReLU, hard_tanh,
Weight Standardization) the module only holds its parameters and calls it; :class:`Quantize`
does that for any registered quantizer with learned arrays.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bnn_jax.nn.layers import QuantConv, _scheduled, as_quantizer
from bnn_jax.quant.core import mean
from bnn_jax.quant.larq import hard_tanh
from bnn_jax.quant.norm import weight_standardization
from bnn_jax.quant.registry import check, check_choice, check_positive

__all__ = ["DPReLU", "LearnableBias", "Quantize", "RPReLU", "RSign", "SqueezeExcite", "WSConv",
           "hard_sigmoid", "hard_tanh"]


class Quantize(nnx.Module):
    """A registry quantizer or activation as a module holding its learned arrays as nnx.Param.

    The arrays are named as the quantizer names them (``beta`` of RSign, ``step`` of LSQ, ...)
    and created on the first call by the quantizer's ``init`` rule. ``None`` is the identity.
    """

    def __init__(self, quantizer: Any):
        self.quantizer = as_quantizer(quantizer)

    def learned_pending(self) -> bool:
        """True until the first call has created the learned arrays."""
        q = self.quantizer
        return bool(q is not None and q.learned and not hasattr(self, q.learned[0]))

    def __call__(self, x: jax.Array, **overrides) -> jax.Array:
        """``q(x, **learned, **overrides)``; overrides (and :func:`quant_params` ``input``
        values) feed schedules such as ReSTE's ``o``."""
        q = self.quantizer
        if q is None:
            return x
        if q.learned and not hasattr(self, q.learned[0]):
            init = q.init(x)
            for name in q.learned:
                setattr(self, name, nnx.Param(jax.lax.stop_gradient(jnp.asarray(init[name]))))
        return q(x, **{n: getattr(self, n)[...] for n in q.learned},
                 **_scheduled("input", q, overrides))


class RSign(Quantize):
    """ReActNet's RSign, ``sign(x + beta_c)`` (code convention; ``"paper"``: ``x - beta_c``)."""

    def __init__(self, convention: str = "code"):
        super().__init__(dict(name="rsign", convention=convention))


class RPReLU(Quantize):
    """ReActNet's RPReLU, ``PReLU(x + gamma_c; slope_c) + zeta_c`` (code convention).

    Parameters ``gamma``, ``zeta`` (init 0) and ``slope`` (init 0.25) are per channel (last
    axis) and created on the first call. ``convention="paper"`` subtracts gamma instead.
    """

    def __init__(self, convention: str = "code"):
        super().__init__(dict(name="rprelu", convention=convention))


class LearnableBias(nnx.Module):
    """``x + b`` with a learned per-channel (last axis) bias, init 0 (ReActNet/BiPFT ``move``)."""

    def __init__(self, features: int, *, param_dtype: Any = jnp.float32):
        self.bias = nnx.Param(jnp.zeros((features,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Shift ``x`` by the learned bias."""
        return x + self.bias[...]


class DPReLU(nnx.Module):
    """PokeBNN's Dynamic PReLU: ``y = s·(x - bias_x) - bias_y``, per channel (last axis).

    ``s = pos_slope`` where ``x - bias_x >= 0`` and ``neg_slope`` elsewhere; ``bias_x``,
    ``bias_y`` init 0, ``pos_slope`` init 1, ``neg_slope`` init 0.25 (names and inits of
    google/aqt ``pokebnn.py``, which also casts the output to bfloat16; here the dtype is kept).
    """

    def __init__(self, features: int, *, pos_slope_init: float = 1.0,
                 neg_slope_init: float = 0.25, param_dtype: Any = jnp.float32):
        self.bias_x = nnx.Param(jnp.zeros((features,), param_dtype))
        self.bias_y = nnx.Param(jnp.zeros((features,), param_dtype))
        self.pos_slope = nnx.Param(jnp.full((features,), pos_slope_init, param_dtype))
        self.neg_slope = nnx.Param(jnp.full((features,), neg_slope_init, param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply the two-slope, two-shift activation."""
        v = x - self.bias_x[...]
        slope = jnp.where(v >= 0, self.pos_slope[...], self.neg_slope[...])
        return slope * v - self.bias_y[...]


def hard_sigmoid(x: jax.Array) -> jax.Array:
    """``relu6(x + 3) / 6``: PokeBNN's squeeze-excitation gate."""
    return jax.nn.relu6(x + 3.0) / 6.0


class SqueezeExcite(nnx.Module):
    """Squeeze-excitation gate with quantized 1x1 convs (PokeBNN's SE, §13 of the method notes).

    global average pool -> 1x1 conv to ``in_features // reduction`` -> ReLU -> 1x1 conv to
    ``out_features`` -> hard sigmoid. Returns the gate ``(N, 1, 1, out_features)``; PokeBNN
    multiplies it into the conv output (``y * SE(r)``, r = the block input). PokeBNN quantizes
    both convs' kernels to 4 bits, the first input signed and the second (after ReLU) unsigned:
    pass those as ``kernel_quantizer``, ``input_quantizer`` and ``hidden_input_quantizer``.
    """

    def __init__(self, in_features: int, out_features: int | None = None, *,
                 reduction: int = 8, input_quantizer: Any = None,
                 hidden_input_quantizer: Any = None, kernel_quantizer: Any = None,
                 use_bias: bool = True, rngs: nnx.Rngs):
        check(isinstance(reduction, int) and reduction >= 1,
              f"reduction must be a positive int, got {reduction!r}")
        hidden = max(1, in_features // reduction)
        out_features = in_features if out_features is None else out_features
        self.reduce = QuantConv(in_features, hidden, (1, 1), use_bias=use_bias,
                                input_quantizer=input_quantizer,
                                kernel_quantizer=kernel_quantizer, rngs=rngs)
        self.expand = QuantConv(hidden, out_features, (1, 1), use_bias=use_bias,
                                input_quantizer=hidden_input_quantizer,
                                kernel_quantizer=kernel_quantizer, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """The gate for NHWC ``x``."""
        s = mean(x, axis=(1, 2), keepdims=True)
        return hard_sigmoid(self.expand(jax.nn.relu(self.reduce(s))))


class WSConv(QuantConv):
    """QuantConv whose latent kernel is Weight-Standardized per output filter before the kernel
    quantizer (Qiao et al., arXiv 1903.10520; differentiated, not stop-gradient).

    ``ws_variant``: ``"ws"`` (WeightStandardization repository: ``/(std + eps)``, unbiased std;
    the default), ``"bcn"`` or ``"paper"``; see :func:`bnn_jax.quant.weight_standardization`.
    """

    def __init__(self, *args, ws_eps: float = 1e-5, ws_variant: str = "ws", **kwargs):
        check_choice("ws_variant", ws_variant, ("ws", "bcn", "paper"))
        check_positive("ws_eps", ws_eps)
        self.ws_eps, self.ws_variant = ws_eps, ws_variant
        super().__init__(*args, **kwargs)

    def extra_init_args(self) -> dict[str, Any]:
        """Constructor arguments beyond QuantConv's (used when re-quantizing this layer)."""
        return dict(ws_eps=self.ws_eps, ws_variant=self.ws_variant)

    def latent_kernel(self, kernel: jax.Array | None = None) -> jax.Array:
        """The kernel after Weight Standardization (what the kernel quantizer sees)."""
        k = self.kernel[...] if kernel is None else kernel
        return weight_standardization(k, eps=self.ws_eps, variant=self.ws_variant)

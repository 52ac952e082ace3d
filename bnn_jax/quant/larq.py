"""Every larq quantizer, activation and constraint, with larq's numbers (tested against larq 0.14).

larq conventions kept here: sign(0) = +1; the straight-through gradient includes the clip
boundary (|x| == clip_value passes); DoReFa rounds half to even (tf.round); statistics used as
scales are stop-gradient unless larq differentiates them (xnor_weight_scale does).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bnn_jax.quant.core import (clip, clipped_ste, estimator, exact_div, heaviside,
                                identity_ste, mean, sign)
from bnn_jax.quant.registry import (check, check_choice, check_int_range, check_positive,
                                    register)


def _check_clip(clip_value=1.0, **_):
    check_positive("clip_value", clip_value, allow_none=True)


_ste_sign = clipped_ste(sign)
_ste_heaviside = clipped_ste(heaviside)
_ste_tern = clipped_ste(lambda x, t: jnp.sign(jnp.sign(x + t) + jnp.sign(x - t)))


@register("ste_sign", validate=_check_clip,
          paper="BNN (Hubara et al., 2016); BinaryConnect (Courbariaux et al., 2015)",
          formula="sign(x), sign(0)=+1; g·1[|x| ≤ clip_value] (identity if None)",
          result="BNN CIFAR-10 test error 11.40 % (Theano) [MEM]")
def ste_sign(x, *, clip_value=1.0):
    """Sign with the clipped straight-through estimator."""
    return _ste_sign(x, clip_value)


def _approx_sign_derivative(x):
    abs_x = jnp.abs(x)
    return jnp.where(abs_x <= 1.0, (1 - abs_x) * 2, 0).astype(jnp.result_type(x))


_approx_sign = estimator(sign, _approx_sign_derivative)


@register("approx_sign",
          paper="Bi-Real Net (Liu et al., ECCV 2018)",
          formula="sign(x), sign(0)=+1; g·max(0, 2 − 2|x|) (derivative of the piecewise quadratic "
                  "ApproxSign)",
          result="Bi-Real-18 ImageNet top-1/top-5 56.4 / 79.5 [README]")
def approx_sign(x):
    """Sign with Bi-Real's ApproxSign (piecewise quadratic) gradient."""
    return _approx_sign(x)


def _swish_sign_derivative(x, beta):
    b_x = beta * x
    return beta * (2 - b_x * jnp.tanh(b_x * 0.5)) / (1 + jnp.cosh(b_x))


_swish_sign = estimator(lambda x, beta: sign(x), _swish_sign_derivative)


@register("swish_sign", validate=lambda beta=5.0: check_positive("beta", beta),
          paper="BNN+ (Darabi et al., 2018)",
          formula="sign(x), sign(0)=+1; g·β(2 − βx·tanh(βx/2)) / (1 + cosh(βx))",
          result="–")
def swish_sign(x, *, beta=5.0):
    """Sign with the SwishSign gradient of BNN+."""
    return _swish_sign(x, beta)


@register("magnitude_aware_sign", validate=_check_clip,
          paper="Bi-Real Net (Liu et al., ECCV 2018), magnitude-aware weights",
          formula="sg(mean|x| over all axes but the last)·sign(x), sign(0)=+1; scaled clipped STE",
          result="Bi-Real-18 ImageNet top-1 56.4 [README]")
def magnitude_aware_sign(x, *, clip_value=1.0):
    """Sign times the stop-gradient mean |x| per output channel (the last axis)."""
    axes = tuple(range(x.ndim - 1))
    scale = jax.lax.stop_gradient(mean(jnp.abs(x), axis=axes))
    return _ste_sign(x, clip_value) * scale


def _check_tern(threshold_value=0.05, ternary_weight_networks=False, clip_value=1.0):
    check_positive("threshold_value", threshold_value)
    check_choice("ternary_weight_networks", ternary_weight_networks, (False, True))
    _check_clip(clip_value)


@register("ste_tern", validate=_check_tern, bits=1.58,
          paper="Ternary Weight Networks (Li et al., 2016)",
          formula="sign(sign(x+Δ) + sign(x−Δ)), sign(0)=0 (0 for |x| < Δ), Δ = threshold_value or "
                  "0.7·mean|x| (TWN); clipped STE",
          result="–")
def ste_tern(x, *, threshold_value=0.05, ternary_weight_networks=False, clip_value=1.0):
    """Ternarize to {-1, 0, 1} with a fixed or TWN (0.7·mean|x|, whole tensor) threshold."""
    if ternary_weight_networks:
        threshold = jax.lax.stop_gradient(exact_div(0.7 * jnp.sum(jnp.abs(x)), float(x.size)))
    else:
        threshold = threshold_value
    return _ste_tern(x, clip_value, threshold)


@register("ste_heaviside", validate=_check_clip,
          paper="larq (Geiger & Team, 2020)",
          formula="1[x > 0]; g·1[|x| ≤ clip_value]",
          result="–")
def ste_heaviside(x, *, clip_value=1.0):
    """Heaviside step to {0, 1} with the clipped straight-through estimator."""
    return _ste_heaviside(x, clip_value)


_round_identity = identity_ste(lambda x, n: exact_div(jnp.round(x * n), n))


def _check_dorefa(k_bit=2, mode="activations"):
    check_int_range("k_bit", k_bit, 1, 32)
    check_choice("mode", mode, ("activations", "weights"))


@register("dorefa", aliases=("dorefa_quantizer",), validate=_check_dorefa,
          bits=lambda k_bit=2, mode="activations": k_bit,
          paper="DoReFa-Net (Zhou et al., 2016)",
          formula="q_k(r) = round((2^k−1)r)/(2^k−1) with identity gradient; activations "
                  "q_k(clip(x,0,1)); weights 2·q_k(tanh(w)/(2·sg(max|tanh w|)) + ½) − 1",
          result="AlexNet W1/A2/G6 47.6 % top-1 error (tensorpack); ResNet-18 W1/A4 59.2 % "
                 "top-1 [README]")
def dorefa(x, *, k_bit=2, mode="activations"):
    """DoReFa k-bit quantizer of activations (in [0, 1]) or weights (in [-1, 1])."""
    n = 2**k_bit - 1
    if mode == "activations":
        return _round_identity(clip(x, 0.0, 1.0), n)
    limited = jnp.tanh(x)
    # Stop-gradient: the largest element would otherwise be divided by itself and get 0 gradient.
    dividend = jax.lax.stop_gradient(jnp.max(jnp.abs(limited)))
    return 2.0 * _round_identity(limited / (2.0 * dividend) + 0.5, n) - 1.0


@register("noop", bits=lambda precision=32: None if precision >= 32 else precision,
          validate=lambda precision=32: check_int_range("precision", precision, 1, 32),
          paper="larq NoOp", formula="x (identity); `precision` is the bit width reported",
          result="–")
def noop(x, *, precision=32):
    """Identity; ``precision`` only tells model summaries how many bits the values use."""
    return x


@register("xnor_weight_scale",
          paper="XNOR-Net (Rastegari et al., ECCV 2016); larq-zoo",
          formula="c = clip(W,−1,1); mean|c| over (kh,kw,in) per filter · ste_sign(c), "
                  "sign(0)=+1, gradient through the scale",
          result="ResNet-18 ImageNet top-1/top-5 51.2 / 73.2 [README]")
def xnor_weight_scale(x):
    """Per-output-filter mean|W| times sign(W) of an HWIO kernel (larq-zoo's XNOR-Net weights)."""
    check(x.ndim == 4, f"xnor_weight_scale expects an HWIO kernel (4-D), got shape {x.shape}")
    x = clip(x, -1.0, 1.0)
    alpha = mean(jnp.abs(x), axis=(0, 1, 2), keepdims=True)
    return alpha * _ste_sign(x, 1.0)


_scaled_sign_identity = identity_ste(lambda x, s: sign(x) * s)


@register("magnitude_aware_sign_unclipped",
          paper="DoReFa-Net 1-bit weights (Zhou et al., 2016); larq-zoo",
          formula="sg(mean|w| over the tensor)·sign(w), sign(0)=+1; identity gradient",
          result="AlexNet W1/A32 44.3 % top-1 error (tensorpack) [CODE]")
def magnitude_aware_sign_unclipped(x):
    """sign(w) times the whole-tensor mean |w|, with a plain identity gradient."""
    scale = jax.lax.stop_gradient(mean(jnp.abs(x)))
    return _scaled_sign_identity(x, scale)


@register("hard_tanh", kind="activation", bits=None,
          paper="BNN (Hubara et al., 2016)", formula="clip(x, −1, 1); gradient 1 on [−1, 1]",
          result="–")
def hard_tanh(x):
    """clip(x, -1, 1) with gradient 1 on the closed interval."""
    return clip(x, -1.0, 1.0)


def _leaky_tanh_forward(x, alpha):
    return (jnp.clip(x, -1, 1) + (jnp.maximum(x, 1) - 1) * alpha
            + (jnp.minimum(x, -1) + 1) * alpha)


def _leaky_tanh_derivative(x, alpha):
    # TF sends the gradient of max/min to x on ties, so both pieces count at |x| == 1.
    inside = (jnp.abs(x) <= 1).astype(jnp.result_type(x))
    outside = ((x >= 1) | (x <= -1)).astype(jnp.result_type(x))
    return inside + alpha * outside


_leaky_tanh = estimator(_leaky_tanh_forward, _leaky_tanh_derivative)


@register("leaky_tanh", kind="activation", bits=None,
          validate=lambda alpha=0.2: check_positive("alpha", alpha),
          paper="larq", formula="clip(x,−1,1) + α·(max(x,1)−1) + α·(min(x,−1)+1)",
          result="–")
def leaky_tanh(x, *, alpha=0.2):
    """Hard tanh with slope ``alpha`` outside [-1, 1]."""
    return _leaky_tanh(x, alpha)


@register("weight_clip", kind="constraint", bits=None, validate=_check_clip,
          paper="BinaryConnect (Courbariaux et al., 2015)",
          formula="clip(w, −clip_value, clip_value) after every update",
          result="BinaryConnect CIFAR-10 test error 9.90 % (det.) [MEM]")
def weight_clip(x, *, clip_value=1.0):
    """Clip latent weights to [-clip_value, clip_value] (applied after the optimizer step)."""
    return jnp.clip(x, -clip_value, clip_value)

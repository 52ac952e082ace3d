"""Classic binarizers: BinaryConnect, BNN, XNOR-Net, Bi-Real, TWN, IR-Net, FDA and ReActNet.

Layout: kernels are Flax's ``(..., in, out)``; "per output channel" statistics reduce over every
axis but the last (the PyTorch references reduce over every axis but the first). Activations are
channels-last. ``sign(0) = +1`` throughout (the references call ``torch.sign``, which gives 0 at
exactly 0; we keep outputs truly binary so they can be bit-packed). Statistics used as scales are
stop-gradient unless the docstring says the reference differentiates them.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from bnn_jax.quant.core import (clipped_ste, clipped_ste_derivative, estimator, exact_div,
                                identity_ste, mean, per_channel_axes, sign)
from bnn_jax.quant.larq import approx_sign
from bnn_jax.quant.registry import (check, check_choice, check_int_range, check_positive,
                                    check_schedule_value, register)

CONVENTIONS = ("code", "paper")


def _out_axes(x):
    """Axes holding one output channel's weights: all but the last."""
    return per_channel_axes(x.ndim, -1)


# ---------------------------------------------------------------------------------------------
# BinaryConnect / BNN
# ---------------------------------------------------------------------------------------------

_sign_identity = identity_ste(sign)
# a·sign(w) with the gradient of clip(w, -1, 1): the detach trick of BiBench / Bi-Real /
# ReActNet, ``sg(a·sign(w) - clip(w)) + clip(w)`` (torch.clamp passes |w| == 1).
_scaled_sign_clip = estimator(lambda w, a: a * sign(w),
                              lambda w, a: clipped_ste_derivative(w, 1.0))
# The magnitude-aware variant: the same, gradient scaled by a.
_scaled_sign_clip_scaled = estimator(lambda w, a: a * sign(w),
                                     lambda w, a: a * clipped_ste_derivative(w, 1.0))


@register("binary_connect",
          paper="BinaryConnect (Courbariaux et al., NeurIPS 2015)",
          formula="sign(w), sign(0)=+1; identity STE g (latent weights clipped to [−1, 1] after "
                  "each update "
                  "with the `weight_clip` constraint)",
          result="CIFAR-10 test error 9.90 % (det.), 8.27 % (stoch.) [MEM]")
def binary_connect(x):
    """Deterministic BinaryConnect: sign(w) with the plain identity straight-through gradient."""
    return _sign_identity(x)


def binary_connect_stochastic(x, key):
    """Stochastic BinaryConnect: +1 with probability ``clip((w + 1)/2, 0, 1)``, else -1.

    Identity straight-through gradient. Not registered: it needs a PRNG key per call.
    """
    p = jnp.clip((x + 1.0) * 0.5, 0.0, 1.0)
    u = jax.random.uniform(key, x.shape, dtype=jnp.result_type(x))
    return _stochastic_sign(x, u < p)


_stochastic_sign = identity_ste(lambda x, up: jnp.where(up, 1, -1).astype(jnp.result_type(x)))


_bnn_clipped = clipped_ste(sign)
_bnn_exclusive = estimator(sign, lambda x: clipped_ste_derivative(x, 1.0, inclusive=False))


def _bnn_inclusive(x):
    return _bnn_clipped(x, 1.0)


@register("bnn_ste",
          validate=lambda boundary="inclusive": check_choice("boundary", boundary,
                                                             ("inclusive", "exclusive")),
          paper="BNN / BinaryNet (Hubara, Courbariaux et al., NeurIPS 2016)",
          formula="sign(x), sign(0)=+1; g·1[|x| ≤ 1] (inclusive, BiBench) or g·1[|x| < 1] "
                  "(exclusive, "
                  "BiBERT/BiViT `BinaryQuantizer`)",
          result="CIFAR-10 test error 11.40 % (Theano) / 10.15 % (Torch7) [MEM]")
def bnn_ste(x, *, boundary="inclusive"):
    """Sign with the clipped ("hard-tanh") STE; ``boundary`` says whether |x| == 1 passes.

    BiBench's ``BinaryQuantize`` keeps the boundary (inclusive, the default); BiBERT's and
    BiViT's ``BinaryQuantizer`` zero it (exclusive).
    """
    return _bnn_inclusive(x) if boundary == "inclusive" else _bnn_exclusive(x)


# ---------------------------------------------------------------------------------------------
# XNOR-Net
# ---------------------------------------------------------------------------------------------

def _xnor_paper_derivative(w, alpha, inv_n):
    return inv_n + alpha * clipped_ste_derivative(w, 1.0)


_xnor_paper = estimator(lambda w, alpha, inv_n: alpha * sign(w), _xnor_paper_derivative)


def _check_xnor_weight(gradient="code", centred=False):
    check_choice("gradient", gradient, CONVENTIONS)
    check_choice("centred", centred, (False, True))
    check(not (centred and gradient == "paper"),
          "centred=True is BiBench's XNORLinear and has no paper gradient; use gradient='code'")


@register("xnor_weight", validate=_check_xnor_weight,
          paper="XNOR-Net / BWN (Rastegari et al., ECCV 2016)",
          formula="α_c·sign(W), sign(0)=+1, α_c = sg(mean|W_c|) per output channel; code "
                  "(BiBench): "
                  "g·1[|W| ≤ 1]; paper: g·(1/n + α·1[|W| ≤ 1]); `centred`: BiBench's "
                  "XNORLinear on W − mean_c W",
          result="ResNet-18 ImageNet top-1/top-5: BWN 60.8 / 83.0 [MEM], XNOR 51.2 / 73.2 "
                 "[README]")
def xnor_weight(x, *, gradient="code", centred=False):
    """XNOR-Net weights: per-output-channel stop-gradient mean|W| times sign(W).

    ``gradient="code"`` (default) is BiBench's ``XNORConv2d``: the straight-through
    gradient of ``clip(W, -1, 1)``, not scaled by alpha. ``gradient="paper"`` is the paper's
    ``dC/dW = dC/dW~ (1/n + alpha 1[|W| <= 1])`` (n = weights per output channel).
    ``centred=True`` is BiBench's ``XNORLinear``: ``c = W - mean_c W`` (differentiated),
    ``sg(mean|c|)·sign(c)`` with the gradient ``mean|c|·1[|c| <= 1]``.
    """
    if centred:
        c = x - mean(x, axis=_out_axes(x), keepdims=True)
        alpha = jax.lax.stop_gradient(mean(jnp.abs(c), axis=_out_axes(x), keepdims=True))
        return _bnn_inclusive(c) * alpha
    alpha = jax.lax.stop_gradient(mean(jnp.abs(x), axis=_out_axes(x), keepdims=True))
    if gradient == "paper":
        n = math.prod(x.shape[:-1]) if x.ndim > 1 else 1
        return _xnor_paper(x, jnp.broadcast_to(alpha, x.shape), 1.0 / n)
    return _scaled_sign_clip(x, jnp.broadcast_to(alpha, x.shape))


@register("xnor_act",
          validate=lambda scaling="per_sample": check_choice("scaling", scaling,
                                                             ("per_sample", "none")),
          paper="XNOR-Net (Rastegari et al., ECCV 2016)",
          formula="sign(x)·sg(mean|x| over all but the batch axis), sign(0)=+1, (BiBench) or "
                  "sign(x) with the "
                  "paper's map K = box_k(mean_c|x|) applied to the conv output "
                  "(`xnor_scaling_map`); g·1[|x| ≤ 1]",
          result="ResNet-18 ImageNet top-1/top-5 51.2 / 73.2 [README]")
def xnor_act(x, *, scaling="per_sample"):
    """XNOR-Net input binarization with the clipped STE.

    ``scaling="per_sample"`` (default) is BiBench's reference: one stop-gradient mean|x| per
    sample over (H, W, C). The paper instead scales the *convolution output* by the spatial map
    ``K = A * k`` (A = mean over channels of |x|, k a k x k box filter); use
    ``scaling="none"`` here and multiply the conv output by :func:`xnor_scaling_map`.
    """
    if scaling == "none":
        return _bnn_inclusive(x)
    axes = tuple(range(1, x.ndim))
    alpha = jax.lax.stop_gradient(mean(jnp.abs(x), axis=axes, keepdims=True))
    # BiBench: sg(alpha·sign(x) − clip(x)) + clip(x), so the gradient is not scaled by alpha.
    return _scaled_sign_clip(x, jnp.broadcast_to(alpha, x.shape))


def xnor_scaling_map(x, *, kernel_size=3, strides=1, padding="SAME"):
    """XNOR-Net's K: channel-mean of |x| (NHWC) filtered by a k x k box of value 1/k^2.

    Returns an ``(N, H', W', 1)`` map (stop-gradient) that multiplies the binary conv output;
    ``strides`` and ``padding`` must match the convolution's so the map lines up with it.
    """
    check(x.ndim == 4, f"xnor_scaling_map expects NHWC activations, got shape {x.shape}")
    check_int_range("kernel_size", kernel_size, 1, 64)
    a = mean(jnp.abs(x), axis=-1, keepdims=True)
    s = (strides, strides) if isinstance(strides, int) else tuple(strides)
    box = jnp.full((kernel_size, kernel_size, 1, 1), 1.0 / (kernel_size * kernel_size), a.dtype)
    k = jax.lax.conv_general_dilated(a, box, s, padding,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.lax.stop_gradient(k)


# ---------------------------------------------------------------------------------------------
# Bi-Real Net (activations: larq's `approx_sign`)
# ---------------------------------------------------------------------------------------------

@register("bireal_weight",
          validate=lambda gradient="code": check_choice("gradient", gradient, CONVENTIONS),
          paper="Bi-Real Net (Liu et al., ECCV 2018), magnitude-aware weights",
          formula="α_c·sign(W), sign(0)=+1, α_c = sg(mean|W_c|); code: g·1[|W| ≤ 1] (through "
                  "clip, not "
                  "scaled); paper: g·α_c·1[|W| ≤ 1]. Activations: `approx_sign`",
          result="Bi-Real-18 / Bi-Real-34 ImageNet top-1/top-5 56.4 / 79.5 ; 62.2 / 83.9 "
                 "[README]")
def bireal_weight(x, *, gradient="code"):
    """Bi-Real weights: per-output-channel stop-gradient mean|W| times sign(W).

    ``gradient="code"`` (default) is ``birealnet.py::HardBinaryConv``: the gradient of
    ``clip(W, -1, 1)`` (torch.clamp passes |W| == 1), not multiplied by alpha.
    ``gradient="paper"`` is the paper's magnitude-aware gradient ``alpha 1[|W| <= 1]`` (the
    Caffe release; also larq's ``magnitude_aware_sign``). Bi-Real activations are
    :func:`bnn_jax.quant.approx_sign`.
    """
    alpha = jax.lax.stop_gradient(mean(jnp.abs(x), axis=_out_axes(x), keepdims=True))
    alpha = jnp.broadcast_to(alpha, x.shape)
    if gradient == "paper":
        return _scaled_sign_clip_scaled(x, alpha)
    return _scaled_sign_clip(x, alpha)


# ---------------------------------------------------------------------------------------------
# TWN
# ---------------------------------------------------------------------------------------------

def _twn_forward(w, delta, alpha):
    t = (w > delta).astype(w.dtype) - (w < -delta).astype(w.dtype)
    return alpha * t


_twn = identity_ste(_twn_forward)


def _check_twn(threshold_factor=0.7, per_channel=False):
    check_positive("threshold_factor", threshold_factor)
    check_choice("per_channel", per_channel, (False, True))


@register("twn", validate=_check_twn, bits=1.58,
          paper="Ternary Weight Networks (Li, Zhang, Liu, 2016)",
          formula="α·t, t = 1[W > Δ] − 1[W < −Δ], Δ = 0.7·mean|W|, α = mean of |W| over "
                  "|W| > Δ (both sg, per tensor); identity STE",
          result="–")
def twn(x, *, threshold_factor=0.7, per_channel=False):
    """Ternary Weight Networks: threshold 0.7 mean|W|, scale = mean |W| above it.

    Per tensor by default, as in the reference Caffe code (``Blob::ternarize_data``), whose
    scale ``<t, W> / <t, t>`` equals the mean |W| above the threshold; ``per_channel=True``
    takes both statistics per output channel. Straight-through identity gradient.
    """
    axes = _out_axes(x) if per_channel else None
    abs_x = jnp.abs(x)
    count = math.prod(x.shape[:-1]) if per_channel else x.size
    # Caffe: (0.7f * asum) / count.
    delta = exact_div(threshold_factor * jnp.sum(abs_x, axis=axes, keepdims=per_channel),
                      float(count))
    above = (abs_x > delta).astype(x.dtype)
    alpha = jnp.sum(abs_x * above, axis=axes, keepdims=per_channel) / jnp.maximum(
        jnp.sum(above, axis=axes, keepdims=per_channel), 1.0)
    delta, alpha = jax.lax.stop_gradient(delta), jax.lax.stop_gradient(alpha)
    return _twn(x, jnp.broadcast_to(delta, x.shape), jnp.broadcast_to(alpha, x.shape))


# ---------------------------------------------------------------------------------------------
# IR-Net
# ---------------------------------------------------------------------------------------------

def _ede_derivative(x, t, k):
    return k * t * (1.0 - jnp.square(jnp.tanh(x * t)))


_ede = estimator(lambda x, t, k: sign(x), _ede_derivative)


def _check_ede(t=0.1, k=10.0, progress=None, t_min=0.1, t_max=10.0, epochs=0):
    check_schedule_value("t", t, lo=0, strict=True)
    check_schedule_value("k", k, lo=0, strict=True)
    if progress is not None:
        check_schedule_value("progress", progress, lo=0)
    check_positive("t_min", t_min)
    check_positive("t_max", t_max)
    check(isinstance(epochs, int) and not isinstance(epochs, bool) and epochs >= 0,
          f"epochs must be a non-negative integer (0: t changes every step), got {epochs!r}")


def ede_t_k(t, k, progress, t_min, t_max, epochs):
    """``(t, k)`` given directly or, when ``progress`` (fraction of training done) is fed,
    IR-Net's curve :func:`bnn_jax.quant.schedules.irnet_t_k` at it.

    ``epochs > 0`` holds t constant within each epoch as the reference trainers do (``Log_UP``
    once per epoch ``e``: ``t = 10^(log10 t_min + (log10 t_max - log10 t_min) e / epochs)``);
    the epoch is ``floor(progress * epochs)``, with 1e-4 epoch of slack for the float32
    ``step / total_steps`` the training loop feeds (so a boundary step is never taken for the
    last step of the previous epoch).
    """
    if progress is None:
        return t, k
    from bnn_jax.quant.schedules import irnet_t_k

    p = jnp.asarray(progress, jnp.float32)
    if epochs:
        p = jnp.floor(p * epochs + 1e-4) / epochs
    return irnet_t_k(p, 1.0, t_min=t_min, t_max=t_max)


@register("irnet_ede", validate=_check_ede,
          paper="IR-Net (Qin et al., CVPR 2020), Error Decay Estimator",
          formula="sign(x), sign(0)=+1; g·k·t·(1 − tanh²(t·x)); (t, k) given, or IR-Net's "
                  "t = t_min·(t_max/t_min)^(e/E), k = max(1/t, 1) at the fed `progress`",
          result="–")
def irnet_ede(x, *, t=0.1, k=10.0, progress=None, t_min=0.1, t_max=10.0, epochs=0):
    """Sign with IR-Net's EDE gradient ``k t (1 - tanh^2(t x))``.

    Defaults are the reference layer's initial buffers (k = 10, t = 0.1). Feed ``t`` and ``k``
    per step, or feed ``progress`` (``config.schedules``: linear 0 -> 1) and the quantizer
    follows IR-Net's curve between ``t_min`` and ``t_max`` (:func:`ede_t_k`).
    """
    return _ede(x, *ede_t_k(t, k, progress, t_min, t_max, epochs))


@register("irnet_weight", validate=_check_ede,
          paper="IR-Net (Qin et al., CVPR 2020), Libra-PB balanced weights",
          formula="ŵ = (W − mean_c)/std_c (unbiased, differentiated); 2^round(log2 mean|ŵ_c|)"
                  "·sign(ŵ), sign(0)=+1, with sg scale; EDE gradient",
          result="–")
def irnet_weight(x, *, t=0.1, k=10.0, progress=None, t_min=0.1, t_max=10.0, epochs=0):
    """IR-Net weights: per-output-channel standardize, sign with EDE, power-of-two scale.

    As ``IRConv2d``: the centring and the (unbiased) std division are differentiated; the
    scale ``2^round(log2 mean|w_hat|)`` is stop-gradient. ``t``/``k`` or ``progress`` as
    :func:`irnet_ede` (the reference feeds weights and activations the same pair).
    """
    t, k = ede_t_k(t, k, progress, t_min, t_max, epochs)
    axes = _out_axes(x)
    n = math.prod(x.shape[:-1])
    centred = x - mean(x, axis=axes, keepdims=True)
    var = exact_div(jnp.sum(jnp.square(centred), axis=axes, keepdims=True), float(n - 1))
    w_hat = centred / jnp.sqrt(var)
    m = mean(jnp.abs(w_hat), axis=axes, keepdims=True)
    scale = jax.lax.stop_gradient(jnp.power(2.0, jnp.round(exact_div(jnp.log(m), math.log(2)))))
    return _ede(w_hat, t, k) * scale


# ---------------------------------------------------------------------------------------------
# FDA
# ---------------------------------------------------------------------------------------------

def _fda_derivative(x, n, omega, n_max):
    total = jnp.zeros_like(x)
    for i in range(n_max + 1):
        term = jnp.cos((2 * i + 1) * omega * x)
        total = total + jnp.where(i <= n, term, 0.0)
    g = 4.0 * omega / math.pi * total
    return jnp.where(jnp.abs(x) > 1.0, 0.0, g)


def _check_fda(n=9, omega=0.1, n_max=18):
    check_int_range("n_max", n_max, 0, 1000)
    if isinstance(n, int):
        check_int_range("n", n, 0, n_max)
    else:
        check_schedule_value("n", n)
    check_positive("omega", omega)


@register("fda", validate=_check_fda,
          paper="FDA: Frequency Domain Approximation (Xu et al., NeurIPS 2021), BiBench code",
          formula="sign(x), sign(0)=+1; g·(4ω/π)·Σ_{i=0..n} cos((2i+1)ωx), zero where |x| > 1; "
                  "ω = 0.1, n from `schedules.fda_terms` (9 → 18)",
          result="–")
def fda(x, *, n=9, omega=0.1, n_max=18):
    """Sign with FDA's Fourier-series gradient (BiBench ``FDA_BinaryQuantize``).

    ``n`` may be a traced integer (the term schedule); terms beyond ``n_max`` are never summed,
    so keep ``n <= n_max``. |x| == 1 still passes (the reference zeroes only |x| > 1). With
    BiBench's learned noise-adaption term: :func:`fda_weight` and :func:`fda_act`.
    """
    static_max = n if isinstance(n, int) else n_max
    return _fda_estimator(float(omega), static_max)(x, jnp.asarray(n))


@functools.lru_cache(maxsize=None)
def _fda_estimator(omega, n_max):
    # One custom_vjp per (omega, n_max), so repeated calls do not retrace.
    return estimator(lambda v, n: sign(v), lambda v, n: _fda_derivative(v, n, omega, n_max))


# FDA's noise-adaption module (BiBench ``fda.py``: ``NoiseAdaption`` / ``NoiseAdaption_a``):
# e(v) = fc2(relu(fc1(v))) + 0.1·sin(v) on rows v of width d, with bias-free fc1: d -> d//k and
# fc2: d//k -> d. The layer adds alpha(e)·e to the binarized value; alpha follows
# `schedules.fda_noise_weight` (0.1 before the first update, the reference buffer's value).

def fda_noise_init(key, d: int, reduction: int = 64, dtype=jnp.float32) -> dict:
    """``fc1 [d, d//k]`` and ``fc2 [d//k, d]`` with torch ``nn.Linear``'s default init,
    ``U(−1/sqrt(fan_in), 1/sqrt(fan_in))``. ``d < k`` gives a zero-width MLP (only the sine)."""
    hidden = d // reduction
    k1, k2 = jax.random.split(key)
    b1 = 1.0 / math.sqrt(d)
    b2 = 1.0 / math.sqrt(hidden) if hidden else 0.0
    return {"fc1": jax.random.uniform(k1, (d, hidden), dtype, -b1, b1),
            "fc2": jax.random.uniform(k2, (hidden, d), dtype, -b2, b2)}


def noise_adaption(rows, fc1, fc2):
    """FDA's noise term ``relu(rows @ fc1) @ fc2 + 0.1·sin(rows)`` on rows ``[..., d]``."""
    return jax.nn.relu(rows @ fc1) @ fc2 + 0.1 * jnp.sin(rows)


def _weight_rows(x):
    # One row per output channel (the last axis of a Flax kernel), like torch's w.view(out, -1).
    return x.reshape(-1, x.shape[-1]).T


def _check_fda_noise(n=9, omega=0.1, n_max=18, alpha=0.1, reduction=64, seed=0, **kw):
    _check_fda(n, omega, n_max)
    check_int_range("reduction", reduction, 1, 1 << 20)
    check_int_range("seed", seed, 0, 2**31 - 1)
    check_schedule_value("alpha", alpha, lo=0)
    if "scale" in kw:
        check_choice("scale", kw["scale"], (True, False))


def _fda_weight_init(x, *, reduction=64, seed=0, **_):
    # A fixed seed keeps `init` a function of x alone; use `fda_noise_init` with a per-layer
    # key for independent draws.
    return fda_noise_init(jax.random.PRNGKey(seed), math.prod(x.shape[:-1]), reduction,
                          jnp.result_type(x))


def _fda_act_init(x, *, reduction=64, seed=0, **_):
    return fda_noise_init(jax.random.PRNGKey(seed), x.shape[-1], reduction, jnp.result_type(x))


@register("fda_weight", validate=_check_fda_noise, init=_fda_weight_init, bits=None,
          paper="FDA: Frequency Domain Approximation (Xu et al., NeurIPS 2021), BiBench code",
          formula="(sign(W) + α(e)·[fc2(relu(fc1(W_c))) + 0.1·sin(W_c)])·sg(mean|W_c|) per output "
                  "channel c, sign(0)=+1; FDA gradient to sign, exact gradient through the "
                  "noise MLP (fc1, fc2 learned); α(e) = `schedules.fda_noise_weight`",
          result="–")
def fda_weight(x, *, fc1, fc2, n=9, omega=0.1, n_max=18, alpha=0.1, reduction=64, seed=0,
               scale=True):
    """BiBench's FDA layer weight: FDA sign plus ``alpha``·noise adaption, times mean|W|.

    Each output channel's weights (all axes but the last, flattened in Flax order) form one
    row of width d for the noise MLP (``fc1 [d, d//reduction]``, ``fc2 [d//reduction, d]``).
    ``alpha`` (traced per epoch by :func:`bnn_jax.quant.schedules.fda_noise_weight`; 0.1 is the
    reference's value before its first update) and ``n`` are schedule values. ``scale=False``
    drops the stop-gradient per-channel mean|W| (BiBench applies it). Not 1-bit: the noise
    term makes the value real. ``reduction``/``seed`` only affect ``init``.
    """
    del reduction, seed
    noise = noise_adaption(_weight_rows(x), fc1, fc2).T.reshape(x.shape)
    out = fda(x, n=n, omega=omega, n_max=n_max) + alpha * noise
    if scale:
        out = out * jax.lax.stop_gradient(mean(jnp.abs(x), axis=_out_axes(x), keepdims=True))
    return out


@register("fda_act", validate=_check_fda_noise, init=_fda_act_init, bits=None,
          paper="FDA: Frequency Domain Approximation (Xu et al., NeurIPS 2021), BiBench code",
          formula="sign(x) + α(e)·[fc2(relu(fc1(x))) + 0.1·sin(x)] over the channel (last) "
                  "axis, sign(0)=+1; FDA gradient to sign, exact gradient through the noise MLP",
          result="–")
def fda_act(x, *, fc1, fc2, n=9, omega=0.1, n_max=18, alpha=0.1, reduction=64, seed=0):
    """BiBench's FDA layer input: FDA sign plus ``alpha``·noise adaption over channels.

    The MLP acts on the last (channel) axis at every position, as ``NoiseAdaption_a`` on NCHW
    (and ``NoiseAdaption`` on a linear layer's ``[tokens, in]`` input).
    """
    del reduction, seed
    return fda(x, n=n, omega=omega, n_max=n_max) + alpha * noise_adaption(x, fc1, fc2)


# ---------------------------------------------------------------------------------------------
# ReActNet
# ---------------------------------------------------------------------------------------------

def _shift(x, b, convention):
    # The code adds a learnable bias (init 0); the paper subtracts a learnable threshold.
    return x + b if convention == "code" else x - b


def _init_channel_zeros(x, **_):
    return {"beta": jnp.zeros(x.shape[-1:], jnp.result_type(x))}


@register("rsign", init=_init_channel_zeros,
          validate=lambda convention="code": check_choice("convention", convention, CONVENTIONS),
          paper="ReActNet (Liu et al., ECCV 2020), RSign",
          formula="sign(x + β_c) (code `LearnableBias`) or sign(x − β_c) (paper), sign(0)=+1; "
                  "β init 0; ApproxSign gradient g·max(0, 2 − 2|x ± β|) to x and ∓β",
          result="ReActNet-A ImageNet top-1 69.5 [README] (paper abstract 69.4)")
def rsign(x, *, beta, convention="code"):
    """ReActNet's RSign: sign of a per-channel (last axis) shifted input, ApproxSign gradient.

    ``convention="code"`` (default) is the released ``LearnableBias`` + sign, i.e.
    ``sign(x + beta)``; ``"paper"`` is the paper's ``sign(x - beta)``. The two are the same
    model with beta negated.
    """
    return approx_sign(_shift(x, beta, convention))


def _init_rprelu(x, **_):
    c = x.shape[-1:]
    dt = jnp.result_type(x)
    return {"gamma": jnp.zeros(c, dt), "zeta": jnp.zeros(c, dt), "slope": jnp.full(c, 0.25, dt)}


@register("rprelu", kind="activation", bits=None, init=_init_rprelu,
          validate=lambda convention="code": check_choice("convention", convention, CONVENTIONS),
          paper="ReActNet (Liu et al., ECCV 2020), RPReLU",
          formula="PReLU(x − γ_c; slope_c) + ζ_c (paper) or PReLU(x + γ_c) + ζ_c (code); "
                  "γ = ζ = 0, slope = 0.25 at init",
          result="ReActNet-A ImageNet top-1 69.5 [README]")
def rprelu(x, *, gamma, zeta, slope, convention="code"):
    """ReActNet's RPReLU: a per-channel shift, PReLU with per-channel slope, another shift.

    ``convention="code"`` adds ``gamma`` (``move1`` then ``PReLU`` then ``move2``);
    ``"paper"`` subtracts it. Slope init 0.25 is ``nn.PReLU``'s default.
    """
    v = _shift(x, gamma, convention)
    # torch's PReLU uses the slope at exactly 0 (x > 0 ? g : a g).
    return jnp.where(v > 0, v, slope * v) + zeta

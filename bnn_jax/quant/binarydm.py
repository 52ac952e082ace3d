"""BinaryDM (Zheng, Qin et al., 2024): Learnable Multi-basis Binarizer and progressive binarization.

Follows Xingyu-Zheng/BinaryDM ``ours_util.py`` (``BNNConv2d``/``BNNLinear``) and
``ddpm_ours.py`` (commit 2cc5b24):

* order 2: ``W_b = σ_I·sign(W) + σ_II·sign(W − σ_I·sign(W))`` with learned per-output-channel
  σ's; first call ``σ_I = mean|W|``, ``σ_II = mean|W − σ_I·sign(W)|`` per channel. The residual
  is differentiated through, so W gets gradient from both bases and σ_I also from the residual.
* order 1: ``σ_I·sign(W)`` with a learned per-output-channel σ_I, first call ``mean|W|``:
  the order-1 path sets ``init_scale = True`` after its first forward (``ours_util.py`` lines
  100-101, 168-169, 223-224), so σ_I is initialized once and then trained (default,
  ``dynamic_scale=False``). ``dynamic_scale=True`` is the text-to-image variant
  ``txt2img/util_binarydm.py`` (present in commits c20db6f-de07b57, removed in ce7a7a5), whose
  order-1 path never sets the flag: σ_I is overwritten with ``mean|W|`` on every forward, in
  effect a stop-gradient per-channel mean|W| (XNOR scaling).
* sign: ``torch.sign`` (0 at 0) with gradient ``1[|x| <= 1]`` (zeroed only for |x| > 1);
  ``sign_zero=1`` selects sign(0) = +1 (truly binary, packable).
* activations (``_ActQ``, on every BNN layer input and on q, k, the softmax weights and v in
  attention): signed LSQ, ``α·round(clip(x/α, −2^(b−1), 2^(b−1) − 1))``, 8 bits by default,
  no step floor, LSQ gradient scale ``1/sqrt(numel·Q_P)``. ⚠ The reference sets
  ``init_state`` instead of ``init_scale`` (``ours_util.py`` lines 47-49), so α is
  overwritten with ``2·mean|x|/sqrt(Q_P)`` on EVERY forward: a stop-gradient dynamic scale
  (``dynamic_scale=True``, default); ``dynamic_scale=False`` is the learned α the paper
  describes. The A4 setting of the paper's table is a config value that is not released (use
  ``bits=4``).
* schedule: the reference switches activation quantization on at its 6th iteration
  (:func:`progressive_binarization`); the paper's own switch-on step is not public. Which
  layers have order 1 is fixed when the U-Net is built (``openaimodel_ours.py`` lines
  724-735: the middle block, input blocks 6-11 and output blocks 0-5); no released commit
  switches layers to one basis later in training.

The Low-rank Representation Mimicking loss is in ``bnn_jax.train.losses``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from bnn_jax.quant.core import (SIGN_ZERO, clipped_ste, exact_div, grad_scale, mean,
                                per_channel_axes, sign_of)
from bnn_jax.quant.lsq import levels, round_clip
from bnn_jax.quant.registry import (check, check_choice, check_int_range, check_sign_zero, register)

# BinaryQuantize: sign with the gradient zeroed only where |x| > 1.
_SIGN = {z: clipped_ste(sign_of(z)) for z in SIGN_ZERO}


def _sign(x, sign_zero):
    return _SIGN[sign_zero](x, 1.0)


def lmb_init(x, order: int = 2, channel_axis: int = -1, sign_zero: int = 0) -> dict:
    """First-call σ's: σ_I = mean|W| per channel, σ_II = mean|W − σ_I·sign(W)| per channel."""
    axes = per_channel_axes(x.ndim, channel_axis)
    w = jax.lax.stop_gradient(x)
    sigma1 = mean(jnp.abs(w), axis=axes, keepdims=True)
    if order == 1:
        return {"sigma1": sigma1}
    sigma2 = mean(jnp.abs(w - sign_of(sign_zero)(w) * sigma1), axis=axes, keepdims=True)
    return {"sigma1": sigma1, "sigma2": sigma2}


def _check_axis(channel_axis=-1, sign_zero=0, **kw):
    check(isinstance(channel_axis, int), f"channel_axis must be an int, got {channel_axis!r}")
    check_sign_zero(sign_zero)
    if "dynamic_scale" in kw:
        check_choice("dynamic_scale", kw["dynamic_scale"], (True, False))


_PAPER = "BinaryDM: Towards Accurate Binarization of Diffusion Models (Zheng, Qin et al., 2024)"
_RESULT = ("LSUN-Bedrooms 256 LDM-4 (DDIM 100): W1.1/A4 ; W1.1/A8 ; W1.1/A32 FID 7.11 ; 6.60 ; "
           "6.42 (FP 3.09) [README image]")


@register("binarydm_lmb1", validate=_check_axis,
          init=lambda x, channel_axis=-1, dynamic_scale=False, sign_zero=0:
          lmb_init(x, 1, channel_axis),
          paper=_PAPER,
          formula="σ_I·sign(W), sign(0)=0 (sign_zero=1: +1); learned per-channel σ_I from "
                  "σ_I₀ = mean_ch|W| (ours_util.py l. 215-224); dynamic_scale=True: "
                  "sg(mean_ch|W|) every call (removed txt2img/util_binarydm.py); g·1[|W| ≤ 1]",
          result=_RESULT)
def binarydm_lmb1(x, *, sigma1, channel_axis=-1, dynamic_scale=False, sign_zero=0):
    """Order-1 LMB (BinaryDM's inner U-Net groups): one basis ``σ_I·sign(W)``.

    By default ``sigma1`` is learned from its ``init`` value (``ours_util.py``). With
    ``dynamic_scale=True`` (the txt2img variant) ``sigma1`` is ignored and replaced by the
    stop-gradient per-channel mean|W|; it then receives zero gradient.
    """
    if dynamic_scale:
        axes = per_channel_axes(x.ndim, channel_axis)
        sigma1 = jax.lax.stop_gradient(mean(jnp.abs(x), axis=axes, keepdims=True))
    return _sign(x, sign_zero) * sigma1


@register("binarydm_lmb", aliases=("binarydm_lmb2",), validate=_check_axis, bits=2,
          init=lambda x, channel_axis=-1, sign_zero=0: lmb_init(x, 2, channel_axis, sign_zero),
          paper=_PAPER,
          formula="σ_I·sign(W) + σ_II·sign(W − σ_I·sign(W)), sign(0)=0 (sign_zero=1: +1), "
                  "learned per-channel σ's (σ_I₀ = mean|W|, σ_II₀ = mean|W − σ_I₀ sign W|); "
                  "g·1[|·| ≤ 1] per basis",
          result=_RESULT)
def binarydm_lmb(x, *, sigma1, sigma2, channel_axis=-1, sign_zero=0):
    """Order-2 Learnable Multi-basis Binarizer (BinaryDM's outer, high-resolution groups).

    ``sigma1``/``sigma2`` have the per-channel keepdims shape given by ``init`` (for a Flax
    HWIO conv kernel, channels are the last axis).
    """
    del channel_axis  # only used by init; the sigma shapes carry the broadcasting
    first = _sign(x, sign_zero) * sigma1
    return first + _sign(x - first, sign_zero) * sigma2


def _act_scale(x, bits):
    _, qp = levels(bits, True)
    return exact_div(2.0 * mean(jnp.abs(jax.lax.stop_gradient(x))), math.sqrt(qp))


def _check_act(bits=8, dynamic_scale=True):
    check_int_range("bits", bits, 2, 16)
    check_choice("dynamic_scale", dynamic_scale, (True, False))


@register("binarydm_act", validate=_check_act, bits=lambda bits=8, dynamic_scale=True: bits,
          init=lambda x, bits=8, dynamic_scale=True: {"alpha": _act_scale(x, bits)},
          paper=_PAPER,
          formula="α·round(clip(x/α, −2^(b−1), 2^(b−1)−1)), b = 8; α = sg(2·mean|x|/sqrt(Q_P)) "
                  "every call (ours_util.py l. 47-49) or learned from that init "
                  "(dynamic_scale=False); "
                  "g·1[−Q_N ≤ x/α ≤ Q_P], dα LSQ with scale 1/sqrt(N·Q_P)",
          result=_RESULT)
def binarydm_act(x, *, alpha, bits=8, dynamic_scale=True):
    """BinaryDM's activation quantizer (``_ActQ``): signed per-tensor LSQ without a step floor.

    With ``dynamic_scale=True`` (the reference's behaviour) ``alpha`` is ignored and replaced
    by the stop-gradient ``2·mean|x|/sqrt(Q_P)``; it then receives zero gradient.
    """
    qn, qp = levels(bits, True)
    if dynamic_scale:
        alpha = _act_scale(x, bits)
    a = grad_scale(alpha, 1.0 / math.sqrt(x.size * qp))
    return round_clip(x / a, qn, qp) * a


def progressive_binarization(step, *, num_groups: int = 5, steps_per_group: int = 1,
                             act_quant_delay: int | None = None,
                             single_basis_step: int | None = None):
    """BinaryDM's progressive schedule as a pure function of the (traced) step.

    Returns ``(binary, act_quant, multi_basis)``: ``binary[g]`` is True once U-Net group ``g``
    is binarized, ``act_quant`` once activation quantization is on, ``multi_basis`` while the
    order-2 layers still use their second basis. The reference (``ddpm_ours.py`` lines
    485-500, ``on_train_batch_start``) starts full precision and switches one group per
    training iteration from the middle outward (group 4 = middle block at step 0, ..., group
    0 at step 4), then turns on activation quantization at step 5 (the 6th iteration); it never
    drops the second basis, so ``multi_basis`` stays True by default. ``single_basis_step``
    (not in the reference) makes ``multi_basis`` False from that step on. ``steps_per_group``
    stretches the binarization phase (the paper may use a longer one, which is not public);
    ``act_quant_delay`` defaults to ``num_groups * steps_per_group``.
    """
    check_int_range("num_groups", num_groups, 1, 1 << 20)
    check_int_range("steps_per_group", steps_per_group, 1, 1 << 30)
    if act_quant_delay is None:
        act_quant_delay = num_groups * steps_per_group
    step = jnp.asarray(step)
    order = num_groups - 1 - jnp.arange(num_groups)  # innermost group goes first
    binary = step >= order * steps_per_group
    multi_basis = (jnp.asarray(True) if single_basis_step is None
                   else step < single_basis_step)
    return binary, step >= act_quant_delay, multi_basis

"""BiViT (He et al., ICCV 2023; ThisisBillhe/BiViT): softmax-aware attention binarization and
row-centred weights with a learned per-channel scale.

Reference quirks kept: the SAB threshold is ``0.25·max_j P_ij`` per row and its backward is the
exact softmax Jacobian (``sg(A_b - P) + P``, bypassing the quantizer's own clipped backward);
weights are centred per output channel, binarized with the exclusive clipped STE
(``1[|c| < 1]``, ``BinaryQuantizer``'s ``ge(1)``/``le(-1)``) and scaled by a learned alpha
initialized to the *uncentred* ``mean|W|``. Activations: ``bnn_ste(boundary="exclusive")``.
``sign(0) = +1`` (the reference's ``torch.sign`` gives 0 at 0; outputs stay bit-packable).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bnn_jax.quant.classic import bnn_ste
from bnn_jax.quant.core import mean, per_channel_axes, straight_through
from bnn_jax.quant.registry import check, check_choice, register


def sab_threshold_mask(probs, *, ratio=0.25):
    """1 where ``P_ij >= ratio·max_j P_ij`` (row-adaptive threshold), else 0."""
    thresh = jnp.max(probs, axis=-1, keepdims=True) * ratio
    return jnp.where(probs < thresh, 0, 1).astype(jnp.result_type(probs))


def _sab(scores, ratio):
    return sab_threshold_mask(jax.nn.softmax(scores, axis=-1), ratio=ratio)


def _check_sab(ratio=0.25):
    check(isinstance(ratio, (int, float)) and 0 < ratio <= 1,
          f"ratio must be a number in (0, 1], got {ratio!r}")


@register("sab_binarize", validate=_check_sab, kind="activation",
          paper="BiViT (He et al., ICCV 2023), Softmax-aware Binarization",
          formula="P = softmax(scores); A = 1[P_ij ≥ 0.25·max_j P_ij] ∈ {0,1}; backward = exact "
                  "softmax Jacobian (sg(A − P) + P)",
          result="ImageNet Swin-S top-1 75.6; COCO Swin-T Cascade Mask R-CNN box mAP 40.8 [ABS]")
def sab_binarize(x, *, ratio=0.25):
    """Binarize attention from its logits ``x`` (softmax over the last axis) to {0, 1}.

    Forward is exactly the thresholded softmax; the gradient is the softmax's, as in
    ``BiAttention_SAB``.
    """
    return _sab_estimator(float(ratio))(x)


@functools.lru_cache(maxsize=None)
def _sab_estimator(ratio):
    # One custom_vjp per ratio, so repeated eager calls do not retrace.
    return straight_through(lambda s: _sab(s, ratio), lambda s: jax.nn.softmax(s, axis=-1))


def _init_bivit(x, **_):
    return {"alpha": jax.lax.stop_gradient(mean(jnp.abs(x), axis=per_channel_axes(x.ndim, -1)))}


def _check_bivit_weight(boundary="exclusive", binary=True):
    check_choice("boundary", boundary, ("inclusive", "exclusive"))
    check_choice("binary", binary, (True, False))


@register("bivit_weight", init=_init_bivit, validate=_check_bivit_weight,
          bits=lambda boundary="exclusive", binary=True: 1 if binary else None,
          paper="BiViT (He et al., ICCV 2023), parameterized weight scales",
          formula="α_c·sign(W − mean_c W), sign(0)=+1; g·α·1[|W − mean| < 1] through the "
                  "(differentiated) "
                  "centring; dα = Σ sign(W − mean)·g; α init mean|W_c|",
          result="ImageNet Swin-S top-1 75.6 [ABS]")
def bivit_weight(x, *, alpha, boundary="exclusive", binary=True):
    """BiViT weights (``BinaryLinear_adapscaling``): learned per-output-channel alpha times the
    sign of the per-channel-centred kernel (last axis = output channel).

    ``binary=False`` passes the kernel through unchanged (alpha unused): the full-precision
    part of a Cross-layer Binarization stage, which keeps the parameter tree of the binary
    stage so that the next stage can start from it (``config.init_from``).
    """
    if not binary:
        return x
    centred = x - mean(x, axis=per_channel_axes(x.ndim, -1), keepdims=True)
    return alpha * bnn_ste(centred, boundary=boundary)

"""PB-LLM (Shang, Yuan, Wu, Dong; ICLR 2024): partially binarized weights, QAT and GPTQ-PB.

Follows hahnyuan/PB-LLM (commit fe85da9): ``quant/outlier_quantizer.py``
(``BinaryXnorExceptOutliersLinear``, QAT) and ``gptq_pb/{gptq.py, low_quant.py,
high_quant.py}`` (PTQ).

QAT: a fixed salient mask picks the extreme values of W (both tails, fraction f); salient
weights stay in 8-bit (the reference fake-quantizes the latent weights to 8 bits ONCE at mask
time and then freezes them unless ``train_outlier``); the rest is ``s·sign(W)`` with an
identity STE and ``s = sg(mean|W|)`` over the non-salient entries, recomputed every step.

Choices and deviations (each selectable):

* ⚠ The reference's ``weight_quant_8bit`` uses ``round(min(W))`` as zero point and casts
  possibly negative codes to uint8, which wraps. :func:`asym_fake_quant` is the standard
  per-row asymmetric quantizer instead: ``scale = (max − min)/255``, ``zp = round(−min/scale)``.
* The reference's QAT scale is one scalar per matrix (a mean over the flattened masked
  tensor); ``scale_granularity="row"`` is the per-row scale the paper's derivation suggests.
* Salient counts are exact, ``round(f·numel)``; the reference's ``kthvalue`` thresholds (QAT)
  select one entry fewer and its ``<= sorted[int(n·f)]`` rule (GPTQ-PB) binarizes one more.
  ``count_rule="code"`` reproduces the reference.
* GPTQ-PB's Hessian is ``2/n·XᵀX`` with ``n`` the number of calibration samples (sequences),
  as ``gptq_pb/gptq.py`` lines 35-51; ``hessian_norm="tokens"`` divides by the token count.
* GPTQ-PB's binarizer statistics include zeros at the salient positions (⚠ in the code,
  ``binarizer_stats="code"``); ``"masked"`` uses only the binarized entries.

Orientation: every ``kernel`` is a Flax kernel ``[in, out]`` (``y = x @ kernel``); rows of
the paper (output channels) are its last axis. ``sign(0) = 0`` (``torch.sign``); ``sign_zero=1``
selects +1 (truly binary, packable).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bnn_jax.quant.core import SIGN_ZERO, exact_div, identity_ste, per_channel_axes, sign_of
from bnn_jax.quant.registry import (check, check_choice, check_sign_zero, register)

# --------------------------------------------------------------------------------------------
# 8-bit per-row asymmetric fake quantization
# --------------------------------------------------------------------------------------------


def asym_fake_quant(w, *, bits: int = 8, channel_axis: int | None = -1,
                    include_zero: bool = False):
    """Standard asymmetric min-max fake quantization, one (scale, zero point) per channel.

    ``q = clip(round(w/scale) + zp, 0, 2^b − 1)``, ``ŵ = scale·(q − zp)`` with
    ``scale = (max − min)/(2^b − 1)`` and ``zp = round(−min/scale)``. ``include_zero`` widens
    the range to contain 0 (GPTQ's ``HighQuantizer``, used by GPTQ-PB). Works on jax and numpy
    inputs (numpy in, numpy out). A constant channel gets scale 1.
    """
    xp = np if isinstance(w, np.ndarray) else jnp
    axes = per_channel_axes(w.ndim, channel_axis)
    lo = xp.min(w, axis=axes, keepdims=True)
    hi = xp.max(w, axis=axes, keepdims=True)
    if include_zero:
        lo, hi = xp.minimum(lo, 0), xp.maximum(hi, 0)
    levels = 2 ** bits - 1
    span = hi - lo
    scale = (span / levels) if xp is np else exact_div(span, float(levels))
    scale = xp.where(scale > 0, scale, xp.ones_like(scale))
    zero = xp.round(-lo / scale)
    q = xp.clip(xp.round(w / scale) + zero, 0, levels)
    return scale * (q - zero)


def asym_fake_quant_codes(w, *, bits: int = 8, channel_axis: int | None = -1,
                          include_zero: bool = False):
    """(scale, zero point) of :func:`asym_fake_quant` (numpy), for checking values on the grid."""
    axes = per_channel_axes(w.ndim, channel_axis)
    lo, hi = w.min(axis=axes, keepdims=True), w.max(axis=axes, keepdims=True)
    if include_zero:
        lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
    scale = (hi - lo) / (2 ** bits - 1)
    scale = np.where(scale > 0, scale, 1)
    return scale, np.round(-lo / scale)


# --------------------------------------------------------------------------------------------
# Salient masks
# --------------------------------------------------------------------------------------------


def _rank_mask(score, count):
    """True on the ``count`` largest entries of ``score`` (stable order: later index wins ties)."""
    flat = np.asarray(score).reshape(-1)
    order = np.argsort(flat, kind="stable")
    mask = np.zeros(flat.size, bool)
    if count > 0:
        mask[order[flat.size - count:]] = True
    return mask.reshape(np.shape(score))


def qat_salient_mask(w, salient_fraction: float, *, count_rule: str = "exact"):
    """Both tails of W's values, fraction ``salient_fraction`` in total (True = salient).

    ``count_rule="exact"``: the ``round(f·n/2)`` smallest and ``round(f·n) − round(f·n/2)``
    largest entries. ``"code"``: the reference's strict comparisons with the
    ``kthvalue(int(n·f/2))`` and ``kthvalue(int(n·(1 − f/2)))`` thresholds.
    """
    check(0 <= salient_fraction <= 1, f"salient_fraction must be in [0, 1], got {salient_fraction}")
    check_choice("count_rule", count_rule, ("exact", "code"))
    w = np.asarray(jax.device_get(w))
    n = w.size
    if count_rule == "code":
        flat = np.sort(w.reshape(-1))
        k_lo, k_hi = int(n * salient_fraction / 2), int(n * (1 - salient_fraction / 2))
        lower = flat[max(k_lo, 1) - 1] if k_lo >= 1 else -np.inf
        upper = flat[max(k_hi, 1) - 1]
        return jnp.asarray((w < lower) | (w > upper))
    total = int(round(n * salient_fraction))
    n_low = int(round(n * salient_fraction / 2))
    n_low = min(n_low, total)
    return jnp.asarray(_rank_mask(w, total - n_low) | _rank_mask(-w, n_low))


def pbllm_prepare(kernel, salient_fraction: float, *, count_rule: str = "exact"):
    """QAT start: ``(latent kernel fake-quantized to 8 bits per output channel, salient mask)``,
    the reference's one-time ``weight_quant_8bit`` step (with the standard quantizer)."""
    mask = qat_salient_mask(kernel, salient_fraction, count_rule=count_rule)
    return asym_fake_quant(jnp.asarray(kernel), channel_axis=-1), mask


_SIGN_IDENTITY = {z: identity_ste(sign_of(z)) for z in SIGN_ZERO}
_fake_quant_identity = identity_ste(lambda w: asym_fake_quant(w, channel_axis=-1))


def _check_qat(salient_fraction=0.1, scale_granularity="matrix", train_salient=False,
               salient_quant="prequantized", count_rule="exact", sign_zero=0):
    check(isinstance(salient_fraction, (int, float)) and 0 <= salient_fraction <= 1,
          f"salient_fraction must be in [0, 1], got {salient_fraction!r}")
    check_choice("scale_granularity", scale_granularity, ("matrix", "row"))
    check_choice("train_salient", train_salient, (False, True))
    check_choice("salient_quant", salient_quant, ("prequantized", "fake_quant"))
    check_choice("count_rule", count_rule, ("exact", "code"))
    check_sign_zero(sign_zero)


def _qat_init(x, salient_fraction=0.1, count_rule="exact", **_):
    # A 0/1 float array (not bool) so that it can sit in a parameter tree next to the kernel.
    mask = qat_salient_mask(x, salient_fraction, count_rule=count_rule)
    return {"salient_mask": mask.astype(jnp.result_type(x))}


@register("pbllm_weight", validate=_check_qat, init=_qat_init,
          bits=lambda salient_fraction=0.1, **_: 1 + 7 * salient_fraction,
          paper="PB-LLM: Partially Binarized Large Language Models (Shang et al., ICLR 2024)",
          formula="where(mask, W₈ (frozen unless train_salient), s·sign(W)), sign(0)=0 "
                  "(sign_zero=1: +1), s = sg(mean|W| over "
                  "non-salient) per matrix (or row); mask = both tails of W, fraction f; "
                  "identity STE",
          result="– (paper Tables 1–3 not transcribed) [GAP]")
def pbllm_weight(x, *, salient_mask, salient_fraction=0.1, scale_granularity="matrix",
                 train_salient=False, salient_quant="prequantized", count_rule="exact",
                 sign_zero=0):
    """PB-LLM QAT partially binarized kernel ``[in, out]``.

    ``salient_mask`` (nonzero = salient) is fixed after ``init``: ``init`` returns it as a 0/1
    float array so a layer can keep it with its parameters; it gets zero gradient (keep it out
    of weight decay). With the default
    ``salient_quant="prequantized"`` the caller replaces the latent kernel once by
    :func:`pbllm_prepare` (as the reference does) and the salient entries are used as they
    are; ``"fake_quant"`` fake-quantizes them to 8 bits on every call (identity STE).
    ``salient_fraction``/``count_rule`` only matter to ``init``.
    """
    del salient_fraction, count_rule
    mask = jax.lax.stop_gradient(jnp.asarray(salient_mask)) != 0
    keep = (~mask).astype(x.dtype)
    a = jnp.abs(jax.lax.stop_gradient(x)) * keep
    if scale_granularity == "matrix":
        scale = jnp.sum(a) / jnp.maximum(jnp.sum(keep), 1)
    else:
        axes = per_channel_axes(x.ndim, -1)
        scale = jnp.sum(a, axis=axes, keepdims=True) / jnp.maximum(
            jnp.sum(keep, axis=axes, keepdims=True), 1)
    binary = _SIGN_IDENTITY[sign_zero](x) * scale
    salient = _fake_quant_identity(x) if salient_quant == "fake_quant" else x
    if not train_salient:
        salient = jax.lax.stop_gradient(salient)
    return jnp.where(mask, salient, binary)


# --------------------------------------------------------------------------------------------
# PTQ: GPTQ-PB
# --------------------------------------------------------------------------------------------


HESSIAN_NORMS = ("samples", "tokens")


def pb_hessian(x, *, hessian_norm: str = "samples") -> np.ndarray:
    """``H = 2/n · XᵀX`` (float64) over the calibration inputs ``x``, X = all token rows.

    ``hessian_norm="samples"`` (the reference): ``x [samples, seq, in]`` and ``n`` = number of
    samples (sequences); a 2-D ``x [seq, in]`` is one sample. ``gptq.py`` lines 35-51 keep the
    running mean ``H·n/(n + b) + 2/(n + b)·XᵀX`` with ``b = inp.shape[0]`` after unsqueezing
    2-D inputs, and ``run.py`` lines 155-156 feed one sequence per call. ``"tokens"``:
    ``x [..., in]`` and ``n`` = number of token rows (seq times smaller ``H`` and loss).
    """
    check_choice("hessian_norm", hessian_norm, HESSIAN_NORMS)
    x = np.asarray(x, np.float64)
    if hessian_norm == "samples":
        check(x.ndim in (2, 3), "with hessian_norm='samples' x must be [samples, seq, in] or "
              f"one sample [seq, in], got shape {x.shape}; pass hessian_norm='tokens' to "
              "average over token rows of any [..., in]")
        n = 1 if x.ndim == 2 else x.shape[0]
    x = x.reshape(-1, x.shape[-1])
    n = x.shape[0] if hessian_norm == "tokens" else n
    return 2.0 / n * (x.T @ x)


def _binarizer(w_masked_rows, mask_rows, stats):
    """Per-row ``(mean, alpha)`` of the reference's "xnor" binarizer for one column group."""
    if stats == "code":  # statistics over the whole group, zeros at salient positions included
        mu = w_masked_rows.mean(axis=1, keepdims=True)
        alpha = np.abs(w_masked_rows - mu).mean(axis=1, keepdims=True)
        return mu, alpha
    count = np.maximum(mask_rows.sum(axis=1, keepdims=True), 1)
    mu = (w_masked_rows * mask_rows).sum(axis=1, keepdims=True) / count
    alpha = (np.abs(w_masked_rows - mu) * mask_rows).sum(axis=1, keepdims=True) / count
    return mu, alpha


def gptq_pb(kernel, x, *, salient_fraction: float, saliency: str = "magnitude",
            blocksize: int = 128, percdamp: float = 0.01, groupsize: int | None = None,
            high_bits: int = 8, binarizer_stats: str = "code", count_rule: str = "exact",
            use_gptq: bool = True, hessian_norm: str = "samples", sign_zero: int = 0):
    """GPTQ-PB: partial binarization of ``kernel [in, out]`` with GPTQ error compensation.

    ``x [samples, seq, in]`` (or one sample ``[seq, in]``): calibration inputs of the layer,
    whose Hessian :func:`pb_hessian` averages over samples as the reference does
    (``hessian_norm="tokens"``: over token rows, any ``[..., in]``). Salient weights
    (``salient_fraction`` of each column group, by ``|W|`` or the Hessian score
    ``W²/[chol(H⁻¹)]_jj²``) go to an 8-bit per-output-channel asymmetric quantizer calibrated
    on the whole kernel (range including 0); the rest to the per-row "xnor" binarizer
    ``α·sign(w − μ) + μ``. Columns (input features) are quantized in order, in blocks of
    ``blocksize``, each error ``(w − q)/U_ii`` spread over the later columns through
    ``U = chol(H⁻¹)`` (upper), ``H = 2/n·XᵀX + damp·I``, ``damp = percdamp·mean(diag H)``; a
    dead input feature (``H_dd = 0``) gets ``H_dd = 1`` and zero weights before the damping is
    computed (``gptq.py`` lines 69-77). ``use_gptq=False`` is plain rounding (no
    compensation). Runs in float64 numpy on CPU. Returns ``(kernel_hat, salient_mask, loss)``
    with the kernel and mask in ``[in, out]`` layout and GPTQ's summed ``(w − q)²/U_ii²/2``.
    ``sign_zero``: value of the binarizer's sign at 0 (reference ``torch.sign``: 0; 1 for +1).
    """
    check_sign_zero(sign_zero)
    check_choice("saliency", saliency, ("magnitude", "hessian"))
    check_choice("binarizer_stats", binarizer_stats, ("code", "masked"))
    check_choice("hessian_norm", hessian_norm, HESSIAN_NORMS)
    check_choice("count_rule", count_rule, ("exact", "code"))
    check(0 <= salient_fraction <= 1, f"salient_fraction must be in [0, 1], got {salient_fraction}")
    kernel = np.asarray(kernel)
    check(kernel.ndim == 2, f"gptq_pb expects a 2-D kernel [in, out], got shape {kernel.shape}")
    W = kernel.T.astype(np.float64).copy()  # rows = output channels, columns = input features
    rows, cols = W.shape
    groupsize = cols if groupsize is None else groupsize
    check(groupsize % blocksize == 0 or groupsize == cols,
          f"groupsize {groupsize} must be a multiple of blocksize {blocksize}")
    H = pb_hessian(x, hessian_norm=hessian_norm)
    check(H.shape == (cols, cols), f"x has {H.shape[0]} features, the kernel expects {cols}")

    high_scale, high_zero = asym_fake_quant_codes(W, bits=high_bits, channel_axis=0,
                                                  include_zero=True)
    levels = 2 ** high_bits - 1

    def quant_high(w, r=slice(None)):
        q = np.clip(np.round(w / high_scale[r, 0]) + high_zero[r, 0], 0, levels)
        return high_scale[r, 0] * (q - high_zero[r, 0])

    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H[np.diag_indices(cols)] += percdamp * np.mean(np.diag(H))
    Hinv = np.linalg.cholesky(np.linalg.inv(H)).T  # upper Cholesky factor of H^-1

    low_frac = 1 - salient_fraction
    binarize = np.zeros_like(W, dtype=bool)
    stats = []
    for st in range(0, cols, groupsize):
        ed = min(st + groupsize, cols)
        if saliency == "magnitude":
            score = np.abs(W[:, st:ed])
        else:
            score = W[:, st:ed] ** 2 / np.diag(Hinv)[st:ed][None, :] ** 2
        n = score.size
        if count_rule == "code":
            thresh = np.sort(score.reshape(-1))[min(int(n * low_frac), n - 1)]
            binarize[:, st:ed] = score <= thresh
        else:
            n_bin = n - int(round(n * salient_fraction))
            binarize[:, st:ed] = ~_rank_mask(score, n - n_bin)
        mu, alpha = _binarizer(W[:, st:ed] * binarize[:, st:ed], binarize[:, st:ed],
                               binarizer_stats)
        stats.append((mu[:, 0], alpha[:, 0]))

    def quant_low(w, col):
        mu, alpha = stats[col // groupsize]
        d = w - mu
        sgn = np.sign(d) if sign_zero == 0 else np.where(d >= 0, 1.0, -1.0)
        return alpha * sgn + mu

    losses = np.zeros(rows)
    for st in range(0, cols, blocksize):
        ed = min(st + blocksize, cols)
        if not use_gptq:
            for i in range(st, ed):
                W[:, i] = np.where(binarize[:, i], quant_low(W[:, i], i), quant_high(W[:, i]))
            continue
        W1 = W[:, st:ed].copy()
        Q1 = np.zeros_like(W1)
        Err1 = np.zeros_like(W1)
        Hinv1 = Hinv[st:ed, st:ed]
        for i in range(ed - st):
            w = W1[:, i]
            d = Hinv1[i, i]
            q = np.where(binarize[:, st + i], quant_low(w, st + i), quant_high(w))
            Q1[:, i] = q
            losses += (w - q) ** 2 / d ** 2 / 2
            err = (w - q) / d
            W1[:, i:] -= np.outer(err, Hinv1[i, i:])
            Err1[:, i] = err
        W[:, st:ed] = Q1
        W[:, ed:] -= Err1 @ Hinv[st:ed, ed:]
    return W.T.astype(kernel.dtype), ~binarize.T, float(losses.sum())

"""LSQ and LSQ+: learned step size (and offset) quantization (Esser et al., ICLR 2020; Bhalgat
et al., CVPR-W 2020).

Neither paper released code; the "code" behaviour here is the LSQ of nbasyl/OFQ
``src/quantization/quantizer/lsq.py`` (commit 7ed37d1; the same rule as TBT/BiViT's
``ElasticQuantBinarizer``): the step is floored at 1e-5 with a straight-through gradient, its
gradient is scaled by ``g = 1/sqrt(N·Q_P)`` through ``s' = sg(s - s·g) + s·g``, and the input
gradient passes on the closed range ``-Q_N <= x/s <= Q_P`` (torch.clamp). The papers' open
range is ``boundary="exclusive"``. ``N`` is the number of elements sharing one step
(``x.size // step.size``).

``granularity`` says which elements share a step, each form named after its OFQ class:

* ``"tensor"``: one step (``LsqQuantizer(per_channel=False)``, lines 561-568 and 590-591;
  the unsigned init of ``init_rule="code"`` is TBT's instead, see :func:`lsq`);
* ``"token"``: one step per entry of axis −2, the token position of ``[B, N, C]`` or
  ``[B, H, N, d]`` (``LsqQuantizer``, whose default ``per_channel=True`` is what OFQ's layers
  and attention use; lines 544-560 and 582-588): init over all other axes, ``N = B·C``
  (``B·H·d`` for 4-D);
* ``"channel"``: one step per entry of the last axis (``LsqQuantizer4v``, OFQ's quantizer of
  V; lines 730-746 and 774-778): init over all other axes, ``N = numel / C``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from bnn_jax.quant.core import clip, estimator, exact_div, grad_scale, identity_ste, mean
from bnn_jax.quant.registry import check, check_choice, check_int_range, register

STEP_FLOOR = 1e-5
#: LSQ+ MSE init: trim fractions per range end, then least-squares refits (see `mse_init`).
MSE_GRID = 10
MSE_ITERATIONS = 20


def levels(bits, signed):
    """``(Q_N, Q_P)``: signed ``(2^(b-1), 2^(b-1) - 1)``, unsigned ``(0, 2^b - 1)``."""
    return (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def _clip_open_derivative(x, lo, hi):
    return ((x > lo) & (x < hi)).astype(jnp.result_type(x))


_clip_open = estimator(lambda x, lo, hi: jnp.minimum(jnp.maximum(x, lo), hi),
                       _clip_open_derivative)
_round_ste = identity_ste(jnp.round)
_floor_ste = identity_ste(lambda s, lo: jnp.maximum(s, lo))


def round_clip(v, qn, qp, boundary="inclusive"):
    """``round(clip(v, −Q_N, Q_P))`` with LSQ's straight-through gradient (1 inside the range,
    its edges included unless ``boundary="exclusive"``)."""
    c = clip(v, -qn, qp) if boundary == "inclusive" else _clip_open(v, -qn, qp)
    return _round_ste(c)


def _grad_scale_factor(x, step, qp):
    n = x.size // max(1, jnp.size(step))
    return 1.0 / math.sqrt(n * qp)


GRANULARITIES = ("tensor", "token", "channel")


def _check_lsq(bits=2, signed=True, boundary="inclusive", granularity="tensor",
               init_rule="code", **_):
    check_int_range("bits", bits, 2, 16)
    check_choice("signed", signed, (True, False))
    check_choice("boundary", boundary, ("inclusive", "exclusive"))
    check_choice("granularity", granularity, GRANULARITIES)
    check_choice("init_rule", init_rule, ("code", "paper"))


def _step_shape_mean(x, granularity):
    """mean|x| over the elements sharing each step, shaped to broadcast against ``x``."""
    a = jnp.abs(x)
    if granularity == "tensor":
        return mean(a)
    check(x.ndim >= 2, f"granularity={granularity!r} needs an input of at least 2 dimensions "
          f"([..., tokens, channels]), got shape {tuple(x.shape)}; use granularity='tensor'")
    keep = x.ndim - 2 if granularity == "token" else x.ndim - 1
    m = mean(a, axis=tuple(d for d in range(x.ndim) if d != keep))
    return m[:, None] if granularity == "token" else m  # (N, 1) or (C,)


def _lsq_init(x, *, bits=2, signed=True, granularity="tensor", init_rule="code", **_):
    _, qp = levels(bits, signed)
    m = _step_shape_mean(jax.lax.stop_gradient(x), granularity)
    # Unsigned inputs start at 4·mean|x|/sqrt(Q_P) where the references use them: OFQ's
    # per-token and per-channel forms (lsq.py lines 547-554, 733-737) and TBT's per-tensor
    # elastic init (utils_quant.py lines 153-155). OFQ's per-tensor branch (lsq.py line 562)
    # uses 2· for both signs but no OFQ model builds it; it is init_rule="paper" (2· always).
    double = init_rule == "code" and not signed
    return {"step": exact_div((4.0 if double else 2.0) * m, math.sqrt(qp))}


@register("lsq", init=_lsq_init, validate=_check_lsq,
          bits=lambda bits=2, **_: bits,
          paper="LSQ: Learned Step Size Quantization (Esser et al., ICLR 2020)",
          formula="s·round(clip(x/s, −Q_N, Q_P)); dx: 1[−Q_N ≤ x/s ≤ Q_P]; ds: (round(x/s) − x/s "
                  "inside, −Q_N / Q_P outside)·g, g = 1/sqrt(N·Q_P), N elements per step; one "
                  "step per tensor, token (axis −2) or channel (last axis), OFQ lsq.py "
                  "LsqQuantizer / LsqQuantizer4v; init s = 2·mean|x|/sqrt(Q_P), 4· unsigned "
                  "(OFQ lsq.py l. 547-554, 733-737; TBT utils_quant.py l. 153-155)",
          result="ResNet-18 ImageNet W2A2 / W3A3 / W4A4 top-1 67.6 / 70.2 / 71.1 [MEM]")
def lsq(x, *, step, bits=2, signed=True, boundary="inclusive", granularity="tensor",
        init_rule="code"):
    """LSQ fake quantization with a learned step: per tensor, per token or per channel.

    ``granularity`` and ``init_rule`` only affect :meth:`Quantizer.init` (the step's shape and
    value; see the module docstring): ``"token"`` gives a step of shape ``(N, 1)`` for the
    ``N`` positions of axis −2, so later inputs need the same ``N``; ``"channel"`` one of shape
    ``(C,)``. ``init_rule="code"`` is ``2·mean|x|/sqrt(Q_P)`` for signed and
    ``4·mean|x|/sqrt(Q_P)`` for unsigned inputs (OFQ's token/channel forms, TBT's per-tensor
    one); ``"paper"`` is ``2·mean|x|/sqrt(Q_P)`` throughout (also OFQ's unused per-tensor
    branch).
    """
    qn, qp = levels(bits, signed)
    s = grad_scale(_floor_ste(step, STEP_FLOOR), _grad_scale_factor(x, step, qp))
    return round_clip(x / s, qn, qp, boundary) * s


def _check_lsq_plus(bits=2, signed=False, boundary="inclusive", init_rule="minmax", **_):
    _check_lsq(bits, signed, boundary)
    check_choice("init_rule", init_rule, ("minmax", "mse", "3sigma"))


def _minmax_init(x, qn, qp):
    lo, hi = jnp.min(x), jnp.max(x)
    step = exact_div(hi - lo, float(qn + qp))
    return step, lo + qn * step


def mse_init(x, *, bits=2, signed=False, grid=MSE_GRID, iterations=MSE_ITERATIONS):
    """LSQ+'s MSE-optimal ``(step, offset)`` for ``x`` (the first batch), a deterministic search.

    (1) Grid search: the range ``[lo + a·R, hi − b·R]`` (R = max − min; ``a, b`` in
    ``0, 1/(2·grid), ..., (grid−1)/(2·grid)``, i.e. up to 45 % trimmed at each end) with the
    smallest ``||x − x̂||²``, first one on ties. (2) Alternating least squares from there:
    codes ``k = clip(round((x − β)/s), −Q_N, Q_P)`` (the nearest level), then ``(s, β)`` = the
    least-squares line ``x ≈ s·k + β`` for those codes, kept only if the error does not grow
    (a fit with all codes equal or a non-positive slope is skipped). Neither stage can end
    above the min/max init's error (a = b = 0 is on the grid). The result is a local optimum,
    not a certified global one.
    """
    qn, qp = levels(bits, signed)
    v = jax.lax.stop_gradient(x).reshape(-1)
    lo, hi = jnp.min(v), jnp.max(v)
    span = hi - lo
    frac = jnp.arange(grid, dtype=v.dtype) * (0.5 / grid)
    a, b = (f.reshape(-1) for f in jnp.meshgrid(frac, frac, indexing="ij"))
    cand_lo = lo + a * span
    steps = exact_div((hi - b * span) - cand_lo, float(qn + qp))
    # A constant input has no range: any positive step represents it exactly.
    steps = jnp.where(steps > 0, steps, jnp.ones_like(steps))
    offsets = cand_lo + qn * steps

    def codes(s, o):
        return jnp.clip(jnp.round((v - o) / s), -qn, qp)

    def sq_error(s, o):
        return jnp.sum(jnp.square(v - (codes(s, o) * s + o)))

    errors = jax.lax.map(lambda so: sq_error(*so), (steps, offsets))
    best = jnp.argmin(errors)

    def refit(carry, _):
        s, o = carry
        k = codes(s, o)
        km, vm = mean(k), mean(v)
        cov = jnp.sum((k - km) * (v - vm))
        var = jnp.sum(jnp.square(k - km))
        new_s = cov / jnp.where(var > 0, var, 1.0)
        new_o = vm - new_s * km
        ok = (var > 0) & (new_s > 0)
        ok = ok & (sq_error(jnp.where(ok, new_s, s), jnp.where(ok, new_o, o)) <= sq_error(s, o))
        return (jnp.where(ok, new_s, s), jnp.where(ok, new_o, o)), None

    (step, offset), _ = jax.lax.scan(refit, (steps[best], offsets[best]), None,
                                     length=iterations)
    return step, offset


def _lsq_plus_init(x, *, bits=2, signed=False, init_rule="minmax", **_):
    qn, qp = levels(bits, signed)
    if init_rule == "minmax":
        step, offset = _minmax_init(x, qn, qp)
        return {"step": step, "offset": offset}
    if init_rule == "mse":
        step, offset = mse_init(x, bits=bits, signed=signed)
        return {"step": step, "offset": offset}
    mu = mean(x)
    sigma = jnp.sqrt(mean(jnp.square(x - mu)))
    step = jnp.maximum(jnp.abs(mu - 3 * sigma), jnp.abs(mu + 3 * sigma)) / 2 ** (bits - 1)
    return {"step": step, "offset": jnp.zeros_like(step)}


@register("lsq_plus", init=_lsq_plus_init, validate=_check_lsq_plus,
          bits=lambda bits=2, **_: bits,
          paper="LSQ+ (Bhalgat et al., CVPR-W 2020)",
          formula="s·round(clip((x−β)/s, −Q_N, Q_P)) + β; ds as LSQ, dβ = 1[outside]; both scaled "
                  "by g = 1/sqrt(N·Q_P); init min/max (s = (max−min)/(2^b−1), β = min), "
                  "MSE (argmin ||x − x̂||²: trimmed-range grid, then alternating least squares) or "
                  "3σ (s = max(|μ−3σ|, |μ+3σ|)/2^(b−1), β = 0)",
          result="– (EfficientNet-B0 W4A4 numbers not verified)")
def lsq_plus(x, *, step, offset, bits=2, signed=False, boundary="inclusive",
             init_rule="minmax"):
    """LSQ+ fake quantization with a learned step and offset (asymmetric activations).

    The LSQ gradient scale is applied to the offset too. ``init_rule`` only affects
    :meth:`Quantizer.init`: "minmax" (default), the paper's preferred "mse" (:func:`mse_init`)
    or the weights' "3sigma".
    """
    qn, qp = levels(bits, signed)
    g = _grad_scale_factor(x, step, qp)
    s = grad_scale(_floor_ste(step, STEP_FLOOR), g)
    b = grad_scale(offset, g)
    return round_clip((x - b) / s, qn, qp, boundary) * s + b

"""AQT's uniform integer quantizer (Abdolrashidi et al. 2021, "Pareto-optimal quantized ResNet is
mostly 4-bit"; google/aqt ``aqt/jax_legacy/jax/primitives.py`` and ``quantization.py``).

``x -> q(x·s) / s`` with a stop-gradient scale ``s`` from a bound ``B``:

* signed: ``s = N / B``, ``N = 2^(b-1) - 1`` (0.25 for b = 1), ``q = floor(clip(x·s, ±N) + 0.5)``
  (round half up, ``primitives.round_and_clip_to_signed_int``); with ``half_shift`` ``N = 2^(b-1)``,
  clipped to ``±(N - 2^-7)`` and ``q = floor(·) + 0.5`` (the levels ``±0.5, ±1.5, ...``; at b = 1
  this is PokeBNN's binary quantizer with values ``±B/2``);
* unsigned: ``s = 2^b / B``, ``q = clip(floor(x·s), 0, 2^b - 1)``
  (``primitives.floor_and_clip_to_unsigned_int``).

``B`` is a fixed number, ``"max"`` (max|x|; per output channel with ``per_channel``, which is
AQT's weight bound ``max_abs_weights``) or ``"mean_of_max"`` (the batch mean of each example's
max|x|). AQT keeps ``mean_of_max`` as a running average of batch maxima across steps; this
function is stateless, so it averages over the examples of the current call. ``start`` with a
fed ``progress`` leaves ``x`` unquantized early in training (AQT's start steps). The float32
epsilon AQT adds to ``B`` (against division by zero) is added here too. Gradient: the
straight-through estimator inside the clip range, 0 outside.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bnn_jax.quant.core import estimator, round_half_up
from bnn_jax.quant.registry import check, check_int_range, check_schedule_value, register

_EPS = 2.0 ** -7  # primitives.round_and_clip_to_signed_int, half_shift


def signed_levels(bits: int, half_shift: bool) -> float:
    """AQT's ``signed_int_bound``: the largest integer level of a signed ``bits`` code."""
    if half_shift:
        return 2.0 ** (bits - 1)
    return 2.0 ** (bits - 1) - 1.0 if bits > 1 else 0.25


def bound_of(x: jax.Array, bound, per_channel: bool) -> jax.Array:
    """The clip bound ``B`` (stop-gradient), broadcastable against ``x``."""
    if isinstance(bound, (int, float)):
        return jnp.asarray(float(bound), jnp.float32)
    a = jnp.abs(x)
    if bound == "max":
        axes = tuple(range(x.ndim - 1)) if per_channel else None
        b = jnp.max(a, axis=axes, keepdims=True)
    else:  # mean_of_max
        b = jnp.mean(jnp.max(a.reshape(a.shape[0], -1), axis=1))
    return jax.lax.stop_gradient(b)


# n below is the clip limit of the scaled value (traced like any estimator argument).
def _inside(x, scale, n):
    return (jnp.abs(x * scale) <= n).astype(jnp.result_type(x))


_round = estimator(lambda x, scale, n: round_half_up(jnp.clip(x * scale, -n, n)) / scale,
                   _inside)
_half_shift = estimator(lambda x, scale, n: (jnp.floor(jnp.clip(x * scale, -n, n)) + 0.5)
                        / scale, _inside)


def _unsigned_inside(x, scale, n):
    xs = x * scale
    return ((xs >= 0) & (xs < n)).astype(jnp.result_type(x))


_unsigned = estimator(lambda x, scale, n: jnp.clip(jnp.floor(x * scale), 0.0, n - 1) / scale,
                      _unsigned_inside)


def _check_aqt(*, bits, signed, bound, half_shift, per_channel, progress=None, start=0.0):
    check_int_range("bits", bits, 1, 16)
    if progress is not None:
        check_schedule_value("progress", progress, lo=0)
    check(isinstance(start, (int, float)) and not isinstance(start, bool) and 0 <= start <= 1,
          f"start must be a fraction of training in [0, 1], got {start!r}")
    check(isinstance(signed, bool), f"signed must be True or False, got {signed!r}")
    check(isinstance(half_shift, bool), f"half_shift must be True or False, got {half_shift!r}")
    check(isinstance(per_channel, bool), f"per_channel must be True or False, got {per_channel!r}")
    check(signed or not half_shift, "half_shift needs signed=True (AQT: unsigned codes have no "
                                    "half shift)")
    fixed = isinstance(bound, (int, float)) and not isinstance(bound, bool)
    check((fixed and bound > 0) or bound in ("max", "mean_of_max"),
          f"bound must be a positive number, 'max' or 'mean_of_max', got {bound!r}")
    check(not (per_channel and bound != "max"), "per_channel needs bound='max'")


@register("aqt", validate=_check_aqt, bits=lambda bits=8, **_: bits,
          paper="AQT: Pareto-optimal quantized ResNet is mostly 4-bit (Abdolrashidi et al., "
                "CVPR-W 2021); PokeBNN (Zhang et al., CVPR 2022) uses it at 1/4/8 bits",
          formula="s = N/B (signed, N = 2^(b-1)-1) or 2^b/B (unsigned); signed: "
                  "floor(clip(x·s, ±N) + 0.5)/s, half_shift: (floor(clip(x·s, ±(2^(b-1) - "
                  "2^-7))) + 0.5)/s; unsigned: clip(floor(x·s), 0, 2^b-1)/s; B fixed, max|x| or "
                  "mean of max; dx = 1 inside the clip",
          result="– (ResNet-50 numbers not verified here)")
def aqt(x, *, bits=8, signed=True, bound="max", half_shift=False, per_channel=False,
        progress=None, start=0.0):
    """AQT fake quantization of ``x`` to a ``bits``-bit (un)signed integer code.

    ``start``: the fraction of training before which ``x`` passes unquantized (identity, gradient
    1) once ``progress`` (fraction of training done, fed by ``config.schedules``) is given: AQT's
    ``weight_quant_start_step`` and ``activation_bound_start_step`` (a bound of -1 before it
    means "no quantization", ``quantization.py`` ``QuantOps``).
    """
    b = bound_of(x, bound, per_channel) + jnp.finfo(jnp.float32).eps
    if not signed:
        y = _unsigned(x, 2.0 ** bits / b, 2.0 ** bits)
    else:
        n = signed_levels(bits, half_shift)
        y = _half_shift(x, n / b, n - _EPS) if half_shift else _round(x, n / b, n)
    if progress is None or not start:
        return y
    # 1e-6 of slack: the loop's float32 step / total_steps at the start step itself.
    return jnp.where(jnp.asarray(progress, jnp.float32) >= start - 1e-6, y, x)

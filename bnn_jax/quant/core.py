"""The one surrogate-gradient mechanism and the numeric conventions every quantizer shares.

Conventions (tested in tests/quant; methods that differ say so in their docstring):

* ``sign(x)`` is larq's: +1 for x >= 0 (also for -0.0), -1 otherwise. ``jnp.sign`` (0 at 0) is
  used only where a reference relies on it, and then it is named ``sign0``. Methods whose
  reference code relies on ``torch.sign`` (the transformer methods) default to ``sign0`` and take
  ``sign_zero=0|1`` (:func:`sign_of`) so the output can be made truly binary (packable); the CNN
  methods use ``sign`` (+1) so their outputs stay packable. Every docstring and registry formula
  says which convention its default uses.
* Clip boundaries are inclusive: the straight-through gradient passes at ``|x| == clip_value``
  (larq's ``tf.where(|x| <= clip, dy, 0)``; TF's ``clip_by_value`` also passes it).
  ``jnp.clip`` would give 1/2 there (JAX splits ties of max/min), so use :func:`clip` instead.
* Rounding is round-half-to-even (``jnp.round``, like ``tf.round`` and ``torch.round``);
  :func:`round_half_up` (``floor(x + 0.5)``) is the AQT/PokeBNN convention.
* Scales computed from statistics of the input are stop-gradient unless a method says otherwise.

A quantizer with a surrogate gradient is built with :func:`estimator` (elementwise derivative
``h(x)``: backward ``g * h(x)``) or :func:`straight_through` (backward is the VJP of a smooth
surrogate, the "detach trick" ``sg(q(x) - s(x)) + s(x)`` without its forward rounding error).
Both are the same ``jax.custom_vjp``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


def sign(x: jax.Array) -> jax.Array:
    """larq's sign: +1 where x >= 0 (including -0.0), -1 elsewhere; dtype preserved."""
    return jnp.where(x >= 0, 1, -1).astype(jnp.result_type(x))


def sign0(x: jax.Array) -> jax.Array:
    """Sign with sign(0) = 0, as ``torch.sign``/``jnp.sign`` (some reference code relies on it)."""
    return jnp.sign(x)


SIGN_ZERO = (0, 1)


def sign_of(sign_zero: int) -> Callable:
    """The sign whose value at 0 is ``sign_zero``: :func:`sign0` for 0, :func:`sign` for 1."""
    if sign_zero not in SIGN_ZERO or isinstance(sign_zero, bool):
        raise ValueError(f"sign_zero must be one of {list(SIGN_ZERO)}, got {sign_zero!r}")
    return sign if sign_zero == 1 else sign0


def per_channel_axes(ndim: int, channel_axis: int | None) -> tuple[int, ...]:
    """Axes to reduce for one statistic per ``channel_axis`` entry (all axes when None)."""
    if channel_axis is None:
        return tuple(range(ndim))
    if not -ndim <= channel_axis < ndim:
        raise ValueError(f"channel_axis {channel_axis} is out of range for a {ndim}-D array "
                         f"(valid: {-ndim}..{ndim - 1} or None)")
    keep = channel_axis % ndim
    return tuple(a for a in range(ndim) if a != keep)


def heaviside(x: jax.Array) -> jax.Array:
    """1 where x > 0, 0 elsewhere (larq.math.heaviside); dtype preserved."""
    return jnp.where(x > 0, 1, 0).astype(jnp.result_type(x))


def _zero_cotangent(a: Any) -> Any:
    a = jnp.asarray(a)
    if jnp.issubdtype(a.dtype, jnp.inexact):
        return jnp.zeros_like(a)
    return np.zeros(a.shape, dtype=jax.dtypes.float0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _custom(forward: Callable, backward: Callable, *args):
    return forward(*args)


def _custom_fwd(forward, backward, *args):
    return forward(*args), args


def _custom_bwd(forward, backward, args, g):
    return tuple(backward(args, g))


_custom.defvjp(_custom_fwd, _custom_bwd)


def estimator(forward: Callable, derivative: Callable) -> Callable:
    """``q(x, *aux)`` with value ``forward(x, *aux)`` and VJP ``g * derivative(x, *aux)``.

    ``aux`` (thresholds, schedule values such as ReSTE's ``o``) may be traced arrays; they receive
    zero gradient. This is the whole mechanism behind STE, ApproxSign, SwishSign, ReSTE, EDE, ...
    """

    def backward(args, g):
        x = args[0]
        dx = (g * derivative(*args)).astype(jnp.result_type(x))
        return (dx, *(_zero_cotangent(a) for a in args[1:]))

    return functools.wraps(forward)(lambda *args: _custom(forward, backward, *args))


def identity_ste(forward: Callable) -> Callable:
    """``q(x, *aux)``: value ``forward(x, *aux)``, gradient ``g`` to x (the plain identity STE).

    The exact-forward form of ``x + sg(q(x) - x)`` (which can differ from q(x) by one rounding).
    """
    return estimator(forward, lambda x, *aux: jnp.ones_like(x))


def straight_through(forward: Callable, surrogate: Callable) -> Callable:
    """``q(*args)`` with value ``forward(*args)`` and the gradient of ``surrogate(*args)``.

    The exact-forward form of the detach trick ``sg(forward - surrogate) + surrogate``; use it when
    the surrogate is not elementwise (a softmax, a normalisation) or has learned arguments.
    """

    def backward(args, g):
        _, vjp = jax.vjp(surrogate, *args)
        return vjp(g)

    return functools.wraps(forward)(lambda *args: _custom(forward, backward, *args))


def _clip_forward(x, lo, hi):
    return jnp.minimum(jnp.maximum(x, lo), hi)


def _clip_derivative(x, lo, hi):
    return ((x >= lo) & (x <= hi)).astype(jnp.result_type(x))


clip = estimator(_clip_forward, _clip_derivative)
clip.__doc__ = "Clip to [lo, hi] with gradient 1 on the closed interval (TF's clip_by_value rule)."


def _true_div(a: jax.Array, n: float) -> jax.Array:
    # The divisor is a full-size array hidden behind an optimization barrier: XLA turns division
    # by a constant, and by a broadcast scalar, into multiplication by the reciprocal. Under vmap
    # the divisor is rebuilt at the batched shape so it never becomes a broadcast.
    @jax.custom_batching.custom_vmap
    def div(a):
        return a / jax.lax.optimization_barrier(jnp.full(a.shape, n, a.dtype))

    @div.def_vmap
    def _batched(axis_size, in_batched, a):
        return div(a), in_batched[0]

    return div(a)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def exact_div(a: jax.Array, n: float) -> jax.Array:
    """``a / n`` for a Python number ``n``, correctly rounded under jit and vmap.

    XLA rewrites ``a / n`` into ``a * (1/n)``, which is off by one ulp for e.g. 3/15, so
    ``round(x·15)/15`` would differ from TF and PyTorch. The tangent uses plain division.
    """
    return _true_div(a, n)


@exact_div.defjvp
def _exact_div_jvp(n, primals, tangents):
    (a,), (da,) = primals, tangents
    return exact_div(a, n), da / n


def mean(x: jax.Array, axis=None, keepdims: bool = False) -> jax.Array:
    """``jnp.mean`` with a correctly rounded division by the count (see :func:`exact_div`)."""
    total = jnp.sum(x, axis=axis, keepdims=keepdims)
    count = np.prod([x.shape[a] for a in (range(x.ndim) if axis is None else np.atleast_1d(axis))])
    return exact_div(total, float(count))


def round_half_up(x: jax.Array) -> jax.Array:
    """``floor(x + 0.5)``: the rounding of AQT/PokeBNN (ties go up, unlike ``jnp.round``)."""
    return jnp.floor(x + 0.5)


def clipped_ste_derivative(x: jax.Array, clip_value: Any, *, inclusive: bool = True
                           ) -> jax.Array:
    """1 where |x| <= clip_value (|x| < clip_value if not ``inclusive``), 0 elsewhere."""
    inside = jnp.abs(x) <= clip_value if inclusive else jnp.abs(x) < clip_value
    return inside.astype(jnp.result_type(x))


def grad_scale(x: jax.Array, g: Any) -> jax.Array:
    """Value ``x`` exactly, gradient multiplied by ``g`` (LSQ's ``sg(x − x·g) + x·g``)."""
    return _grad_scale(x, g)


def clipped_ste(forward: Callable) -> Callable:
    """``q(x, clip_value, *aux)``: value ``forward(x, *aux)``, gradient ``g·1[|x| <= clip_value]``.

    ``clip_value=None`` passes the gradient everywhere (the plain identity STE). This is larq's
    ``_clipped_gradient`` shared by ste_sign, ste_tern, ste_heaviside and magnitude_aware_sign.
    """
    with_clip = estimator(lambda x, c, *aux: forward(x, *aux),
                          lambda x, c, *aux: clipped_ste_derivative(x, c))
    without_clip = identity_ste(forward)

    def q(x, clip_value, *aux):
        if clip_value is None:
            return without_clip(x, *aux)
        return with_clip(x, clip_value, *aux)

    return q


_grad_scale = estimator(lambda x, g: x, lambda x, g: jnp.broadcast_to(g, jnp.shape(x)))

"""Bop, the latent-free binary optimizer (Helwegen et al., NeurIPS 2019), as an optax transform.

Bop keeps no latent real weights: binary weights w in {-1, +1} flip when the exponential moving
average m of their gradient is consistently large and points the same way as w:

    m <- m + gamma * (g - m)
    w <- sign(-sign(w * m - threshold) * w)        (flip where w * m > threshold)

with larq's sign(0) = +1 for the outer sign (so w*m == threshold exactly gives +1, as larq does).
``case_optimizer`` applies Bop to the parameters a predicate selects and another optax transform to
the rest: larq's ``CaseOptimizer`` expressed with ``optax.multi_transform``.
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bnn_jax.quant.core import sign
from bnn_jax.train.sharding import path_str

ScalarOrSchedule = float | Callable[[jax.Array], jax.Array]


class BopState(NamedTuple):
    """Bop's moving average of gradients and its step counter (for schedules)."""

    m: optax.Updates
    count: jax.Array


def _value(hyper: ScalarOrSchedule, count: jax.Array) -> jax.Array:
    return hyper(count) if callable(hyper) else jnp.asarray(hyper)


def bop(threshold: ScalarOrSchedule = 1e-8, gamma: ScalarOrSchedule = 1e-4
        ) -> optax.GradientTransformation:
    """Bop as an optax transformation; ``threshold`` and ``gamma`` may be optax schedules.

    The updates it returns are ``w_new - w`` so that ``optax.apply_updates`` lands exactly on
    ``w_new`` in {-1, +1}. Parameters must already be binary (initialise them with ``sign``).
    """
    for name, h in (("threshold", threshold), ("gamma", gamma)):
        if not callable(h) and not (isinstance(h, (int, float)) and h >= 0):
            raise ValueError(f"Bop {name} must be a non-negative number or a schedule, got {h!r}")

    def init_fn(params):
        return BopState(m=jax.tree.map(jnp.zeros_like, params), count=jnp.zeros([], jnp.int32))

    def update_fn(grads, state, params=None):
        if params is None:
            raise ValueError("bop needs the current params: call update(grads, state, params)")
        t = _value(threshold, state.count)
        g = _value(gamma, state.count)
        m = jax.tree.map(lambda m, d: m + (g * (d - m)).astype(m.dtype), state.m, grads)
        updates = jax.tree.map(
            lambda w, m: sign(-jnp.sign(w * m - t) * w) - w, params, m)
        return updates, BopState(m=m, count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def path_regex_predicate(pattern: str) -> Callable[[str, Any], bool]:
    """A predicate selecting parameters whose '/'-joined path matches ``pattern`` (re.search)."""
    rx = re.compile(pattern)
    return lambda path, leaf: rx.search(path) is not None


def case_optimizer(predicate: Callable[[str, Any], bool], binary: optax.GradientTransformation,
                   default: optax.GradientTransformation) -> optax.GradientTransformation:
    """Apply ``binary`` (usually Bop) where ``predicate(path, leaf)`` holds, ``default`` elsewhere.

    ``path`` is the parameter's pytree path joined with '/', e.g. ``"conv1/kernel"``.
    """

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda p, leaf: "binary" if predicate(path_str(p), leaf) else "default", params)

    return optax.multi_transform({"binary": binary, "default": default}, labels)

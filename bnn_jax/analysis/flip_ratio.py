"""Flip ratio: the fraction of binary weights whose sign changed between updates (larq's FlipRatio).

A pure, jit-friendly metric state. Like larq, values are cast to ``values_dtype`` (int8 by default,
truncating towards zero) before comparing, the first update only stores the values, and the result
is the mean flip fraction over the updates after the first.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from bnn_jax.quant.core import exact_div


class FlipRatio(NamedTuple):
    """Metric state: the last values seen, the sum of flip fractions and the number of updates."""

    previous: jax.Array
    total: jax.Array
    count: jax.Array

    @classmethod
    def empty(cls, shape, values_dtype=jnp.int8) -> "FlipRatio":
        """A state before any update, for values of ``shape``."""
        return cls(previous=jnp.zeros(shape, values_dtype), total=jnp.zeros([], jnp.float32),
                   count=jnp.zeros([], jnp.float32))

    def update(self, values: jax.Array) -> "FlipRatio":
        """Record ``values``; from the second update on, add the fraction that changed."""
        values = jnp.asarray(values).astype(self.previous.dtype)
        same = jnp.sum(values == self.previous).astype(jnp.float32)
        ratio = 1.0 - exact_div(same, float(values.size))
        return FlipRatio(previous=values, total=self.total + ratio * jnp.sign(self.count),
                         count=self.count + 1)

    def result(self) -> jax.Array:
        """Mean flip fraction over the updates after the first (0 before the second update)."""
        n = self.count - 1
        return jnp.where(n > 0, self.total / jnp.where(n > 0, n, 1), 0.0)


def fraction_flipped(before, after) -> jax.Array:
    """Fraction of entries (over a whole pytree) whose sign differs between two parameter trees."""
    leaves_b, leaves_a = jax.tree.leaves(before), jax.tree.leaves(after)
    flips = sum(jnp.sum(jnp.signbit(b) != jnp.signbit(a)) for b, a in zip(leaves_b, leaves_a))
    return flips / sum(b.size for b in leaves_b)

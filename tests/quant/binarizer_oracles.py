"""Shared helpers for the binarizer tests: inputs, float32 edge points, a VJP runner."""

import jax
import jax.numpy as jnp
import numpy as np

SHAPES = ((7,), (3, 5), (2, 3, 4))


def rand(shape, seed=0, scale=1.0):
    """Random float32 normal data (never zeros)."""
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def edges(*points):
    """Each point with its float32 neighbours on both sides.

    The neighbours of 0 are the smallest *normal* floats: XLA on CPU flushes subnormals to
    zero, so nextafter(0, -1) would compare as 0 there.
    """
    out = []
    tiny = np.finfo(np.float32).tiny
    for p in points:
        p = np.float32(p)
        if p == 0:
            out += [p, tiny, -tiny]
        else:
            out += [p, np.nextafter(p, np.float32(np.inf)), np.nextafter(p, np.float32(-np.inf))]
    return np.array(out, np.float32)


def vjp(fn, *args, cotangent=None, seed=1):
    """``(y, grads, cotangent)`` of ``fn(*args)`` for a random (or given) cotangent.

    Forward and backward run as one jitted program: one compilation per call instead of one
    per primitive and shape, which keeps these many small cases fast on CPU.
    """
    args = [jnp.asarray(a) for a in args]
    out = jax.eval_shape(fn, *args)
    g = rand(out.shape, seed) if cotangent is None else cotangent
    g = jnp.asarray(g, out.dtype)

    @jax.jit
    def run(a, gg):
        y, pull = jax.vjp(fn, *a)
        return y, pull(gg)

    y, grads = run(args, g)
    return np.asarray(y), [np.asarray(d) for d in grads], np.asarray(g)


def np_sign(x):
    """+1 for x >= 0 (also -0.0), -1 elsewhere: the framework's sign(0) = +1."""
    return np.where(x >= 0, 1.0, -1.0).astype(np.float32)

"""Word-level arithmetic shared by the XLA and Pallas kernels: popcounts and the per-word terms.

Every integer product of two packed operands is ``P - 2·Q`` summed over words, with
``m`` = AND of the operands' non-zero masks and ``s`` = XOR of their sign planes:

* ±1 · ±1 (XNOR-Net / BNN):      P = K,          Q = popcount(s)
* {0,1} · ±1 (BiBERT attention):  P = popcount(m), Q = popcount(m & s)
* ternary · ±1, ternary · ternary: the same with m, s from both planes
* {0,1} · {0,1}:                 P = popcount(m), Q = 0

(a ±1 entry is non-zero, so a missing mask plane is all ones and drops out of the AND; a missing
sign plane is all zeros and drops out of the XOR). Zero pad bits add nothing to P or Q.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def popcount(x: jax.Array) -> jax.Array:
    """Number of set bits per uint32 word, as int32 (``lax.population_count``)."""
    return lax.population_count(x).astype(jnp.int32)


def popcount_swar(x: jax.Array) -> jax.Array:
    """Shift/add ("SWAR") popcount of uint32 words, as int32, for lowerings without a popcount op.

    Mosaic GPU lowers no ``population_count``; this is the classic bit-slicing count
    (pairs, nibbles, then a multiply that sums the four bytes into the top byte).
    """
    x = x.astype(jnp.uint32)
    x = x - ((x >> 1) & jnp.uint32(0x55555555))
    x = (x & jnp.uint32(0x33333333)) + ((x >> 2) & jnp.uint32(0x33333333))
    x = (x + (x >> 4)) & jnp.uint32(0x0F0F0F0F)
    return ((x * jnp.uint32(0x01010101)) >> 24).astype(jnp.int32)


def _combine(op, values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    out = values[0]
    for v in values[1:]:
        out = op(out, v)
    return out


def word_terms(a_sign, a_mask, b_sign, b_mask, count=popcount):
    """(q, p) contributions of one word: q = popcount(m & s) (None if no sign), p = popcount(m)
    (None if neither operand has a mask, i.e. P is the constant K)."""
    s = _combine(jnp.bitwise_xor, (a_sign, b_sign))
    m = _combine(jnp.bitwise_and, (a_mask, b_mask))
    q = None if s is None else count(s if m is None else (m & s))
    p = None if m is None else count(m)
    return q, p


def finish(q, p, length: int) -> jax.Array:
    """``P - 2·Q`` from the accumulated terms (P = length when there was no mask)."""
    p = jnp.int32(length) if p is None else p
    return p if q is None else p - 2 * q

"""The XLA reference kernels: bitwise ops + ``lax.population_count``; they run on every backend.

Integer matmul: a ``lax.scan`` over groups of 8 packed words carrying an (M, N) int32
accumulator; each step adds 8 outer XOR/AND -> popcount terms. Materializing the whole
(M, N, K/32) intermediate instead was several times slower than the float matmul on CPU, and
one word per step (no grouping) re-reads the accumulator 8x as often (measured in
experiments/kernels.md). Weights arrive packed along K as (K/32, N): the layout this scan reads,
so no transpose happens inside ``jit``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from bnn_jax.kernels.bitops import finish, word_terms
from bnn_jax.kernels.packing import WORD_BITS

GROUP = 8  # packed words per scan step


def _pad_words(x, n, axis):
    if x is None or x.shape[axis] == n:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, n - x.shape[axis])
    return jnp.pad(x, pad)


def matmul(a_sign, a_mask, b_sign, b_mask, length: int) -> jax.Array:
    """Exact int32 (M, N) product of packed a (planes (M, Kw)) and packed b (planes (Kw, N))."""
    a_any = a_sign if a_sign is not None else a_mask
    b_any = b_sign if b_sign is not None else b_mask
    m, kw = a_any.shape
    n = b_any.shape[1]
    group = min(GROUP, kw)
    kwp = -(-kw // group) * group
    # Zero words are exact padding: they add nothing to either popcount term.
    a = [None if p is None else _pad_words(p, kwp, 1).T.reshape(kwp // group, group, m)
         for p in (a_sign, a_mask)]
    b = [None if p is None else _pad_words(p, kwp, 0).reshape(kwp // group, group, n)
         for p in (b_sign, b_mask)]
    zeros = jnp.zeros((m, n), jnp.int32)
    # Q is accumulated when some operand has signs, P when some operand has a mask (bitops.py).
    has_q = a_sign is not None or b_sign is not None
    has_p = a_mask is not None or b_mask is not None
    init = (zeros if has_q else None, zeros if has_p else None)

    def step(carry, words):
        q_acc, p_acc = carry
        aw, bw = words
        for g in range(group):  # unrolled: one accumulator update per 8 words
            q, p = word_terms(*(None if x is None else x[g][:, None] for x in aw),
                              *(None if x is None else x[g][None, :] for x in bw))
            q_acc = None if q is None else q_acc + q
            p_acc = None if p is None else p_acc + p
        return (q_acc, p_acc), None

    (q_acc, p_acc), _ = lax.scan(step, init, (a, b))
    return finish(q_acc, p_acc, length)


def weight_matmul(x, w_sign, w_mask, out_dtype) -> jax.Array:
    """(M, K) float activations times packed ±1/ternary weights (planes (Kw, N)), f32 accumulation.

    One scan step per word: the 32 weight bits of each column are expanded to ±1 (times the mask
    for ternary) and multiplied with the matching 32 activations, so the unpacked (K, N) matrix
    never exists in memory.
    """
    w_any = w_sign if w_sign is not None else w_mask
    kw, n = w_any.shape
    m = x.shape[0]
    x = _pad_words(x, kw * WORD_BITS, 1)  # zero activations meet the zero pad bits
    # f32 products of ±1 with bf16/f16/f32 activations are exact, and XLA's f32 dot is the
    # fast one on every backend's reference path (bf16 dots are slow on CPU).
    compute = jnp.float32
    xs = x.astype(compute).reshape(m, kw, WORD_BITS).transpose(1, 0, 2)
    shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32)[:, None]

    def step(acc, words):
        xw, s, msk = words
        if s is None:
            w = jnp.ones((WORD_BITS, n), jnp.int32)
        else:
            w = 1 - 2 * ((s[None] >> shifts) & 1).astype(jnp.int32)
        if msk is not None:
            w = w * ((msk[None] >> shifts) & 1).astype(jnp.int32)
        acc = acc + jnp.dot(xw, w.astype(compute), preferred_element_type=jnp.float32,
                            precision=lax.Precision.HIGHEST)
        return acc, None

    acc, _ = lax.scan(step, jnp.zeros((m, n), jnp.float32), (xs, w_sign, w_mask), unroll=4)
    return acc.astype(out_dtype)

"""Pallas kernels for GPU (Triton lowering) and TPU (Mosaic), the same math as ``xla.py``.

GPU backend choice: jax 0.12 offers two Pallas GPU lowerings. The Triton one
(``jax.experimental.pallas.triton``) lowers ``lax.population_count`` to the native ``popc``
instruction, takes plain ``BlockSpec`` grids and runs in interpret mode on CPU; it is
deprecated in jax 0.12 (a warning at lowering) but still shipped. Mosaic GPU
(``pallas.mosaic_gpu``) is its successor but lowers no popcount (``popcount_swar`` in
``bitops.py`` is the shift/add replacement) and is built around warpgroup matmuls that an
integer XOR-popcount cannot use. We use Triton now; moving to Mosaic GPU means swapping the
compiler params and the popcount. The TPU kernel uses Mosaic TPU, which lowers popcount natively.

Both kernels: grid over (M, N) output blocks, the whole packed K of a block row/column in
on-chip memory (packed K is 32x smaller than float K), and a loop over words with an int32
accumulator. Operands are zero-padded to block multiples, which is exact (zero words add nothing).
Triton needs power-of-two block shapes, so on GPU the word count is padded to one as well.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from bnn_jax.kernels.bitops import finish, popcount, word_terms
from bnn_jax.kernels.packing import WORD_BITS

# (block_m, block_n) per backend: TPU tiles are (8, 128)-aligned; Triton wants powers of two.
BLOCKS = {"pallas_gpu": (32, 64), "pallas_tpu": (8, 128)}


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def _pad2(x, rows, cols):
    if x is None:
        return None
    return jnp.pad(x, [(0, rows - x.shape[0]), (0, cols - x.shape[1])])


def _compiler_params(backend: str):
    if backend == "pallas_gpu":
        from jax.experimental.pallas import triton as plt
        return plt.CompilerParams(num_warps=4, num_stages=2)
    from jax.experimental.pallas import tpu as pltpu
    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel"))


def _matmul_kernel(*refs, has, kw, length):
    """refs: the present planes of a (bm, kw) and b (kw, bn), then the (bm, bn) int32 output."""
    it = iter(refs[:-1])
    a_sign, a_mask, b_sign, b_mask = (next(it) if h else None for h in has)
    out = refs[-1]

    def load_a(ref, k):
        return None if ref is None else ref[:, pl.ds(k, 1)]

    def load_b(ref, k):
        return None if ref is None else ref[pl.ds(k, 1), :]

    zeros = jnp.zeros(out.shape, jnp.int32)
    init = (zeros if has[0] or has[2] else None, zeros if has[1] or has[3] else None)

    def body(k, carry):
        q_acc, p_acc = carry
        q, p = word_terms(load_a(a_sign, k), load_a(a_mask, k), load_b(b_sign, k),
                          load_b(b_mask, k), popcount)
        return (None if q is None else q_acc + q, None if p is None else p_acc + p)

    q_acc, p_acc = lax.fori_loop(0, kw, body, init)
    out[...] = finish(q_acc, p_acc, length)


def matmul(a_sign, a_mask, b_sign, b_mask, length: int, *, backend: str, interpret: bool,
           block_m: int | None = None, block_n: int | None = None) -> jax.Array:
    """Pallas version of :func:`bnn_jax.kernels.xla.matmul` (same arguments and result)."""
    bm0, bn0 = BLOCKS[backend]
    bm, bn = block_m or bm0, block_n or bn0
    a_any = a_sign if a_sign is not None else a_mask
    b_any = b_sign if b_sign is not None else b_mask
    m, kw = a_any.shape
    n = b_any.shape[1]
    kwp = _next_pow2(kw) if backend == "pallas_gpu" else kw
    mp, np_ = _round_up(m, bm), _round_up(n, bn)
    a = [_pad2(p, mp, kwp) for p in (a_sign, a_mask)]
    b = [_pad2(p, kwp, np_) for p in (b_sign, b_mask)]
    has = tuple(p is not None for p in (*a, *b))
    a_spec = pl.BlockSpec((bm, kwp), lambda i, j: (i, 0))
    b_spec = pl.BlockSpec((kwp, bn), lambda i, j: (0, j))
    specs = [s for s, p in zip((a_spec, a_spec, b_spec, b_spec), (*a, *b)) if p is not None]
    out = pl.pallas_call(
        functools.partial(_matmul_kernel, has=has, kw=kwp, length=length),
        out_shape=jax.ShapeDtypeStruct((mp, np_), jnp.int32),
        grid=(mp // bm, np_ // bn),
        in_specs=specs,
        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        compiler_params=None if interpret else _compiler_params(backend),
        interpret=interpret,
    )(*(p for p in (*a, *b) if p is not None))
    return out[:m, :n]


def _weight_kernel(*refs, has, kw):
    """refs: x (bm, kw*32), the present weight planes (kw, bn), then the (bm, bn) f32 output."""
    x_ref = refs[0]
    it = iter(refs[1:-1])
    w_sign, w_mask = (next(it) if h else None for h in has)
    out = refs[-1]
    # int32 iota (what Triton and Mosaic build natively), cast for the unsigned shifts.
    shifts = lax.broadcasted_iota(jnp.int32, (WORD_BITS, out.shape[1]), 0).astype(jnp.uint32)
    compute = x_ref.dtype

    def body(k, acc):
        xw = x_ref[:, pl.ds(pl.multiple_of(k * WORD_BITS, WORD_BITS), WORD_BITS)]
        w = None
        if w_sign is not None:
            w = 1 - 2 * ((w_sign[pl.ds(k, 1), :] >> shifts) & 1).astype(jnp.int32)
        if w_mask is not None:
            bits = ((w_mask[pl.ds(k, 1), :] >> shifts) & 1).astype(jnp.int32)
            w = bits if w is None else w * bits
        return acc + jnp.dot(xw, w.astype(compute), preferred_element_type=jnp.float32,
                             precision=lax.Precision.HIGHEST)

    out[...] = lax.fori_loop(0, kw, body, jnp.zeros(out.shape, jnp.float32))


def weight_matmul(x, w_sign, w_mask, *, backend: str, interpret: bool, block_m: int | None = None,
                  block_n: int | None = None) -> jax.Array:
    """Pallas version of :func:`bnn_jax.kernels.xla.weight_matmul`; returns float32 (M, N)."""
    bm0, bn0 = BLOCKS[backend]
    # Triton's dot needs at least 16 rows; TPU rows come in sublanes of 8.
    bm, bn = block_m or (16 if backend == "pallas_gpu" else bm0), block_n or bn0
    w_any = w_sign if w_sign is not None else w_mask
    kw, n = w_any.shape
    m = x.shape[0]
    kwp = _next_pow2(kw) if backend == "pallas_gpu" else kw
    mp, np_ = _round_up(m, bm), _round_up(n, bn)
    compute = jnp.bfloat16 if x.dtype == jnp.bfloat16 else jnp.float32
    x = _pad2(x.astype(compute), mp, kwp * WORD_BITS)
    planes = [_pad2(p, kwp, np_) for p in (w_sign, w_mask)]
    has = tuple(p is not None for p in planes)
    w_spec = pl.BlockSpec((kwp, bn), lambda i, j: (0, j))
    out = pl.pallas_call(
        functools.partial(_weight_kernel, has=has, kw=kwp),
        out_shape=jax.ShapeDtypeStruct((mp, np_), jnp.float32),
        grid=(mp // bm, np_ // bn),
        in_specs=[pl.BlockSpec((bm, kwp * WORD_BITS), lambda i, j: (i, 0))]
        + [w_spec for p in planes if p is not None],
        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        compiler_params=None if interpret else _compiler_params(backend),
        interpret=interpret,
    )(x, *(p for p in planes if p is not None))
    return out[:m, :n]

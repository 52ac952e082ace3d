"""Bit packing of ±1, {0,1} and ternary tensors into uint32 words along one axis.

Layout: element ``i`` of the packed axis lives in word ``i // 32`` at bit ``i % 32`` (LSB first).
A tensor is stored as up to two bit-planes:

* ``sign`` — bit set where the value is negative (larq's sign convention: 0 packs as +1),
* ``mask`` — bit set where the value is non-zero.

``binary`` (±1) keeps only ``sign`` (every entry is non-zero), ``bool`` ({0,1}) keeps only
``mask`` (nothing is negative) and ``ternary`` ({-1,0,+1}) keeps both, with ``sign`` set only
where ``mask`` is. The axis is padded with zero bits up to a multiple of 32; every kernel in this
package relies on that (a zero bit adds nothing to an XOR- or AND-popcount), so pad bits must stay
zero: build :class:`Packed` values with :func:`pack` only.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

WORD_BITS = 32
ENCODINGS = ("binary", "bool", "ternary")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Packed:
    """A tensor packed along ``axis`` into uint32 bit-planes; ``length`` is the unpadded size."""

    sign: jax.Array | None
    mask: jax.Array | None
    length: int = dataclasses.field(metadata=dict(static=True))
    axis: int = dataclasses.field(metadata=dict(static=True))

    @property
    def encoding(self) -> str:
        """'binary' (±1), 'bool' ({0,1}) or 'ternary' ({-1,0,+1})."""
        if self.mask is None:
            return "binary"
        return "bool" if self.sign is None else "ternary"

    @property
    def planes(self) -> tuple[jax.Array, ...]:
        """The stored uint32 planes (one or two)."""
        return tuple(p for p in (self.sign, self.mask) if p is not None)

    @property
    def words_shape(self) -> tuple[int, ...]:
        """Shape of each plane (the packed axis counts words)."""
        return tuple(self.planes[0].shape)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the unpacked tensor."""
        s = list(self.words_shape)
        s[self.axis] = self.length
        return tuple(s)

    @property
    def ndim(self) -> int:
        """Rank of the (packed or unpacked) tensor."""
        return len(self.words_shape)

    @property
    def nbytes(self) -> int:
        """Bytes of packed storage (all planes, padding included)."""
        return sum(int(np.prod(p.shape)) * 4 for p in self.planes)


def num_words(length: int) -> int:
    """Number of uint32 words that hold ``length`` bits."""
    return -(-int(length) // WORD_BITS)


def _pack_plane(bits: jax.Array, axis: int) -> jax.Array:
    """Pack a boolean array along ``axis`` (zero-padded to a word boundary) into uint32."""
    bits = jnp.moveaxis(bits, axis, -1)
    n = bits.shape[-1]
    pad = num_words(n) * WORD_BITS - n
    if pad:
        bits = jnp.pad(bits, [(0, 0)] * (bits.ndim - 1) + [(0, pad)])
    bits = bits.reshape(*bits.shape[:-1], -1, WORD_BITS).astype(jnp.uint32)
    # The 32 shifted bits are disjoint, so their sum is their bitwise OR.
    words = jnp.sum(bits << jnp.arange(WORD_BITS, dtype=jnp.uint32), axis=-1, dtype=jnp.uint32)
    return jnp.moveaxis(words, -1, axis)


def _unpack_plane(words: jax.Array, length: int, axis: int) -> jax.Array:
    """Inverse of :func:`_pack_plane`: uint32 words -> int32 0/1 of size ``length`` on ``axis``."""
    words = jnp.moveaxis(words, axis, -1)
    bits = (words[..., None] >> jnp.arange(WORD_BITS, dtype=jnp.uint32)) & 1
    bits = bits.reshape(*words.shape[:-1], -1)[..., :length].astype(jnp.int32)
    return jnp.moveaxis(bits, -1, axis)


def _normalize_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for a tensor of rank {ndim}")
    return axis % ndim


def pack(x, axis: int = -1, encoding: str = "binary", *, backend: str = "auto") -> Packed:
    """Pack ``x`` along ``axis``: binary packs sign(x) (0 -> +1), bool x != 0, ternary both.

    Packing along the last axis (activations) runs on the native CPU kernel when ``backend``
    resolves to ``cpu_native`` (see ``backend.py``); every other case, and every other backend,
    is the XLA expression below (both give the same words).
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; valid choices: {list(ENCODINGS)}")
    try:
        x = jnp.asarray(x)
    except TypeError as e:
        raise ValueError(f"pack expects a numeric or boolean array, got {type(x).__name__}") from e
    if x.ndim == 0:
        raise ValueError("pack needs an array with at least one axis, got a scalar")
    if x.dtype == jnp.bool_ and encoding != "bool":
        raise ValueError(f"a boolean array can only be packed with encoding 'bool', "
                         f"not {encoding!r}")
    if x.dtype != jnp.bool_ and not jnp.issubdtype(x.dtype, jnp.number):
        raise ValueError(f"pack expects a numeric or boolean array, got dtype {x.dtype}")
    axis = _normalize_axis(axis, x.ndim)
    if x.shape[axis] == 0:
        raise ValueError(f"cannot pack an empty axis (shape {x.shape}, axis {axis})")
    from bnn_jax.kernels import backend as _backend, native

    if axis == x.ndim - 1 and _backend.resolve(backend)[0] == "cpu_native":
        sign, mask = native.pack_last(x, encoding)
        return Packed(sign=sign, mask=mask, length=int(x.shape[axis]), axis=axis)
    sign = _pack_plane(x < 0, axis) if encoding in ("binary", "ternary") else None
    mask = _pack_plane(x != 0, axis) if encoding in ("bool", "ternary") else None
    return Packed(sign=sign, mask=mask, length=int(x.shape[axis]), axis=axis)


def pack_bits(x, axis: int = -1) -> Packed:
    """Pack a ±1 tensor (or the sign of any tensor, sign(0) = +1) along ``axis``."""
    return pack(x, axis, "binary")


def pack_bool(x, axis: int = -1) -> Packed:
    """Pack a {0,1} tensor (bit set where x != 0) along ``axis``."""
    return pack(x, axis, "bool")


def pack_ternary(x, axis: int = -1) -> Packed:
    """Pack a {-1,0,+1} tensor along ``axis`` as two bit-planes (sign, non-zero mask)."""
    return pack(x, axis, "ternary")


def unpack(p: Packed, dtype=jnp.int32) -> jax.Array:
    """The tensor that ``p`` stores, as ``dtype`` values in {-1, 0, +1}."""
    if not isinstance(p, Packed):
        raise ValueError(f"unpack expects a Packed value, got {type(p).__name__}")
    value = None
    if p.sign is not None:
        value = 1 - 2 * _unpack_plane(p.sign, p.length, p.axis)
    if p.mask is not None:
        m = _unpack_plane(p.mask, p.length, p.axis)
        value = m if value is None else value * m
    return value.astype(dtype)


def storage_bits(p: Packed) -> int:
    """Bits of packed storage, padding included (for size accounting)."""
    return p.nbytes * 8

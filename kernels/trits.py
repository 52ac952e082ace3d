"""Ternary weights as packed digits for int8 activations (W1.58A8, BitNet b1.58 decoding).

A ternary (K, N) matrix is stored as digits ``t = w + 1`` in {0, 1, 2}, in chunks of 64 bytes
that the native kernel reads whole: chunk ``(b, g)`` covers columns ``16b .. 16b+15`` and the
``4D`` rows ``k`` in ``[4Dg, 4D(g+1))``; byte ``4c + j`` of it holds the ``D`` digits of rows
``4Dg + 4i + j`` (``i < D``) of column ``16b + c``. Four rows of one column are adjacent bytes
after decoding, so one u8 x s8 dot of 4 (x86 ``vpdpbusd`` / ``vpmaddubsw``) serves 16 columns.
Two digit formats:

* ``"2bit"`` — ``D = 4`` digits per byte, digit ``i`` at bits ``2i`` (2 bits per weight, 8x
  smaller than bf16);
* ``"base3"`` — ``D = 5`` digits per byte, ``byte = ceil(256 v / 243)`` for
  ``v = Σ t_i 3^(4-i)`` (1.6 bits per weight, 10x smaller than bf16). Digit ``i`` is
  ``(byte · 3^i mod 256) · 3 >> 8``: the byte is the base-3 fraction ``v / 243`` in 8 binary
  places, and multiplying by 3 moves its next digit above the binary point (ggml's TQ1_0 type
  dequantizes its bytes with the same ``(((q * pow3[i]) & 255) * 3) / 256``; the identity holds
  for all 243 values, tested).

The product ``Σ_k x_k w_kc = Σ_k x_k t_kc − Σ_k x_k`` is exact in int32 for any int8 codes.
Padded rows and columns hold ``t = 1`` (w = 0), and the padded activations are zeros, so padding
adds nothing.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

FORMATS = {"2bit": 4, "base3": 5}  # digits per byte
BLOCK_N = 16  # columns per chunk
_POW3 = np.array([81, 27, 9, 3, 1])  # digit i weighs 3^(4-i) in v


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TritPacked:
    """A ternary (K, N) matrix packed as digit chunks ``data`` (ceil(N/16), G, 64) uint8."""

    data: jax.Array
    length: int = dataclasses.field(metadata=dict(static=True))   # K
    n: int = dataclasses.field(metadata=dict(static=True))        # N
    fmt: str = dataclasses.field(metadata=dict(static=True))

    @property
    def digits(self) -> int:
        """Digits (weights) per byte: 4 or 5."""
        return FORMATS[self.fmt]

    @property
    def shape(self) -> tuple[int, int]:
        """(K, N) of the unpacked matrix."""
        return (self.length, self.n)

    @property
    def padded_length(self) -> int:
        """K rounded up to a whole group of ``4 · digits`` rows."""
        return int(self.data.shape[1]) * 4 * self.digits

    @property
    def nbytes(self) -> int:
        """Bytes of packed storage (padding included)."""
        return int(np.prod(self.data.shape))


def _check_fmt(fmt: str) -> int:
    if fmt not in FORMATS:
        raise ValueError(f"unknown trit format {fmt!r}; valid choices: {list(FORMATS)}")
    return FORMATS[fmt]


def pack_trits(w, fmt: str = "base3") -> TritPacked:
    """Pack a ternary (K, N) matrix (values in {-1, 0, +1}) into digit chunks (numpy, once)."""
    d = _check_fmt(fmt)
    w = np.asarray(jax.device_get(w))
    if w.ndim != 2 or w.size == 0:
        raise ValueError(f"pack_trits expects a non-empty (K, N) matrix, got shape {w.shape}")
    if not np.all(np.isin(w, (-1, 0, 1))):
        raise ValueError("pack_trits: every entry must be -1, 0 or +1")
    k, n = w.shape
    groups, blocks = -(-k // (4 * d)), -(-n // BLOCK_N)
    t = np.ones((groups * 4 * d, blocks * BLOCK_N), np.int64)  # pad: w = 0
    t[:k, :n] = w.astype(np.int64) + 1
    # rows k = 4dg + 4i + j, columns 16b + c -> (b, g, c, j, i)
    t = t.reshape(groups, d, 4, blocks, BLOCK_N).transpose(3, 0, 4, 2, 1)
    if fmt == "2bit":
        byte = np.sum(t << (2 * np.arange(4)), axis=-1)
    else:
        v = np.sum(t * _POW3, axis=-1)
        byte = (v * 256 + 242) // 243
    data = byte.reshape(blocks, groups, 64).astype(np.uint8)
    return TritPacked(jnp.asarray(data), length=int(k), n=int(n), fmt=fmt)


def _digits(data: jax.Array, fmt: str) -> jax.Array:
    """(..., 64) bytes -> (..., 64, D) digits in {0, 1, 2} (int32), XLA."""
    q = data.astype(jnp.int32)[..., None]
    i = jnp.arange(FORMATS[fmt], dtype=jnp.int32)
    if fmt == "2bit":
        return (q >> (2 * i)) & 3
    return (((q * (3 ** i)) & 255) * 3) >> 8


def unpack_trits(p: TritPacked, dtype=jnp.int8) -> jax.Array:
    """The ternary (K, N) matrix that ``p`` stores."""
    d = p.digits
    blocks, groups = p.data.shape[:2]
    t = _digits(p.data, p.fmt).reshape(blocks, groups, BLOCK_N, 4, d)   # (b, g, c, j, i)
    t = t.transpose(1, 4, 3, 0, 2).reshape(groups * 4 * d, blocks * BLOCK_N)
    return (t[:p.length, :p.n] - 1).astype(dtype)


def trit_matmul_xla(codes, p: TritPacked) -> jax.Array:
    """Exact int32 ``codes @ W`` for integer codes (M, K) with |codes| <= 128, XLA reference."""
    w = unpack_trits(p, jnp.float32)
    if p.length * 128 < 2 ** 24:
        # Every partial sum is an integer below 2^24: exact in float32, and XLA:CPU's float
        # dot is far faster than its integer one.
        out = jnp.dot(codes.astype(jnp.float32), w, precision=lax.Precision.HIGHEST)
        return out.astype(jnp.int32)
    return jnp.dot(codes.astype(jnp.int32), w.astype(jnp.int32),
                   preferred_element_type=jnp.int32)


def trit_matmul(codes, p: TritPacked, *, backend: str = "auto") -> jax.Array:
    """Exact int32 (M, N) product of int8 activation codes (M, K) and packed ternary weights.

    ``backend`` resolving to ``cpu_native`` runs the native kernel; every other backend runs
    the XLA reference (the same integers)."""
    from bnn_jax.kernels import native
    from bnn_jax.kernels.backend import resolve

    if not isinstance(p, TritPacked):
        raise ValueError(f"trit_matmul: weights must be a TritPacked value (pack_trits), got "
                         f"{type(p).__name__}")
    codes = jnp.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != p.length:
        raise ValueError(f"trit_matmul: codes must be (M, K={p.length}), got {codes.shape}")
    impl, _ = resolve(backend)
    if impl != "cpu_native":
        return trit_matmul_xla(codes, p)
    x = codes.astype(jnp.int8)
    pad = p.padded_length - p.length
    if pad:
        x = jnp.pad(x, [(0, 0), (0, pad)])
    return native.trit_matmul(x, p.data, p.n, p.digits)


def absmax_codes(x, *, bits: int = 8, numerator: float = 127.0, eps: float = 1e-5):
    """Per-row codes and steps of BitNet b1.58's activation quantizer (``quant/bitnet.py``):
    ``s = numerator / max(max|x|, eps)``, ``codes = clip(round(x·s), −2^(b−1), 2^(b−1) − 1)``,
    ``x_q = codes / s``; returns ``(codes float32, s)``."""
    x = x.astype(jnp.float32)
    absmax = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
    s = numerator / jnp.maximum(absmax, eps)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return jnp.clip(jnp.round(x * s), lo, hi), s

"""The public packed operations: matmul, conv 2-D and packed-weight x float matmul, one dispatch.

* :func:`packed_matmul` — ±1·±1 (XNOR-popcount, XNOR-Net/BNN), {0,1}·±1 (BiBERT/BiViT
  attention), ternary·±1 and ternary·ternary, exact int32; per-channel scale and bias after.
* :func:`packed_conv2d` — the same on NHWC activations packed along C and HWIO weights packed
  along I, through an im2col of packed words (32x smaller than a float im2col).
* :func:`packed_weight_matmul` — float/bf16 activations times packed ±1 or ternary weights
  (W1A16 / W1.58A16, BitNet-style decoding), differentiable in the activations (``custom_vjp``:
  Pallas kernels have no autodiff).

Weights are packed once (``pack(w, axis=0)`` for a (K, N) matrix, ``axis=2`` for HWIO) in the
layout the kernels read; activations are packed along their last axis.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bnn_jax.kernels import native, pallas, xla
from bnn_jax.kernels.backend import resolve
from bnn_jax.kernels.bitops import popcount
from bnn_jax.kernels.packing import WORD_BITS, Packed, _pack_plane, num_words, unpack

PAD_VALUES = (0.0, 1.0, -1.0)


# ----------------------------------------------------------------------------- validation

def _require_packed(name: str, p) -> Packed:
    if not isinstance(p, Packed):
        raise ValueError(f"{name} must be a Packed value (see bnn_jax.kernels.pack), "
                         f"got {type(p).__name__}")
    return p


def _check_call(op: str, backend: str, block_m, block_n) -> None:
    """Validate the arguments every packed operation shares, before they become static jit
    arguments (an unhashable or wrong block size would fail there with an unrelated message)."""
    impl, _ = resolve(backend)
    for name, v in (("block_m", block_m), ("block_n", block_n)):
        if v is None:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{op}: {name} must be a positive int or None, got {v!r}")
        if impl == "pallas_gpu" and v & (v - 1):
            raise ValueError(f"{op}: Triton (backend 'pallas_gpu') needs power-of-two blocks, "
                             f"got {name}={v}")


def _epilogue(acc, scale, bias, n: int, op: str):
    """Per-output-channel ``acc * scale + bias`` in float32 (``acc`` unchanged if both None)."""
    if scale is None and bias is None:
        return acc
    out = acc.astype(jnp.float32)
    for name, v in (("scale", scale), ("bias", bias)):
        if v is None:
            continue
        v = jnp.asarray(v)
        if v.shape not in ((), (n,)):
            raise ValueError(f"{op}: {name} must be a scalar or have shape ({n},) (one per output "
                             f"channel), got shape {v.shape}")
        if not jnp.issubdtype(v.dtype, jnp.floating):
            raise ValueError(f"{op}: {name} must be floating point, got dtype {v.dtype}")
        out = out * v if name == "scale" else out + v
    return out


# ----------------------------------------------------------------------------- integer matmul

def _matmul_2d(a: Packed, b: Packed, length: int, backend: str, blocks) -> jax.Array:
    """(M, Kw) x (Kw, N) planes -> int32 (M, N) on the resolved backend."""
    impl, interpret = resolve(backend)
    args = (a.sign, a.mask, b.sign, b.mask, length)
    if impl == "xla":
        return xla.matmul(*args)
    if impl == "cpu_native":
        return native.matmul(*args)
    return pallas.matmul(*args, backend=impl, interpret=interpret, block_m=blocks[0],
                         block_n=blocks[1])


def packed_matmul(a: Packed, b: Packed, *, scale=None, bias=None, backend: str = "auto",
                  block_m: int | None = None, block_n: int | None = None) -> jax.Array:
    """Exact ``a @ b`` of packed operands (±1, {0,1} or ternary) as int32, then ``*scale + bias``.

    ``a`` is (..., M, K) packed along its last axis; ``b`` is (K, N) packed along axis 0, or
    (..., K, N) packed along axis -2 with the same leading (batch) axes as ``a``. With ``scale``
    or ``bias`` (scalars or one per output column) the result is float32.
    """
    a, b = _require_packed("a", a), _require_packed("b", b)
    _check_call("packed_matmul", backend, block_m, block_n)
    return _packed_matmul_jit(a, b, scale, bias, backend, (block_m, block_n))


@functools.partial(jax.jit, static_argnums=(4, 5))
def _packed_matmul_jit(a: Packed, b: Packed, scale, bias, backend: str, blocks) -> jax.Array:
    if a.axis != a.ndim - 1:
        raise ValueError(f"packed_matmul: a must be packed along its last axis, got axis {a.axis} "
                         f"of shape {a.shape}")
    if b.ndim < 2 or b.axis != b.ndim - 2:
        raise ValueError(f"packed_matmul: b must be (..., K, N) packed along K (axis -2, i.e. "
                         f"pack(w, axis=0) for a matrix), got shape {b.shape} axis {b.axis}")
    if a.length != b.length:
        raise ValueError(f"packed_matmul: contraction sizes differ: a has K={a.length}, "
                         f"b has K={b.length}")
    n = b.shape[-1]
    if b.ndim == 2:
        lead = a.shape[:-1]
        rows = [None if p is None else p.reshape(-1, p.shape[-1]) for p in (a.sign, a.mask)]
        flat = Packed(*rows, length=a.length, axis=1)
        out = _matmul_2d(flat, b, a.length, backend, blocks).reshape(*lead, n)
    else:
        if a.ndim != b.ndim or a.shape[:-2] != b.shape[:-2]:
            raise ValueError(f"packed_matmul: batched operands need equal leading axes, got "
                             f"a {a.shape} and b {b.shape}")

        def flat(p):  # merge the batch axes into one
            return None if p is None else p.reshape(-1, *p.shape[-2:])

        def one(a_sign, a_mask, b_sign, b_mask):
            return _matmul_2d(Packed(a_sign, a_mask, length=a.length, axis=1),
                              Packed(b_sign, b_mask, length=b.length, axis=0),
                              a.length, backend, blocks)

        out = jax.vmap(one)(flat(a.sign), flat(a.mask), flat(b.sign), flat(b.mask))
        out = out.reshape(*a.shape[:-1], n)
    return _epilogue(out, scale, bias, n, "packed_matmul")


# ----------------------------------------------------------------------------- conv 2-D

def _pad_border(planes: dict, pads, pad_value: float, valid):
    """Pad packed NHWC planes spatially with words that encode ``pad_value`` (see PAD_VALUES)."""
    out = {}
    for name, x in planes.items():
        if x is None:
            out[name] = None
            continue
        # A padded position holds pad_value in every real channel and zero bits in the pad bits.
        fill = {"sign": pad_value < 0, "mask": pad_value != 0}[name]
        widths = [(0, 0), pads[0], pads[1], (0, 0)]
        padded = jnp.pad(x, widths)
        if fill:
            inside = jnp.pad(jnp.ones(x.shape[:3] + (1,), bool), widths)
            padded = jnp.where(inside, padded, valid)
        out[name] = padded
    return out


def packed_conv2d(x: Packed, w: Packed, *, strides=(1, 1), padding: str = "VALID",
                  pad_value: float = 0.0, scale=None, bias=None, backend: str = "auto",
                  block_m: int | None = None, block_n: int | None = None) -> jax.Array:
    """Exact 2-D convolution of NHWC ``x`` packed along C with HWIO ``w`` packed along I, int32.

    ``padding`` is 'VALID' or 'SAME' (TensorFlow's split); ``pad_value`` is the value the padded
    border holds (larq's ``pad_values``): 0 (zero padding, corrected exactly from the weight sums
    the way the larq compute engine does), +1 or -1. {0,1} activations cannot hold -1.
    """
    x, w = _require_packed("x", x), _require_packed("w", w)
    _check_call("packed_conv2d", backend, block_m, block_n)
    try:
        strides = tuple(int(s) for s in np.broadcast_to(strides, (2,)))
    except (TypeError, ValueError):
        raise ValueError(f"packed_conv2d: strides must be an int or two ints, got {strides!r}")
    if not isinstance(padding, str) or padding not in ("SAME", "VALID"):
        # Checked before jit: padding is a static (hashed) argument, explicit pairs are not.
        raise ValueError(f"packed_conv2d: padding must be one of ['SAME', 'VALID'], "
                         f"got {padding!r}")
    if np.ndim(pad_value) != 0 or pad_value not in PAD_VALUES:
        raise ValueError(f"packed_conv2d: pad_value must be one of {list(PAD_VALUES)}, "
                         f"got {pad_value!r}")
    return _packed_conv2d_jit(x, w, scale, bias, strides, padding, float(pad_value), backend,
                              (block_m, block_n))


@functools.partial(jax.jit, static_argnums=(4, 5, 6, 7, 8))
def _packed_conv2d_jit(x: Packed, w: Packed, scale, bias, strides, padding, pad_value, backend,
                       blocks) -> jax.Array:
    if x.ndim != 4 or x.axis != 3:
        raise ValueError(f"packed_conv2d: x must be NHWC packed along C (axis 3), got shape "
                         f"{x.shape} axis {x.axis}")
    if w.ndim != 4 or w.axis != 2:
        raise ValueError(f"packed_conv2d: w must be HWIO packed along I (axis 2), got shape "
                         f"{w.shape} axis {w.axis}")
    if x.length != w.length:
        raise ValueError(f"packed_conv2d: input channels differ: x has {x.length}, "
                         f"w has {w.length}")
    if x.encoding == "bool" and pad_value == -1.0:
        raise ValueError("packed_conv2d: {0,1} activations cannot be padded with -1")
    if min(strides) < 1:
        raise ValueError(f"packed_conv2d: strides must be positive, got {strides}")
    nb, h, wd, _ = x.shape
    kh, kw, _, c_out = w.shape
    # TensorFlow's SAME split (the extra pad row/column at the end), as lax and larq use.
    pads = tuple(tuple(p) for p in lax.padtype_to_pads((h, wd), (kh, kw), strides, padding))
    ho = (h + sum(pads[0]) - kh) // strides[0] + 1
    wo = (wd + sum(pads[1]) - kw) // strides[1] + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"packed_conv2d: kernel {kh}x{kw} does not fit input {h}x{wd} with "
                         f"padding {padding}")
    # Binary activations cannot hold 0: pad with +1 (zero bits) and subtract the +1 taps below.
    zero_fix = pad_value == 0.0 and x.encoding == "binary" and padding == "SAME"
    stored = 1.0 if zero_fix else pad_value
    valid = _pack_plane(jnp.ones((x.length,), bool), 0)  # real-channel bits of each word
    planes = _pad_border({"sign": x.sign, "mask": x.mask}, pads, stored, valid)

    def patches(p):
        if p is None:
            return None
        taps = [p[:, i:i + (ho - 1) * strides[0] + 1:strides[0],
                  j:j + (wo - 1) * strides[1] + 1:strides[1], :]
                for i in range(kh) for j in range(kw)]
        return jnp.concatenate(taps, axis=-1).reshape(nb * ho * wo, -1)

    cw = num_words(x.length)
    a = Packed(patches(planes["sign"]), patches(planes["mask"]), length=kh * kw * cw * WORD_BITS,
               axis=1)
    b = Packed(*(None if p is None else p.reshape(kh * kw * cw, c_out) for p in (w.sign, w.mask)),
               length=kh * kw * cw * WORD_BITS, axis=0)
    out = _matmul_2d(a, b, kh * kw * x.length, backend, blocks).reshape(nb, ho, wo, c_out)
    if zero_fix:
        out = out - _border_correction(w, (h, wd), pads, strides, (ho, wo))
    return _epilogue(out, scale, bias, c_out, "packed_conv2d")


def _border_correction(w: Packed, size, pads, strides, out_size) -> jax.Array:
    """Sum of the weights over the taps that fall on the (+1-filled) border: (1, Ho, Wo, O)."""
    kh, kw, _, c_out = w.shape
    # Sum over the input channels of each tap from popcounts of the packed words (no unpacking):
    # (non-zero count) - 2 (negative count); pad bits are zero in both planes.
    nonzero = (jnp.int32(w.length) if w.mask is None
               else jnp.sum(popcount(w.mask), axis=2))
    negative = 0 if w.sign is None else jnp.sum(popcount(w.sign), axis=2)
    tap_sum = jnp.broadcast_to(nonzero - 2 * negative, (kh, kw, c_out)).reshape(kh * kw, c_out)
    border = np.pad(np.zeros(size, np.int32), pads, constant_values=1)
    ho, wo = out_size
    taps = np.stack([border[i:i + (ho - 1) * strides[0] + 1:strides[0],
                            j:j + (wo - 1) * strides[1] + 1:strides[1]]
                     for i in range(kh) for j in range(kw)], axis=-1)  # (Ho, Wo, taps), static
    taps = jnp.asarray(taps.reshape(ho * wo, kh * kw))
    if kh * kw * w.length < 2 ** 24:
        # Every partial sum is an integer below 2^24, exact in float32, and XLA's float dot is
        # far faster than its integer one on CPU.
        corr = jnp.dot(taps.astype(jnp.float32), tap_sum.astype(jnp.float32),
                       precision=lax.Precision.HIGHEST).astype(jnp.int32)
    else:
        corr = jnp.dot(taps, tap_sum, preferred_element_type=jnp.int32)
    return corr.reshape(1, ho, wo, c_out)


# ----------------------------------------------------------------------------- W1A16

ACT_QUANT = (None, "int8")


def quantize_int8(x):
    """Per-row absmax int8 codes of ``x`` (BitNet b1.58's activations) and the row scales:
    ``x ≈ codes * scale`` with ``codes = round(x * 127 / absmax)`` in [-127, 127]."""
    x = x.astype(jnp.float32)
    absmax = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
    safe = jnp.where(absmax > 0, absmax, 1.0)
    codes = jnp.clip(jnp.round(x * (127.0 / safe)), -127, 127)
    return codes, safe / 127.0


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _weight_matmul(x, w_sign, w_mask, length, backend, blocks, act_quant=None):
    impl, interpret = resolve(backend)
    if act_quant == "int8":
        # Integer codes times ±1/0: every backend returns the same exact integer sums.
        codes, step = quantize_int8(x)
        if impl == "cpu_native":
            acc = native.weight_matmul(codes, w_sign, w_mask, "int8").astype(jnp.float32)
        else:
            acc = _weight_matmul(codes, w_sign, w_mask, length, backend, blocks)
        return acc * step
    if impl == "xla":
        return xla.weight_matmul(x, w_sign, w_mask, jnp.float32)
    if impl == "cpu_native":
        return native.weight_matmul(x, w_sign, w_mask)
    return pallas.weight_matmul(x, w_sign, w_mask, backend=impl, interpret=interpret,
                                block_m=blocks[0], block_n=blocks[1])


def _weight_matmul_fwd(x, w_sign, w_mask, length, backend, blocks, act_quant=None):
    out = _weight_matmul(x, w_sign, w_mask, length, backend, blocks, act_quant)
    return out, (x, w_sign, w_mask)


def _weight_matmul_bwd(length, backend, blocks, act_quant, res, g):
    x, w_sign, w_mask = res
    # dx = g @ W^T with W the unpacked ±1/ternary matrix: reference XLA, exact in f32 for ±1
    # (the int8 activation quantizer passes the gradient straight through).
    w = Packed(w_sign, w_mask, length=length, axis=0)
    dx = jnp.dot(g, unpack(w, jnp.float32).T, precision=lax.Precision.HIGHEST)

    def zero(p):
        return None if p is None else np.zeros(p.shape, jax.dtypes.float0)

    return dx.astype(x.dtype), zero(w_sign), zero(w_mask)


_weight_matmul.defvjp(_weight_matmul_fwd, _weight_matmul_bwd)


def packed_weight_matmul(x, w: Packed, *, scale=None, bias=None, preferred_element_type=None,
                         backend: str = "auto", block_m: int | None = None,
                         block_n: int | None = None, act_quant: str | None = None) -> jax.Array:
    """``x @ W``: float/bf16 ``x`` (..., K) times packed ±1/ternary ``W`` (K, N) (W1A16/W1.58A16).

    Accumulates in float32; the result has ``preferred_element_type`` (default ``x.dtype``).
    Differentiable in ``x`` (and in ``scale``/``bias``); the packed weights are constants.
    ``act_quant="int8"`` first rounds each row of ``x`` to int8 codes times its absmax / 127
    (:func:`quantize_int8`, BitNet b1.58's activations; W1.58A8) and sums the codes exactly.
    """
    w = _require_packed("w", w)
    _check_call("packed_weight_matmul", backend, block_m, block_n)
    if act_quant not in ACT_QUANT:
        raise ValueError(f"packed_weight_matmul: act_quant must be one of {list(ACT_QUANT)}, "
                         f"got {act_quant!r}")
    try:
        x = jnp.asarray(x)
    except TypeError as e:
        raise ValueError(f"packed_weight_matmul: x must be an array, got {type(x).__name__}") from e
    return _packed_weight_matmul_jit(x, w, scale, bias, preferred_element_type, backend,
                                     (block_m, block_n), act_quant)


@functools.partial(jax.jit, static_argnums=(4, 5, 6, 7))
def _packed_weight_matmul_jit(x, w: Packed, scale, bias, preferred_element_type, backend,
                              blocks, act_quant=None) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"packed_weight_matmul: x must be floating point (bf16/f16/f32), "
                         f"got dtype {x.dtype}")
    if w.ndim != 2 or w.axis != 0:
        raise ValueError(f"packed_weight_matmul: w must be (K, N) packed along K "
                         f"(pack(w, axis=0)), "
                         f"got shape {w.shape} axis {w.axis}")
    if w.encoding == "bool":
        raise ValueError("packed_weight_matmul: w must be binary or ternary, got a {0,1} encoding")
    if x.ndim < 1 or x.shape[-1] != w.length:
        raise ValueError(f"packed_weight_matmul: x has shape {x.shape}, its last axis must be "
                         f"K={w.length}")
    n = w.shape[1]
    lead = x.shape[:-1]
    out = _weight_matmul(x.reshape(-1, w.length), w.sign, w.mask, w.length, backend, blocks,
                         act_quant)
    out = _epilogue(out.reshape(*lead, n), scale, bias, n, "packed_weight_matmul")
    return out.astype(preferred_element_type or x.dtype)

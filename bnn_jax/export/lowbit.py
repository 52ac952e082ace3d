"""Frozen linears of the low-bit LLM methods: BitNet b1.58 (W1.58A8), PB-LLM and DB-LLM.

* :class:`FrozenBitLinear` — ternary (or ±1) levels times a per-output-channel scale with
  BitNet b1.58's per-token absmax int8 activations (``bitnet_act``, ``quant/bitnet.py``): the
  levels are packed as digits (:mod:`bnn_jax.kernels.trits`, 1.6 bits per weight in the default
  ``base3`` format) and the product of the int8 codes is exact in int32;
  ``y = (codes @ levels) · scale / s``, the fake-quant ``(codes / s) @ (levels · scale)``
  up to float32 rounding.
* :class:`FrozenPBLinear` — PB-LLM (``pbllm_weight``, ``quant/pbllm.py``): a binary plane of
  the non-salient signs (1 bit per weight) times the binarizer's scale, plus the salient
  weights as a sparse 8-bit part: their (row, column) positions, uint8 codes and the per-column
  scale and zero point of the 8-bit asymmetric grid (``asym_fake_quant``). At a salient
  position the plane holds +1, which the sparse part subtracts again. A non-salient weight
  that is exactly 0 (``sign_zero=0``: ``sign(0) = 0``) is a sparse entry too, at the code of 0.
* :class:`FrozenDBLinear` — DB-LLM's Flexible Dual Binarization (``dbllm_fdb``,
  ``quant/dbllm.py``): ``W = α₁ b₁ + α₂ b₂ + c`` per output channel with two {0,1} planes,
  stored as ±1 planes ``S = 1 − 2b`` (1 bit each) so that ``x @ b = (Σx − x @ S) / 2`` runs on
  the W1A16 kernel.
* Compressed models (``bnn_jax.compress``): PB-LLM's GPTQ-PB kernels (``pbllm_ptq_weight``,
  ``quant/ptq.py``: ``α·sign(W − μ) + μ`` off the salient mask, the stored 8-bit grid on it)
  become a :class:`FrozenPBLinear` with the per-channel offset ``μ`` (``+ μ·Σx``); the 2-bit
  RTN/GPTQ grid (``int_weight``, ``scale·(q − zero)`` with ``q = b₁ + 2 b₂``) is FDB's form
  with ``α₁ = scale``, ``α₂ = 2·scale``, ``c = −zero·scale`` and becomes a
  :class:`FrozenDBLinear`; wider grids have no packed form here.

Activations of PB-LLM and DB-LLM layers stay float (W·A16, as the papers evaluate them).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bnn_jax import kernels
from bnn_jax.export.frozen import PackedBits, Scale, _constrain
from bnn_jax.kernels import Packed, pack
from bnn_jax.kernels.trits import TritPacked, absmax_codes, pack_trits, trit_matmul

#: Input quantizers a W1.58A8 layer reproduces with int8 codes, and the kernel quantizers with
#: their own frozen form (ternary/binary kernels of any other quantizer are packed as well).
INT8_INPUTS = ("bitnet_act",)
LLM_KERNELS = ("bitnet_weight", "pbllm_weight", "dbllm_fdb", "pbllm_ptq_weight",
               "int_weight")
#: The widest ``int_weight`` grid that is packed (as two bit planes).
INT_PACKED_BITS = 2


class PackedBytes(nnx.Variable):
    """Packed uint8 weight digits or 8-bit codes of a frozen layer (not trained)."""


class SparseIndex(nnx.Variable):
    """Row / column positions of a frozen layer's sparse weights (not trained)."""


class _LowBit(nnx.Module):
    """Shared parts: bias, the schedule check, and input reshaping to rows."""

    def _common(self, layer, backend: str):
        self.k, self.n = (int(s) for s in layer.kernel_shape)
        self.bias = (nnx.Param(layer.bias[...]) if getattr(layer, "bias", None) is not None
                     else nnx.data(None))
        self.backend = backend

    def _rows(self, x, input_params, kernel_params):
        if input_params or kernel_params:
            raise ValueError("a frozen layer's quantizer parameters are fixed when it is frozen; "
                             "pass schedule values to freeze(model, quant_params=...)")
        if x.shape[-1] != self.k:
            raise ValueError(f"{type(self).__name__}: input has {x.shape[-1]} features, the "
                             f"layer expects {self.k}")
        return x.reshape(-1, self.k)

    def _float_rows(self, x, input_params, kernel_params):
        """(M, K) float32 rows of ``x`` after the kept input quantizer (if any)."""
        x = self._rows(x, input_params, kernel_params)
        if self.input_quantizer is not None:
            x = self.input_quantizer(x, **dict(self.input_params))
        return x.astype(jnp.float32)

    def _finish(self, y, lead, out_sharding):
        if self.bias is not None:
            y = y + self.bias[...]
        return _constrain(y.reshape(*lead, self.n), out_sharding)


def _act_params(q, input_params: Mapping[str, Any]) -> dict | None:
    """(bits, numerator, eps) of a ``bitnet_act`` input quantizer, or None for any other."""
    if q is None or q.name not in INT8_INPUTS:
        return None
    p = {**q.params, **input_params}
    bits = int(p.get("bits", 8))
    if bits > 8:
        return None
    qmax = 2 ** (bits - 1)
    numerator = float(qmax - 1 if p.get("variant", "b1.58") == "b1.58" else qmax)
    return dict(bits=bits, numerator=numerator, eps=float(p.get("eps", 1e-5)))


class FrozenBitLinear(_LowBit):
    """W1.58A8: per-token int8 codes of the input times packed ternary levels, exact in int32."""

    def __init__(self, layer, levels: np.ndarray, scale: np.ndarray, act: Mapping[str, Any], *,
                 fmt: str = "base3", backend: str = "auto"):
        self._common(layer, backend)
        packed = pack_trits(levels, fmt)
        self.data = PackedBytes(packed.data)
        # Static attributes are hashed with the graph (jit caches): items, not a dict.
        self.fmt, self.act = fmt, tuple(sorted(dict(act).items()))
        self.scale = Scale(jnp.asarray(scale, jnp.float32).reshape(-1))

    def packed_kernel(self) -> TritPacked:
        """The packed levels."""
        return TritPacked(self.data[...], length=self.k, n=self.n, fmt=self.fmt)

    def __call__(self, x, *, input_params=None, kernel_params=None, out_sharding=None):
        """Apply the layer (quantizer parameters are fixed at freeze time)."""
        lead = x.shape[:-1]
        codes, s = absmax_codes(self._rows(x, input_params, kernel_params), **dict(self.act))
        acc = trit_matmul(codes, self.packed_kernel(), backend=self.backend)
        y = acc.astype(jnp.float32) * self.scale[...] / s
        return self._finish(y, lead, out_sharding)


def _kept_input(layer, input_params) -> tuple[Any, dict] | str:
    q = layer.input_quantizer
    if q is not None and q.learned:
        return f"input quantizer {q.name!r} has learned arrays (not kept by this layer)"
    return q, dict(input_params)


class FrozenPBLinear(_LowBit):
    """PB-LLM: binary plane · scale (+ offset) + sparse 8-bit salient weights (float
    activations); ``offset`` (per output channel) is GPTQ-PB's binarizer mean ``μ``."""

    def __init__(self, layer, plane: Packed, bin_scale, rows, cols, codes, h_scale, h_zero, *,
                 offset=None, input_quantizer=None, input_params=None, backend: str = "auto"):
        self._common(layer, backend)
        self.w_sign = PackedBits(plane.sign)
        self.bin_scale = Scale(jnp.asarray(bin_scale, jnp.float32))
        self.offset = (Scale(jnp.asarray(offset, jnp.float32).reshape(-1)) if offset is not None
                       else nnx.data(None))
        # Per output channel a row of `width` (the largest count) sparse entries: row position
        # (uint16 when K allows) and code, padded past the channel's count. A gather of x over
        # these rows and a reduction along them is far faster in XLA than a scatter-add.
        counts = np.bincount(cols, minlength=self.n)
        width = max(int(counts.max(initial=0)), 1)
        slot = np.arange(cols.size) - np.concatenate([[0], np.cumsum(counts)])[cols]
        ell_rows = np.zeros((self.n, width), np.int64)
        ell_codes = np.zeros((self.n, width), np.uint8)
        ell_rows[cols, slot], ell_codes[cols, slot] = rows, codes
        self.rows = SparseIndex(jnp.asarray(ell_rows,
                                            jnp.uint16 if self.k <= 2 ** 16 else jnp.int32))
        self.codes = PackedBytes(jnp.asarray(ell_codes))
        self.counts = SparseIndex(jnp.asarray(counts, jnp.int32))
        self.h_scale = Scale(jnp.asarray(h_scale, jnp.float32))
        self.h_zero = Scale(jnp.asarray(h_zero, jnp.float32))
        self.input_quantizer = input_quantizer
        self.input_params = tuple(sorted(dict(input_params or {}).items()))

    def packed_kernel(self) -> Packed:
        """The binary plane."""
        return Packed(self.w_sign[...], None, length=self.k, axis=0)

    def _valid(self) -> jax.Array:
        return jnp.arange(self.codes[...].shape[1])[None, :] < self.counts[...][:, None]

    def salient_values(self) -> jax.Array:
        """(N, width) sparse weights ``h_scale · (code − zero)`` of each channel (0 past its
        count)."""
        v = self.h_scale[...][:, None] * (self.codes[...].astype(jnp.float32)
                                          - self.h_zero[...][:, None])
        return jnp.where(self._valid(), v, 0.0)

    def __call__(self, x, *, input_params=None, kernel_params=None, out_sharding=None):
        """Apply the layer (quantizer parameters are fixed at freeze time)."""
        lead = x.shape[:-1]
        x = self._float_rows(x, input_params, kernel_params)
        scale = jnp.broadcast_to(self.bin_scale[...], (self.n,))
        y = kernels.packed_weight_matmul(x, self.packed_kernel(), scale=scale,
                                         preferred_element_type=jnp.float32,
                                         backend=self.backend)
        # The plane holds +1 · scale (+ offset) at every sparse position: replace it by the
        # 8-bit weight.
        plus = scale
        if self.offset is not None:
            y = y + self.offset[...] * jnp.sum(x, axis=-1, keepdims=True)
            plus = scale + self.offset[...]
        delta = jnp.where(self._valid(), self.salient_values() - plus[:, None], 0.0)
        gathered = x[:, self.rows[...].astype(jnp.int32)]  # (M, N, width), delta (N, width)
        y = y + jnp.sum(gathered * delta, axis=-1)
        return self._finish(y, lead, out_sharding)


class FrozenDBLinear(_LowBit):
    """DB-LLM FDB: ``α₁ (x @ b₁) + α₂ (x @ b₂) + c Σx`` on two packed planes (float activations)."""

    def __init__(self, layer, b1: np.ndarray, b2: np.ndarray, alpha1, alpha2, offset, *,
                 input_quantizer=None, input_params=None, backend: str = "auto"):
        self._common(layer, backend)
        # Sign bit set where b = 1: the ±1 value 1 - 2b.
        self.s1 = PackedBits(pack(jnp.asarray(1 - 2 * b1, jnp.int32), axis=0).sign)
        self.s2 = PackedBits(pack(jnp.asarray(1 - 2 * b2, jnp.int32), axis=0).sign)
        self.alpha1 = Scale(jnp.asarray(alpha1, jnp.float32).reshape(-1))
        self.alpha2 = Scale(jnp.asarray(alpha2, jnp.float32).reshape(-1))
        self.offset = Scale(jnp.asarray(offset, jnp.float32).reshape(-1))
        self.input_quantizer = input_quantizer
        self.input_params = tuple(sorted(dict(input_params or {}).items()))

    def planes(self) -> tuple[Packed, Packed]:
        """The two ±1 planes ``1 − 2b₁`` and ``1 − 2b₂``."""
        return (Packed(self.s1[...], None, length=self.k, axis=0),
                Packed(self.s2[...], None, length=self.k, axis=0))

    def __call__(self, x, *, input_params=None, kernel_params=None, out_sharding=None):
        """Apply the layer (quantizer parameters are fixed at freeze time)."""
        lead = x.shape[:-1]
        x = self._float_rows(x, input_params, kernel_params)
        total = jnp.sum(x, axis=-1, keepdims=True)
        p1, p2 = self.planes()
        mm = lambda p: kernels.packed_weight_matmul(x, p, preferred_element_type=jnp.float32,
                                                    backend=self.backend)
        y = (self.alpha1[...] * (total - mm(p1)) * 0.5 + self.alpha2[...] * (total - mm(p2)) * 0.5
             + self.offset[...] * total)
        return self._finish(y, lead, out_sharding)


# ----------------------------------------------------------------------------- conversion


def _per_column(a, n: int, what: str) -> np.ndarray | str:
    a = np.asarray(a, np.float32)
    if a.size == 1:
        return np.broadcast_to(a.reshape(()), (n,)).copy()
    if a.shape in ((n,), (1, n)):
        return a.reshape(n)
    return f"{what} has shape {a.shape}, not one value per output channel ({n})"


def pb_parts(kernel: np.ndarray, wq: np.ndarray, salient: np.ndarray):
    """(plane levels, binarizer scale per column, rows, cols, codes, h_scale, h_zero) of a PB-LLM
    quantized kernel ``wq`` [in, out], or a string saying why it has no such form."""

    k, n = wq.shape
    nonsal = ~salient
    mag = np.where(nonsal, np.abs(wq), 0.0)
    s = mag.max(axis=0)
    if not np.all(np.where(nonsal, (mag == 0) | (mag == s[None]), True)):
        return "the non-salient weights are not ±scale per output channel"
    # Non-salient zeros (sign(0) = 0) join the sparse part as the code of 0 (the zero point),
    # so the plane stays binary: +1 wherever the sparse part holds the weight.
    sparse = salient | (nonsal & (wq == 0))
    levels = np.where(sparse, 1, np.sign(wq)).astype(np.int8)
    # The 8-bit grid of each column. asym_fake_quant puts the column's min and max at codes 0
    # and 255, but in float32 one of them can round one code inward (x.5 cases), so the
    # quantized column may span 254 or 253 steps: try the span of the latent kernel (what
    # pbllm_prepare / salient_quant="fake_quant" quantized), then of the sparse values alone,
    # each over 255, 254 and 253 steps, per column, until every sparse value is on the grid.
    rows, cols = np.nonzero(sparse.T)[::-1]  # sorted by column
    vals = wq[rows, cols].astype(np.float64)
    k64 = kernel.astype(np.float64)
    spans = [(k64.min(axis=0), k64.max(axis=0))]
    lo_v, hi_v = np.full(n, np.inf), np.full(n, -np.inf)
    np.minimum.at(lo_v, cols, vals)
    np.maximum.at(hi_v, cols, vals)
    spans.append((np.where(np.isfinite(lo_v), lo_v, 0.0), np.where(np.isfinite(hi_v), hi_v, 0.0)))
    h_scale, h_zero = np.ones(n), np.zeros(n)
    todo = np.ones(n, bool)
    for lo, hi in spans:
        for steps in (255, 254, 253):
            sc = np.where(hi > lo, (hi - lo) / steps, np.maximum(np.abs(lo), 1e-30))
            zp = np.round(-lo / sc)
            q = np.clip(np.round(vals / sc[cols]) + zp[cols], 0, 255)
            off = np.abs(sc[cols] * (q - zp[cols]) - vals) > 1e-4 * sc[cols] + 1e-30
            ok = todo.copy()
            ok[np.unique(cols[off])] = False
            h_scale[ok], h_zero[ok] = sc[ok], zp[ok]
            todo &= ~ok
    bad = np.nonzero(todo & (np.bincount(cols, minlength=n) > 0))[0]
    if bad.size:
        return (f"the salient weights of output channel {int(bad[0])} are not on an 8-bit "
                "grid (e.g. trained with train_salient=True)")
    codes = np.clip(np.round(vals / h_scale[cols]) + h_zero[cols], 0, 255).astype(np.uint8)
    return levels, s, rows, cols, codes, h_scale, h_zero


def pb_ptq_parts(layer, kernel: np.ndarray):
    """(plane levels, α, μ, rows, cols, codes, h_scale, h_zero) of a ``pbllm_ptq_weight``
    layer, recomputed from its stored grids as the quantizer does, or a string saying why it
    has no such form."""
    p = layer.kernel_quantizer.params
    high_bits, sign_zero = int(p.get("high_bits", 8)), int(p.get("sign_zero", 0))
    if high_bits > 8:
        return f"high_bits={high_bits}: the salient codes do not fit in 8 bits"
    n = kernel.shape[1]
    arr = {k: _per_column(getattr(layer, f"kernel_{k}")[...], n, k)
           for k in ("high_scale", "high_zero", "alpha", "mu")}
    bad = [v for v in arr.values() if isinstance(v, str)]
    if bad:
        return bad[0]
    hs, hz, alpha, mu = (arr[k] for k in ("high_scale", "high_zero", "alpha", "mu"))
    salient = np.broadcast_to(np.asarray(layer.kernel_salient_mask[...]) != 0, kernel.shape)
    d = kernel - mu[None]  # float32, as the quantizer subtracts
    sgn = np.sign(d) if sign_zero == 0 else np.where(d >= 0, 1.0, -1.0)
    # sign(0) = 0 leaves the value μ, which a ±1 plane reproduces only where α = 0.
    zero = ~salient & (sgn == 0) & (alpha[None] != 0)
    if zero.any():
        return ("a binarized weight equals its channel's mean μ: sign(0) = 0 gives it the value "
                "μ, not ±α + μ (the quantizer's sign_zero=1 takes +1 there)")
    levels = np.where(salient | (sgn == 0), 1, sgn).astype(np.int8)
    rows, cols = np.nonzero(salient.T)[::-1]  # sorted by column
    q = np.round(kernel[rows, cols] / hs[cols]) + hz[cols]
    codes = np.clip(q, 0, 2 ** high_bits - 1).astype(np.uint8)
    return levels, alpha, mu, rows, cols, codes, hs, hz


def int_planes(layer, kernel: np.ndarray):
    """(b₁, b₂, α₁, α₂, c) of a ≤ 2-bit ``int_weight`` layer: its codes ``q = b₁ + 2 b₂`` and
    ``scale·(q − zero) = α₁ b₁ + α₂ b₂ + c``, or a string saying why it has no such form."""
    bits = int(layer.kernel_quantizer.params.get("bits", 2))
    if bits > INT_PACKED_BITS:
        return (f"unsupported: a {bits}-bit grid has no packed form; supported: 'int_weight' "
                f"at <= {INT_PACKED_BITS} bits (two bit planes)")
    n = kernel.shape[1]
    scale, zero = (_per_column(getattr(layer, f"kernel_{k}")[...], n, k)
                   for k in ("scale", "zero"))
    for v in (scale, zero):
        if isinstance(v, str):
            return v
    q = np.clip(np.round(kernel / scale[None]) + zero[None], 0, 2 ** bits - 1).astype(np.int32)
    return q & 1, q >> 1, scale, 2 * scale, -zero * scale


def lowbit_layer(layer, backend: str, input_params: Mapping[str, Any], fmt: str = "base3"):
    """(frozen layer, record fields) for a QuantLinear this module handles, else None; a string
    instead of the layer says why it cannot be frozen."""
    from bnn_jax.export.frozen import split_levels
    from bnn_jax.nn import QuantLinear

    q = layer.kernel_quantizer
    if not isinstance(layer, QuantLinear) or tuple(getattr(layer, "stack_shape", ())):
        return None
    kernel = np.asarray(layer.kernel_variable()[...], np.float32)
    wq = np.asarray(layer.quantized_kernel(), np.float32)
    if q.name == "pbllm_weight":
        kept = _kept_input(layer, input_params)
        if isinstance(kept, str):
            return kept
        salient = np.asarray(layer.kernel_salient_mask[...]) != 0
        parts = pb_parts(kernel, wq, np.broadcast_to(salient, wq.shape))
        if isinstance(parts, str):
            return parts
        levels, s, rows, cols, codes, h_scale, h_zero = parts
        plane = pack(jnp.asarray(levels, jnp.int32), axis=0, encoding="binary")
        new = FrozenPBLinear(layer, plane, s, rows, cols, codes, h_scale, h_zero,
                             input_quantizer=kept[0], input_params=kept[1], backend=backend)
        return new, dict(encoding="binary + sparse 8-bit", plane_bytes=plane.nbytes)
    if q.name in ("pbllm_ptq_weight", "int_weight"):
        kept = _kept_input(layer, input_params)
        if isinstance(kept, str):
            return kept
        get = pb_ptq_parts if q.name == "pbllm_ptq_weight" else int_planes
        parts = get(layer, kernel)
        if isinstance(parts, str):
            return parts
        kw = dict(input_quantizer=kept[0], input_params=kept[1], backend=backend)
        if q.name == "int_weight":
            new = FrozenDBLinear(layer, *parts, **kw)
            return new, dict(encoding=f"{q.params.get('bits', 2)}-bit grid (two bit planes)",
                             plane_bytes=2 * 4 * new.s1[...].size)
        levels, alpha, mu, rows, cols, codes, hs, hz = parts
        plane = pack(jnp.asarray(levels, jnp.int32), axis=0, encoding="binary")
        new = FrozenPBLinear(layer, plane, alpha, rows, cols, codes, hs, hz, offset=mu, **kw)
        return new, dict(encoding="binary + sparse 8-bit", plane_bytes=plane.nbytes)
    if q.name == "dbllm_fdb":
        kept = _kept_input(layer, input_params)
        if isinstance(kept, str):
            return kept
        learned = {n: np.asarray(getattr(layer, f"kernel_{n}")[...]) for n in q.learned}
        n = wq.shape[1]
        per = {k: _per_column(learned[k], n, k) for k in ("alpha1", "alpha2", "offset")}
        bad = [v for v in per.values() if isinstance(v, str)]
        if bad:
            return bad[0]
        from bnn_jax.quant.dbllm import dual_planes

        b1, b2 = (np.asarray(b) for b in dual_planes(jnp.asarray(kernel), *(
            jnp.asarray(learned[k]) for k in ("alpha1", "alpha2", "offset"))))
        new = FrozenDBLinear(layer, b1, b2, per["alpha1"], per["alpha2"], per["offset"],
                             input_quantizer=kept[0], input_params=kept[1], backend=backend)
        return new, dict(encoding="dual binary", plane_bytes=2 * 4 * new.s1[...].size)
    act = _act_params(layer.input_quantizer, input_params)
    if act is None:
        return None
    split = split_levels(wq)
    if split is None:
        return None
    levels, scale, _ = split
    new = FrozenBitLinear(layer, levels, scale, act, fmt=fmt, backend=backend)
    return new, dict(encoding=f"ternary ({fmt})", plane_bytes=new.data[...].size)


def is_lowbit_layer(x) -> bool:
    """True for the frozen layers of this module."""
    return isinstance(x, _LowBit)

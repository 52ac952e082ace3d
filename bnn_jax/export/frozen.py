"""Frozen layers: packed ±1/ternary weights + per-channel scales that run on bnn_jax.kernels.

``freeze`` reads each quantized layer's *quantized* kernel ``q_w(W)`` (what the fake-quant
forward multiplies with, learned kernel arrays and schedule values included) and accepts it when
every output column is ``scale_c · levels`` with levels in {-1, +1} (binary) or {-1, 0, +1}
(ternary, also a masked binary kernel) exactly; the levels are packed along the contraction
axis, the scale is kept in float32. Embedding tables are packed along the feature axis with one
scale per row (token). Stacked layers (``nnx.scan``/``nnx.vmap`` over layers) are frozen layer
by layer into stacked planes that the same scan slices. Anything else (k-bit, multi-basis or
per-input-row scaled kernels, dilated convs, batched einsums, transposed convs) stays a float
layer, with the reason in the report.

The input quantizer is kept with its learned arrays (an RSign shift, an LSQ step) and the
schedule values given to ``freeze``, which are baked in. When its outputs are all in {-1, +1},
{0, 1} or {-1, 0, +1} (checked at freeze time, see :func:`input_encoding`) activations are packed
at run time and the product is the exact integer XNOR/AND-popcount; otherwise the packed weights
meet the float activations (W1A16-style).
"""

from __future__ import annotations

import math
import string
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from bnn_jax import kernels
from bnn_jax.kernels import Packed


#: Frozen layer classes by name (how a saved file names them).
FROZEN_KINDS: dict[str, type] = {}


def _constrain(y, out_sharding):
    # The keyword newer Flax passes to its layers (nnx.MultiHeadAttention's projections).
    return y if out_sharding is None else jax.lax.with_sharding_constraint(y, out_sharding)


class PackedBits(nnx.Variable):
    """A uint32 bit-plane of packed weights (not trained)."""


class Scale(nnx.Variable):
    """A per-output-channel float32 scale of a frozen layer (not trained)."""


def split_levels(wq: np.ndarray) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(levels in {-1,0,+1}, per-output-channel scale, 'binary'|'ternary') with
    ``levels * scale == wq`` exactly, or None when ``wq`` has no such form."""
    wq = np.asarray(wq, np.float32)
    mag = np.abs(wq).reshape(-1, wq.shape[-1])
    scale = mag.max(axis=0)
    scale = np.where(scale == 0, np.float32(1), scale).astype(np.float32)
    if not np.all((mag == 0) | (mag == scale)):
        return None
    levels = np.sign(wq).astype(np.int8)
    if not np.array_equal(levels.astype(np.float32) * scale, wq):
        return None
    return levels, scale, ("binary" if np.all(levels != 0) else "ternary")


_ENCODING_SETS = (("binary", {-1.0, 1.0}), ("bool", {0.0, 1.0}), ("ternary", {-1.0, 0.0, 1.0}))


def _probe(width: int, learned: Mapping[str, Any]) -> np.ndarray:
    """Probe activations (rows x width): a fine grid, signed zeros, tiny and huge values, ±1 and
    other likely thresholds with their float32 neighbours, and per channel the negated learned
    arrays with their neighbours (where a learned shift such as RSign's β moves the threshold)."""
    pts = [np.linspace(-4, 4, 801, dtype=np.float32),
           np.array([0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7], np.float32)]
    for b in (0.5, 1.0, 1.5, 2.0, 8.0, 64.0, 1e3, 1e6, 1e30):
        for v in (b, -b):
            v = np.float32(v)
            pts.append(np.array([v, np.nextafter(v, np.float32(np.inf)),
                                 np.nextafter(v, np.float32(-np.inf))], np.float32))
    rows = np.repeat(np.concatenate(pts)[:, None], width, axis=1)
    extra = []
    for a in learned.values():
        a = np.asarray(a, np.float32)
        if a.size and a.size in (1, width) and a.ndim <= 1:
            t = np.broadcast_to(a.reshape(-1), (width,))
            for c in (-t, t):
                extra += [c, np.nextafter(c, np.float32(np.inf)),
                          np.nextafter(c, np.float32(-np.inf))]
    return np.concatenate([rows, *(e[None] for e in extra)]) if extra else rows


def input_encoding(q, learned: Mapping[str, Any], width: int, ndim: int,
                   params: Mapping[str, Any] | None = None) -> str | None:
    """The packing encoding an input quantizer's outputs fit ('binary'|'bool'|'ternary') or None
    (full precision or multi-level: the frozen layer then uses float activations).

    The check runs the quantizer (with its learned arrays and ``params``) on probe values; only
    quantizers that declare at most 2 output bits are candidates, so a k-bit quantizer whose
    probe outputs happen to be ternary is never packed.
    """
    if q is None or q.bits is None or q.bits > 2:
        return None
    probe = _probe(width, learned)
    probe = probe.reshape((-1,) + (1,) * (ndim - 2) + (width,))
    out = np.asarray(q(jnp.asarray(probe), **learned, **(params or {})))
    values = set(np.unique(out).tolist())
    for name, allowed in _ENCODING_SETS:
        if values <= allowed:
            return name
    return None


def concrete_params(params: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Schedule values as plain Python numbers (they are baked into the frozen layer)."""
    out = {}
    for k, v in params.items():
        if isinstance(v, jax.core.Tracer):
            raise ValueError(f"{where}: quantizer parameter {k!r} is a traced value; freeze "
                             "outside jit with concrete schedule values")
        a = np.asarray(v)
        out[k] = a.item() if a.ndim == 0 else a.tolist()
    return out


class _Frozen(nnx.Module):
    """Shared state of frozen layers: packed planes, scale, bias, the kept input quantizer."""

    def _setup(self, layer, packed: Packed, scale, act_encoding: str | None, backend: str,
               input_params: Mapping[str, Any] | None,
               kernel_params: Mapping[str, Any] | None = None):
        self.w_sign = PackedBits(packed.sign) if packed.sign is not None else nnx.data(None)
        self.w_mask = PackedBits(packed.mask) if packed.mask is not None else nnx.data(None)
        self.length, self.axis, self.encoding = packed.length, packed.axis, packed.encoding
        self.scale = Scale(jnp.asarray(scale, jnp.float32))
        self.bias = (nnx.Param(layer.bias[...]) if getattr(layer, "bias", None) is not None
                     else nnx.data(None))
        self.input_quantizer = layer.input_quantizer
        self.input_params = dict(input_params or {})
        # Kept only to check call-time schedules against what the packed kernel was made with.
        self.kernel_quantizer = layer.kernel_quantizer
        self.kernel_params = dict(kernel_params or {})
        self.act_encoding, self.backend = act_encoding, backend
        for name in (layer.input_quantizer.learned if layer.input_quantizer else ()):
            setattr(self, f"input_{name}", nnx.Param(getattr(layer, f"input_{name}")[...]))

    def packed_kernel(self) -> Packed:
        """The packed weight levels as a :class:`bnn_jax.kernels.Packed` value."""
        sign = self.w_sign[...] if self.w_sign is not None else None
        mask = self.w_mask[...] if self.w_mask is not None else None
        return Packed(sign, mask, length=self.length, axis=self.axis)

    def quantize_input(self, x, input_params=None, kernel_params=None):
        """The kept input quantizer (identity if None) with its learned arrays and the schedule
        values baked at freeze time."""
        self.check_schedules(input_params, kernel_params)
        q = self.input_quantizer
        if q is None:
            return x
        learned = {n: getattr(self, f"input_{n}")[...] for n in q.learned}
        return q(x, **learned, **self.input_params)

    def check_schedules(self, input_params=None, kernel_params=None):
        """Refuse call-time quantizer parameters and schedule values other than the baked ones."""
        from bnn_jax.nn.layers import active_quant_params

        if input_params or kernel_params:
            raise ValueError("a frozen layer's quantizer parameters are fixed when it is frozen; "
                             "pass schedule values to freeze(model, quant_params=...)")
        # A schedule value that differs from the baked one would ask for another kernel or
        # another input encoding than the packed ones: refuse rather than compute something else.
        for role, qq, baked in (("kernel", self.kernel_quantizer, self.kernel_params),
                                ("input", self.input_quantizer, self.input_params)):
            for k, v in (active_quant_params(role, qq) if qq is not None else {}).items():
                want = baked.get(k, qq.params[k])
                if isinstance(v, jax.core.Tracer) or np.any(np.asarray(v) != np.asarray(want)):
                    raise ValueError(f"quant_params sets {role} {k!r} while this layer was "
                                     f"frozen with {k}={want!r}; freeze with the schedule "
                                     "values you want to run")

    def _bias(self):
        return None if self.bias is None else self.bias[...]

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        FROZEN_KINDS[cls.__name__] = cls

    def _matmul(self, x, bias=None, w: Packed | None = None):
        """(..., K) activations times the packed (K, N) kernel (``w``, default this layer's),
        scaled (+ ``bias``), float32: the integer kernel on packed activations, else packed
        weights times float ones."""
        w = self.packed_kernel() if w is None else w
        if self.act_encoding is not None:
            return kernels.packed_matmul(kernels.pack(x, -1, self.act_encoding), w,
                                         scale=self.scale[...], bias=bias, backend=self.backend)
        return kernels.packed_weight_matmul(x, w, scale=self.scale[...], bias=bias,
                                            preferred_element_type=jnp.float32,
                                            backend=self.backend)


class FrozenLinear(_Frozen):
    """A frozen QuantLinear: ``(q_in(x) ⊙ packed levels) · scale + bias`` on the kernels."""

    def __init__(self, layer, packed: Packed, scale, act_encoding: str | None, *,
                 backend: str = "auto", input_params: Mapping[str, Any] | None = None,
                 kernel_params: Mapping[str, Any] | None = None):
        self._setup(layer, packed, scale, act_encoding, backend, input_params, kernel_params)

    def __call__(self, x, *, input_params=None, kernel_params=None, out_sharding=None):
        """Apply the layer (quantizer parameters are fixed at freeze time)."""
        y = self._matmul(self.quantize_input(x, input_params, kernel_params), self._bias())
        return _constrain(y, out_sharding)


# ------------------------------------------------------------------ einsum / LinearGeneral --

def einsum_unsupported(spec: str | None, kernel_ndim: int) -> str | None:
    """None if ``spec`` is a plain contraction ``x, W -> y`` that maps onto one (M, K) x (K, N)
    matmul (every kernel axis contracted with the input or kept in the output), else why not."""
    if spec is None:
        return "einsum_str given at call time"
    lhs, rest = spec.split(",")
    rhs, out = rest.split("->")
    if "..." in rhs:
        return f"einsum {spec!r}: the kernel operand has '...'"
    if ("..." in lhs) != ("..." in out):
        return f"einsum {spec!r}: '...' must be in both the input and the output"
    lhs_l, out_l = lhs.replace("...", ""), out.replace("...", "")
    if len(rhs) != kernel_ndim or len(set(rhs)) != len(rhs) or len(set(lhs_l)) != len(lhs_l) \
            or len(set(out_l)) != len(out_l):
        return f"einsum {spec!r}: repeated axis letters (traces/diagonals)"
    for c in rhs:
        if c in lhs_l and c in out_l:
            return f"einsum {spec!r}: kernel axis {c!r} is also a batch axis of the input"
        if c not in lhs_l and c not in out_l:
            return f"einsum {spec!r}: kernel axis {c!r} is summed on its own"
    for c in lhs_l:
        if c not in rhs and c not in out_l:
            return f"einsum {spec!r}: input axis {c!r} is summed on its own"
    if not any(c in lhs_l for c in rhs):
        return f"einsum {spec!r}: nothing is contracted"
    stray = [c for c in out_l if c not in lhs_l and c not in rhs]
    if stray:
        return f"einsum {spec!r}: output axes {stray} come from neither operand"
    return None


def _expand(spec: str, x_ndim: int) -> tuple[str, str, str]:
    """(lhs, rhs, out) of ``spec`` with '...' replaced by letters for the input's extra axes."""
    lhs, rest = spec.split(",")
    rhs, out = rest.split("->")
    if "..." in lhs:
        used = set(spec)
        free = [c for c in string.ascii_letters if c not in used]
        n = x_ndim - (len(lhs) - 3)
        if n < 0:
            raise ValueError(f"einsum {spec!r}: input of rank {x_ndim} is too small")
        ell = "".join(free[:n])
        lhs, out = lhs.replace("...", ell), out.replace("...", ell)
    if len(lhs) != x_ndim:
        raise ValueError(f"einsum {spec!r}: input has rank {x_ndim}, expected {len(lhs)}")
    return lhs, rhs, out


def kernel_matrix(w, spec: str):
    """The einsum kernel as the (K, N) matrix: contracted axes (rows), then output axes."""
    lhs, rest = spec.split(",")
    rhs = rest.split("->")[0]
    contracted = [i for i, c in enumerate(rhs) if c in lhs]
    kept = [i for i, c in enumerate(rhs) if c not in lhs]
    w = jnp.asarray(w)
    return jnp.reshape(jnp.transpose(w, contracted + kept),
                       (math.prod(w.shape[i] for i in contracted), -1))


def linear_general_spec(axis, n_in: int, n_out: int, x_ndim: int) -> str:
    """The einsum that QuantLinearGeneral computes on an input of rank ``x_ndim``."""
    axis = sorted(a % x_ndim for a in axis)
    letters = string.ascii_letters
    lhs = letters[:x_ndim]
    outs = letters[x_ndim:x_ndim + n_out]
    rhs = "".join(lhs[a] for a in axis) + outs
    free = "".join(c for i, c in enumerate(lhs) if i not in axis)
    if len(axis) != n_in:
        raise ValueError(f"LinearGeneral axis {axis} does not match {n_in} input feature axes")
    return f"{lhs},{rhs}->{free}{outs}"


class FrozenEinsum(_Frozen):
    """A frozen QuantEinsum / QuantLinearGeneral whose einsum is a plain contraction: the input
    is transposed to (free axes, contracted axes), multiplied by the packed (K, N) kernel and
    the result reshaped and transposed to the einsum's output."""

    def __init__(self, layer, packed: Packed, scale, act_encoding: str | None, *,
                 backend: str = "auto", input_params: Mapping[str, Any] | None = None,
                 kernel_params: Mapping[str, Any] | None = None):
        self._setup(layer, packed, scale, act_encoding, backend, input_params, kernel_params)
        self.einsum_str = getattr(layer, "einsum_str", None)
        self.linear_axis = tuple(layer.axis) if hasattr(layer, "axis") else None
        self.kernel_shape = tuple(layer.kernel_shape)
        self.n_in = len(layer.in_features) if hasattr(layer, "in_features") else 0

    def spec(self, x_ndim: int) -> str:
        """The einsum this layer computes on an input of rank ``x_ndim``."""
        if self.einsum_str is not None:
            return self.einsum_str
        return linear_general_spec(self.linear_axis, self.n_in,
                                   len(self.kernel_shape) - self.n_in, x_ndim)

    def __call__(self, x, einsum_str=None, *, input_params=None, kernel_params=None,
                 out_sharding=None):
        """Apply the layer (quantizer parameters are fixed at freeze time)."""
        if einsum_str is not None and einsum_str.replace(" ", "") != self.einsum_str:
            raise ValueError(f"this layer was frozen for einsum {self.einsum_str!r}, "
                             f"got {einsum_str!r}")
        xq = self.quantize_input(x, input_params, kernel_params)
        lhs, rhs, out = _expand(self.spec(xq.ndim), xq.ndim)
        free = [c for c in lhs if c not in rhs]
        contracted = [c for c in rhs if c in lhs]
        kept = [c for c in rhs if c not in lhs]
        xt = jnp.transpose(xq, [lhs.index(c) for c in free + contracted])
        free_shape = xt.shape[:len(free)]
        y = self._matmul(jnp.reshape(xt, (math.prod(free_shape), -1)))
        y = jnp.reshape(y, (*free_shape, *[self.kernel_shape[rhs.index(c)] for c in kept]))
        y = jnp.transpose(y, [(free + kept).index(c) for c in out])
        b = self._bias()
        if b is not None:
            if self.einsum_str is None:
                y = y + b  # LinearGeneral: bias over the trailing output-feature axes
            else:
                # As QuantEinsum: bias axes = the output axes that come from the kernel.
                y = y + jnp.reshape(b, [self.kernel_shape[rhs.index(c)] if c in rhs else 1
                                        for c in out])
        return _constrain(y, out_sharding)


# ----------------------------------------------------------------------------------- conv --

def conv_supported(layer) -> str | None:
    """None if a QuantConv can be frozen onto packed storage + packed_conv2d, else why not."""
    if len(layer.kernel_size) != 2:
        return f"{len(layer.kernel_size)}-D convolution (only 2-D is packed)"
    if layer.input_dilation != (1, 1) or layer.kernel_dilation != (1, 1):
        return "dilated convolution"
    if layer.pad_values not in kernels.ops.PAD_VALUES:
        return f"pad_values {layer.pad_values} (packed convs pad with 0, +1 or -1)"
    return None


def conv_pack_axis(layer) -> int:
    """The HWIO axis the frozen conv packs its kernel along: I (the contraction, one
    packed_conv2d per group) unless a grouped conv has fewer than 32 inputs per group (e.g.
    depthwise), where I would waste most of each word: then O (packed storage, float conv)."""
    per_group = layer.in_features // layer.feature_group_count
    if layer.feature_group_count > 1 and per_group < kernels.WORD_BITS:
        return 3
    return 2


class FrozenConv(_Frozen):
    """A frozen 2-D QuantConv (SAME/VALID, larq pad_values, groups) on packed_conv2d."""

    def __init__(self, layer, packed: Packed, scale, act_encoding: str | None, *,
                 backend: str = "auto", input_params: Mapping[str, Any] | None = None,
                 kernel_params: Mapping[str, Any] | None = None):
        if act_encoding == "bool" and layer.pad_values == -1.0:
            act_encoding = None  # {0,1} activations cannot hold the -1 border
        if packed.axis != 2:
            act_encoding = None  # packed along O: the float conv computes it
        self._setup(layer, packed, scale, act_encoding, backend, input_params, kernel_params)
        self.strides, self.padding, self.pad_values = layer.strides, layer.padding, layer.pad_values
        self.kernel_size = tuple(layer.kernel_size)
        self.groups = layer.feature_group_count

    def _pads(self, spatial) -> list[tuple[int, int]]:
        """The explicit (low, high) pads of the two spatial axes (as QuantConv pads)."""
        p = self.padding
        if p in ("SAME", "VALID"):
            return [tuple(q) for q in lax.padtype_to_pads(spatial, self.kernel_size,
                                                           self.strides, p)]
        if p in ("CIRCULAR", "REFLECT"):
            return [((k - 1) // 2, k // 2) for k in self.kernel_size]
        return [tuple(q) for q in p]

    def __call__(self, x, *, input_params=None, kernel_params=None, out_sharding=None):
        """Apply the layer (quantizer parameters are fixed at freeze time)."""
        batch_shape = x.shape[:-3]
        x = jnp.reshape(x, (-1,) + x.shape[-3:])
        xq = self.quantize_input(x, input_params, kernel_params)
        w = self.packed_kernel()
        if self.act_encoding is None:
            y = self._float_conv(xq, w)
        elif self.groups == 1:
            y = self._packed_conv(xq, w, self.scale[...])
        else:
            # One packed_conv2d per group: group g sees input channels g·I..(g+1)·I and owns
            # output channels g·O/G..(g+1)·O/G (lax's feature_group_count layout).
            cin, cout = w.length, self.scale.shape[0] // self.groups
            ys = []
            for g in range(self.groups):
                cols = slice(g * cout, (g + 1) * cout)
                wg = Packed(None if w.sign is None else w.sign[..., cols],
                            None if w.mask is None else w.mask[..., cols],
                            length=w.length, axis=w.axis)
                ys.append(self._packed_conv(xq[..., g * cin:(g + 1) * cin], wg,
                                            self.scale[...][cols]))
            y = jnp.concatenate(ys, axis=-1)
        if self.bias is not None:
            y = y + self.bias[...]
        return _constrain(jnp.reshape(y, batch_shape + y.shape[1:]), out_sharding)

    def _border(self, xq):
        """``xq`` padded as QuantConv pads it, and the fill that stands for a zero pad."""
        pads = [(0, 0), *self._pads(xq.shape[1:3]), (0, 0)]
        if self.padding in ("CIRCULAR", "REFLECT"):
            mode = {"CIRCULAR": "wrap", "REFLECT": "reflect"}[self.padding]
            return jnp.pad(xq, pads, mode=mode), None
        # Binary activations cannot hold a 0: fill with +1 and subtract its share afterwards.
        fill = (1.0 if self.pad_values == 0.0 and self.act_encoding == "binary"
                else self.pad_values)
        return jnp.pad(xq, pads, constant_values=fill), (pads if fill != self.pad_values
                                                          else None)

    def _packed_conv(self, xq, w: Packed, scale):
        if self.padding in ("SAME", "VALID"):
            return kernels.packed_conv2d(kernels.pack(xq, 3, self.act_encoding), w,
                                         strides=self.strides, padding=self.padding,
                                         pad_value=self.pad_values, scale=scale,
                                         backend=self.backend)
        xp, fixed = self._border(xq)
        y = kernels.packed_conv2d(kernels.pack(xp, 3, self.act_encoding), w,
                                  strides=self.strides, padding="VALID", backend=self.backend)
        if fixed is not None:
            # The +1 border's share: the level sums over input channels of the taps that fall
            # on the border (integers, exact).
            inside = jnp.zeros((1, *xq.shape[1:3], 1), jnp.int32)
            border = jnp.pad(inside, fixed, constant_values=1)
            wsum = jnp.sum(kernels.unpack(w, jnp.int32), axis=2, keepdims=True)
            y = y - lax.conv_general_dilated(border, wsum, self.strides, "VALID",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y.astype(jnp.float32) * scale

    def _float_conv(self, xq, w: Packed):
        # Float activations (or O-packed storage): the packed levels are unpacked and scaled
        # (storage stays packed); padding after quantizing with pad_values, as QuantConv.
        kernel = kernels.unpack(w, jnp.float32) * self.scale[...]
        pads = [(0, 0), *self._pads(xq.shape[1:3]), (0, 0)]
        xq = xq.astype(jnp.float32)
        if self.padding in ("CIRCULAR", "REFLECT"):
            mode = {"CIRCULAR": "wrap", "REFLECT": "reflect"}[self.padding]
            xq = jnp.pad(xq, pads, mode=mode)
        else:
            xq = jnp.pad(xq, pads, constant_values=self.pad_values)
        return lax.conv_general_dilated(xq, kernel, self.strides, "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=self.groups)


def layer_input_encoding(layer, params: Mapping[str, Any] | None = None) -> str | None:
    """:func:`input_encoding` of a quantized layer's input quantizer (its learned arrays and
    ``params``); the probe's channel axis is the last one, as the layer's input."""
    q = layer.input_quantizer
    learned = _learned(layer)
    width = max((np.size(a) for a in learned.values() if np.ndim(a) == 1), default=1)
    if hasattr(layer, "kernel_size"):
        width, ndim = layer.in_features, 4
    elif isinstance(getattr(layer, "in_features", None), int):
        width, ndim = layer.in_features, 2
    elif isinstance(getattr(layer, "features", None), int):  # an embedding's attend query
        width, ndim = layer.features, 2
    else:
        ndim = 2
    return input_encoding(q, learned, width, ndim, params)


def _learned(layer) -> dict[str, jax.Array]:
    q = layer.input_quantizer
    if q is None or not q.learned:
        return {}
    missing = [n for n in q.learned if not hasattr(layer, f"input_{n}")]
    if missing:
        raise ValueError(f"input quantizer {q.name!r} has learned arrays {missing} that do not "
                         f"exist yet: call the model once on a batch before freezing it")
    return {n: getattr(layer, f"input_{n}")[...] for n in q.learned}


# ------------------------------------------------------------------------------ embedding --

class FrozenEmbed(_Frozen):
    """A frozen QuantEmbed: the table's levels packed along the features, one scale per row
    (token). A lookup unpacks the rows it reads; ``attend`` (a tied output layer) is the packed
    matmul of the quantized query with the table's transpose."""

    def __init__(self, layer, packed: Packed, scale, act_encoding: str | None, *,
                 backend: str = "auto", input_params: Mapping[str, Any] | None = None,
                 kernel_params: Mapping[str, Any] | None = None):
        self._setup(layer, packed, scale, act_encoding, backend, input_params, kernel_params)
        self.num_embeddings, self.features = layer.num_embeddings, layer.features

    def __call__(self, inputs, *, kernel_params=None, out_sharding=None):
        """The table's rows at the integer ``inputs`` (float32)."""
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError(f"FrozenEmbed: inputs must be integer token ids, got {inputs.dtype}")
        self.check_schedules(None, kernel_params)
        w = self.packed_kernel()
        rows = Packed(*(None if p is None else jnp.take(p, inputs, axis=0)
                        for p in (w.sign, w.mask)), length=w.length, axis=inputs.ndim)
        scale = jnp.take(self.scale[...], inputs, axis=0)[..., None]
        return _constrain(kernels.unpack(rows, jnp.float32) * scale, out_sharding)

    def attend(self, query, *, input_params=None, kernel_params=None, out_sharding=None):
        """``q_in(query) @ table.T`` on the packed table (logits over the vocabulary)."""
        xq = self.quantize_input(query, input_params, kernel_params)
        w = self.packed_kernel()
        wt = Packed(*(None if p is None else p.T for p in (w.sign, w.mask)), length=w.length,
                    axis=0)
        return _constrain(self._matmul(xq, None, wt), out_sharding)

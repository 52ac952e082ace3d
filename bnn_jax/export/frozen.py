"""Frozen layers: packed ±1/ternary weights + per-channel scales that run on bnn_jax.kernels.

``freeze`` reads each quantized layer's *quantized* kernel ``q_w(W)`` (what the fake-quant
forward multiplies with) and accepts it when every output channel is ``scale_c · levels`` with
levels in {-1, +1} (binary) or {-1, 0, +1} (ternary, also a masked binary kernel) exactly; the
levels are packed along the contraction axis, the scale is kept in float32. Anything else
(k-bit, multi-basis kernels, grouped/dilated convs, CIRCULAR/REFLECT/CAUSAL/explicit padding)
stays a float layer.

The input quantizer is kept (it is a pure function of the activations). When its outputs are
all in {-1, +1}, {0, 1} or {-1, 0, +1} (checked at freeze time on probe values that include 0,
-0.0, the clip boundaries and their float32 neighbours) activations are packed at run time and
the product is the exact integer XNOR/AND-popcount; otherwise the packed weights meet the
float activations (W1A16-style). Schedules change gradients, not these forwards, so
``kernel_params`` are ignored and ``input_params`` are still applied.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from bnn_jax import kernels
from bnn_jax.kernels import Packed


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


def _probe(width: int) -> np.ndarray:
    """Probe activations: a fine grid, signed zeros, tiny values, ±1 and their neighbours."""
    pts = [np.linspace(-4, 4, 801, dtype=np.float32),
           np.array([0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7], np.float32)]
    for b in (0.5, 1.0, 1.5, 2.0):
        for v in (b, -b):
            v = np.float32(v)
            pts.append(np.array([v, np.nextafter(v, np.float32(np.inf)),
                                 np.nextafter(v, np.float32(-np.inf))], np.float32))
    p = np.concatenate(pts)
    return np.repeat(p[:, None], width, axis=1)


def input_encoding(q, learned: Mapping[str, Any], width: int, ndim: int) -> str | None:
    """The packing encoding an input quantizer's outputs fit ('binary'|'bool'|'ternary') or None
    (full precision or multi-level: the frozen layer then uses float activations)."""
    if q is None:
        return None
    probe = _probe(width).reshape((-1,) + (1,) * (ndim - 2) + (width,))
    out = np.asarray(q(jnp.asarray(probe), **learned))
    values = set(np.unique(out).tolist())
    for name, allowed in _ENCODING_SETS:
        if values <= allowed:
            return name
    return None


class _Frozen(nnx.Module):
    """Shared state of frozen layers: packed planes, scale, bias, the kept input quantizer."""

    def _setup(self, layer, packed: Packed, scale, act_encoding: str | None, backend: str):
        self.w_sign = PackedBits(packed.sign) if packed.sign is not None else nnx.data(None)
        self.w_mask = PackedBits(packed.mask) if packed.mask is not None else nnx.data(None)
        self.length, self.axis, self.encoding = packed.length, packed.axis, packed.encoding
        self.scale = Scale(jnp.asarray(scale, jnp.float32))
        self.bias = (nnx.Param(layer.bias[...]) if getattr(layer, "bias", None) is not None
                     else nnx.data(None))
        self.input_quantizer = layer.input_quantizer
        self.act_encoding, self.backend = act_encoding, backend
        for name in (layer.input_quantizer.learned if layer.input_quantizer else ()):
            setattr(self, f"input_{name}", nnx.Param(getattr(layer, f"input_{name}")[...]))

    def packed_kernel(self) -> Packed:
        """The packed weight levels as a :class:`bnn_jax.kernels.Packed` value."""
        sign = self.w_sign[...] if self.w_sign is not None else None
        mask = self.w_mask[...] if self.w_mask is not None else None
        return Packed(sign, mask, length=self.length, axis=self.axis)

    def quantize_input(self, x, input_params=None):
        """The kept input quantizer (identity if None) with its learned arrays."""
        q = self.input_quantizer
        if q is None:
            return x
        learned = {n: getattr(self, f"input_{n}")[...] for n in q.learned}
        return q(x, **learned, **(input_params or {}))

    def _bias(self):
        return None if self.bias is None else self.bias[...]


class FrozenLinear(_Frozen):
    """A frozen QuantLinear: ``(q_in(x) ⊙ packed levels) · scale + bias`` on the kernels."""

    def __init__(self, layer, packed: Packed, scale, act_encoding: str | None, *,
                 backend: str = "auto"):
        self._setup(layer, packed, scale, act_encoding, backend)

    def __call__(self, x, *, input_params=None, kernel_params=None):
        """Apply the layer (``kernel_params`` are ignored: the kernel is frozen)."""
        xq = self.quantize_input(x, input_params)
        w = self.packed_kernel()
        if self.act_encoding is not None:
            return kernels.packed_matmul(kernels.pack(xq, -1, self.act_encoding), w,
                                         scale=self.scale[...], bias=self._bias(),
                                         backend=self.backend)
        return kernels.packed_weight_matmul(xq, w, scale=self.scale[...], bias=self._bias(),
                                            preferred_element_type=jnp.float32,
                                            backend=self.backend)


def conv_supported(layer) -> str | None:
    """None if a QuantConv can be frozen onto packed_conv2d, else the reason it cannot."""
    if len(layer.kernel_size) != 2:
        return f"{len(layer.kernel_size)}-D convolution (only 2-D is packed)"
    if layer.feature_group_count != 1:
        return "grouped convolution"
    if layer.input_dilation != (1, 1) or layer.kernel_dilation != (1, 1):
        return "dilated convolution"
    if layer.padding not in ("SAME", "VALID"):
        return f"padding {layer.padding!r} (only SAME/VALID are packed)"
    if layer.pad_values not in kernels.ops.PAD_VALUES:
        return f"pad_values {layer.pad_values} (packed convs pad with 0, +1 or -1)"
    return None


class FrozenConv(_Frozen):
    """A frozen 2-D QuantConv (SAME/VALID, larq pad_values) on packed_conv2d."""

    def __init__(self, layer, packed: Packed, scale, act_encoding: str | None, *,
                 backend: str = "auto"):
        if act_encoding == "bool" and layer.pad_values == -1.0:
            act_encoding = None  # {0,1} activations cannot hold the -1 border
        self._setup(layer, packed, scale, act_encoding, backend)
        self.strides, self.padding, self.pad_values = layer.strides, layer.padding, layer.pad_values

    def __call__(self, x, *, input_params=None, kernel_params=None):
        """Apply the layer (``kernel_params`` are ignored: the kernel is frozen)."""
        batch_shape = x.shape[:-3]
        x = jnp.reshape(x, (-1,) + x.shape[-3:])
        xq = self.quantize_input(x, input_params)
        w = self.packed_kernel()
        if self.act_encoding is not None:
            y = kernels.packed_conv2d(kernels.pack(xq, 3, self.act_encoding), w,
                                      strides=self.strides, padding=self.padding,
                                      pad_value=self.pad_values, scale=self.scale[...],
                                      bias=self._bias(), backend=self.backend)
        else:
            y = self._float_conv(xq, w)
        return jnp.reshape(y, batch_shape + y.shape[1:])

    def _float_conv(self, xq, w: Packed):
        # Float activations: the packed levels are unpacked and scaled (storage stays packed).
        kernel = kernels.unpack(w, jnp.float32) * self.scale[...]
        pads = lax.padtype_to_pads(xq.shape[1:3], kernel.shape[:2], self.strides, self.padding)
        xq = jnp.pad(xq.astype(jnp.float32), [(0, 0), *pads, (0, 0)],
                     constant_values=self.pad_values)
        y = lax.conv_general_dilated(xq, kernel, self.strides, "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y if self.bias is None else y + self.bias[...]


def layer_input_encoding(layer) -> str | None:
    """:func:`input_encoding` of a QuantLinear (2-D inputs) or QuantConv (NHWC inputs)."""
    ndim = 4 if hasattr(layer, "kernel_size") else 2
    return input_encoding(layer.input_quantizer, _learned(layer), layer.in_features, ndim)


def _learned(layer) -> dict[str, jax.Array]:
    q = layer.input_quantizer
    if q is None or not q.learned:
        return {}
    missing = [n for n in q.learned if not hasattr(layer, f"input_{n}")]
    if missing:
        raise ValueError(f"input quantizer {q.name!r} has learned arrays {missing} that do not "
                         f"exist yet: call the model once on a batch before freezing it")
    return {n: getattr(layer, f"input_{n}")[...] for n in q.learned}

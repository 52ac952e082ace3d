"""``freeze(model)``: a copy of a trained NNX model whose quantized layers run on packed kernels."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from bnn_jax.export.frozen import (FrozenConv, FrozenEinsum, FrozenEmbed, FrozenLinear,
                                   PackedBits, Scale, _Frozen, concrete_params, conv_pack_axis,
                                   conv_supported, einsum_unsupported, kernel_matrix,
                                   layer_input_encoding, split_levels)
from bnn_jax.export.lowbit import (INT_PACKED_BITS, LLM_KERNELS, FrozenBitLinear, is_lowbit_layer,
                                   lowbit_layer)
from bnn_jax.kernels import Packed, pack
from bnn_jax.kernels.trits import FORMATS as TRIT_FORMATS
from bnn_jax.kernels.backend import resolve
from bnn_jax.nn.intercept import module_references, set_child


@dataclasses.dataclass
class LayerRecord:
    """What freezing did to one layer, with its storage before and after (bytes)."""

    path: str
    kind: str            # QuantLinear / QuantConv / QuantEinsum / QuantLinearGeneral
    frozen: bool
    weights: int         # number of kernel entries
    bytes_before: int    # float kernel (+ bias) as trained
    bytes_after: int     # packed planes + scale (+ bias), or unchanged if kept
    encoding: str = ""   # binary / ternary weights; "" if kept float
    activations: str = ""  # binary / bool / ternary (integer kernel) or float
    reason: str = ""     # why a layer was kept float
    plane_bytes: int = 0  # the packed weight planes alone (0 if kept float)

    @property
    def bits_per_weight(self) -> float:
        """Bits of the packed weight planes per kernel entry (word padding included)."""
        return 8 * self.plane_bytes / self.weights

    @property
    def overhead_bytes(self) -> int:
        """What the layer stores besides its weight planes: scales and bias (all if float)."""
        return self.bytes_after - self.plane_bytes


def _nbytes(x) -> int:
    return int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize


def _reject(rec: dict, reason: str):
    return None, dict(rec, reason=reason)


def _matrix(layer, wq: np.ndarray) -> np.ndarray:
    """One layer's quantized kernel in the form whose last axis holds the scales' channels."""
    from bnn_jax.nn import QuantEinsum, QuantEmbed

    if isinstance(layer, QuantEinsum):
        return np.asarray(kernel_matrix(wq, layer.einsum_str))
    if isinstance(layer, QuantEmbed):
        return wq.T  # one scale per row (token)
    return wq


def _pack_stack(layer, wq: np.ndarray):
    """(Packed with stacked planes, stacked scales, encoding) of a (possibly stacked) quantized
    kernel, or None when a layer's kernel is not levels times a per-channel scale."""
    from bnn_jax.nn import QuantConv, QuantEmbed

    stack = tuple(getattr(layer, "stack_shape", ()))
    splits = [split_levels(_matrix(layer, w))
              for w in wq.reshape((-1, *wq.shape[len(stack):]))]
    if any(sp is None for sp in splits):
        return None
    encoding = "ternary" if any(e == "ternary" for *_, e in splits) else "binary"
    if isinstance(layer, QuantConv):
        axis = conv_pack_axis(layer)
    elif isinstance(layer, QuantEmbed):
        axis = 1  # the feature axis: rows are read whole, attend contracts over it
    else:
        axis = 0
    packs = [pack(jnp.asarray(lv.T if isinstance(layer, QuantEmbed) else lv), axis=axis,
                  encoding=encoding) for lv, _, _ in splits]

    def stacked(planes):
        if planes[0] is None:
            return None
        return jnp.reshape(jnp.stack(planes), (*stack, *planes[0].shape))

    packed = Packed(stacked([p.sign for p in packs]), stacked([p.mask for p in packs]),
                    length=packs[0].length, axis=axis)
    scale = np.stack([sc for _, sc, _ in splits]).reshape((*stack, -1))
    return packed, scale, encoding


SUPPORTED = ("any quantizer whose kernel is ±1 or ternary times a per-output-channel scale "
             f"(e.g. 'ste_sign', 'bitnet_weight'), "
             f"{', '.join(repr(k) for k in LLM_KERNELS[1:] if k != 'int_weight')}, "
             f"'int_weight' at <= {INT_PACKED_BITS} bits")


def _frozen_layer(layer, backend: str, trit_format: str = "base3"):
    """(frozen module or None, LayerRecord fields) for one quantized layer."""
    from bnn_jax.nn import (QuantConv, QuantEinsum, QuantEmbed, QuantLinear,
                            QuantLinearGeneral)
    from bnn_jax.nn.layers import active_quant_params

    kind = type(layer).__name__
    kernel = np.asarray(layer.kernel_variable()[...])
    before = _nbytes(kernel) + (_nbytes(layer.bias[...]) if getattr(layer, "bias", None)
                                is not None else 0)
    rec = dict(kind=kind, weights=int(kernel.size), bytes_before=before, bytes_after=before)
    if isinstance(layer, QuantConv):
        reason = conv_supported(layer)
        if reason:
            return _reject(rec, reason)
    elif isinstance(layer, QuantEinsum):
        reason = einsum_unsupported(layer.einsum_str, len(layer.kernel_shape))
        if reason:
            return _reject(rec, reason)
    elif not isinstance(layer, (QuantLinear, QuantLinearGeneral, QuantEmbed)):
        return _reject(rec, f"{kind} is not packed")
    if layer.kernel_quantizer is None:
        return _reject(rec, "full-precision kernel")
    if getattr(layer, "dtype", None) not in (None, jnp.float32):
        return _reject(rec, f"computes in {np.dtype(layer.dtype).name} (frozen layers are f32)")
    q = layer.input_quantizer
    input_params = ({} if q is None else
                    concrete_params(active_quant_params("input", q), f"layer {kind}"))
    # BitNet b1.58 (int8 activations), PB-LLM and DB-LLM linears have their own frozen forms.
    low = lowbit_layer(layer, backend, input_params, trit_format)
    if isinstance(low, str):
        return _reject(rec, f"kernel quantizer {layer.kernel_quantizer.name!r}: {low}")
    if low is not None:
        new, fields = low
        return new, dict(rec, frozen=True, bytes_after=state_bytes(new),
                         activations="int8" if isinstance(new, FrozenBitLinear) else "float",
                         **fields)
    # What the fake-quant forward multiplies with: learned kernel arrays and the schedule
    # values active now (freeze enters quant_params) included; per layer of a stack.
    got = _pack_stack(layer, np.asarray(layer.quantized_kernel()))
    if got is None:
        return _reject(rec, f"unsupported kernel quantizer {layer.kernel_quantizer.name!r}: its "
                            "kernel is not binary/ternary times a per-output-channel scale; "
                            f"supported: {SUPPORTED}")
    packed, scale, encoding = got
    kernel_params = concrete_params(active_quant_params("kernel", layer.kernel_quantizer),
                                    f"layer {kind}")
    act = layer_input_encoding(layer, input_params)
    cls = {QuantConv: FrozenConv, QuantLinear: FrozenLinear, QuantEmbed: FrozenEmbed}.get(
        next((c for c in (QuantConv, QuantLinear, QuantEmbed) if isinstance(layer, c)), None),
        FrozenEinsum)
    new = cls(layer, packed, scale, act, backend=backend, input_params=input_params,
              kernel_params=kernel_params)
    planes = sum(_nbytes(v[...]) for v in (new.w_sign, new.w_mask) if v is not None)
    after = planes + sum(_nbytes(v[...]) for v in (new.scale, new.bias) if v is not None)
    return new, dict(rec, frozen=True, bytes_after=after, plane_bytes=planes, encoding=encoding,
                     activations=new.act_encoding or "float")


def freeze(model: nnx.Module, *, backend: str = "auto", quant_params: dict | None = None,
           trit_format: str = "base3",
           strict: bool = False) -> tuple[nnx.Module, list[LayerRecord]]:
    """(frozen copy of ``model``, one record per quantized layer); ``model`` is not changed.

    Each QuantLinear/QuantConv/QuantEinsum/QuantLinearGeneral/QuantEmbed (stacked ones too)
    whose quantized kernel is ±1 or ternary times a per-output-channel (per-row for tables)
    scale becomes a frozen layer on packed weights;
    everything else (float layers, BatchNorm, unsupported quantized layers) is copied unchanged
    and its record says why. ``quant_params`` (``dict(input=..., kernel=...)``, concrete
    numbers) are the schedule values to freeze at, as :func:`bnn_jax.nn.quant_params` gives them
    to the fake-quant model; by default the values active around the call. The copy is put in
    eval mode. ``backend`` selects the kernels (see bnn_jax.kernels.backend).

    A QuantLinear with BitNet's ``bitnet_act`` input (<= 8 bits) and a ternary/±1 kernel becomes
    a W1.58A8 layer on int8 codes with the levels packed in ``trit_format`` ('base3': 1.6 bits
    per weight, '2bit'); ``pbllm_weight`` and ``dbllm_fdb`` kernels get their own frozen forms
    (:mod:`bnn_jax.export.lowbit`), and so do the kernels :mod:`bnn_jax.compress` leaves:
    ``pbllm_ptq_weight`` (GPTQ-PB) and ``int_weight`` at <= 2 bits (RTN/GPTQ).
    ``strict=True`` raises instead of keeping a quantized layer float.
    """
    from bnn_jax.nn import QUANT_LAYERS
    from bnn_jax.nn import quant_params as quant_params_ctx

    resolve(backend)  # an unknown backend name raises here, before anything is copied
    if not isinstance(model, nnx.Module):
        raise ValueError(f"freeze expects an NNX Module, got {type(model).__name__}")
    if isinstance(model, QUANT_LAYERS):
        raise ValueError("freeze() swaps layers inside a model; wrap a bare layer in a Module")
    if trit_format not in TRIT_FORMATS:
        raise ValueError(f"unknown trit_format {trit_format!r}; valid choices: "
                         f"{list(TRIT_FORMATS)}")
    bad = sorted(set(quant_params or {}) - {"input", "kernel"})
    if bad:
        raise ValueError(f"quant_params has roles {bad}; valid roles: ['input', 'kernel']")
    frozen = nnx.clone(model)
    records = []
    with quant_params_ctx(**(quant_params or {})):
        for group in quant_layer_groups(frozen):
            layer = group[0][3]
            new, fields = _frozen_layer(layer, backend, trit_format)
            records.append(LayerRecord(path=group[0][0], **{"frozen": False, **fields}))
            if strict and new is None and layer.kernel_quantizer is not None:
                raise ValueError(f"freeze(strict=True): layer {group[0][0]} cannot be frozen: "
                                 f"{fields['reason']}")
            if new is not None:
                for _, parent, key, _ in group:
                    set_child(parent, key, new)
    frozen.eval()
    return frozen, records


def quant_layer_groups(model: nnx.Module) -> list[list[tuple[str, Any, Any, Any]]]:
    """The quantized layers of ``model``, one group per layer object: (path, parent, key, layer)
    for every reference to it, so a layer shared by several parents is handled once."""
    from bnn_jax.nn import QUANT_LAYERS

    groups: dict[int, list] = {}
    for path, parent, key, child in module_references(model):
        if isinstance(child, QUANT_LAYERS):
            groups.setdefault(id(child), []).append(("/".join(map(str, path)), parent, key, child))
    return list(groups.values())


def is_frozen_layer(x) -> bool:
    """True for the layers :func:`freeze` produces."""
    return isinstance(x, _Frozen) or is_lowbit_layer(x)


def report(records: list[LayerRecord], before_bytes: int | None = None,
           after_bytes: int | None = None) -> str:
    """A plain-text table of the quantized layers and the model size before/after freezing.

    ``bits/w`` counts the packed weight planes alone (1 for ±1, 2 for ternary, more where an
    axis pads to a 32-bit word); ``overhead`` is the rest of the layer: float32 scales and bias.
    With the model sizes, the last lines split the frozen model into weight planes and
    everything else (those scales and biases, float layers, BatchNorm, layers kept float).
    """
    lines = [f"{'layer':<32} {'kind':<12} {'weights':>9} {'before':>11} {'after':>11} "
             f"{'bits/w':>7} {'overhead':>9}  encoding"]
    for r in records:
        enc = (f"W:{r.encoding} A:{r.activations}" if r.frozen else f"kept float ({r.reason})")
        bits = f"{r.bits_per_weight:>7.3f}" if r.frozen else f"{'-':>7}"
        lines.append(f"{r.path:<32} {r.kind:<12} {r.weights:>9} {r.bytes_before:>11} "
                     f"{r.bytes_after:>11} {bits} {r.overhead_bytes:>9}  {enc}")
    frozen = [r for r in records if r.frozen]
    planes = sum(r.plane_bytes for r in frozen)
    n = sum(r.weights for r in frozen)
    lines.append("(bytes; bits/w: packed weight planes per weight; overhead: float32 scales "
                 "and bias)")
    if frozen:
        lines.append(f"frozen layers: {n} weights in {planes} bytes of planes "
                     f"({8 * planes / n:.3f} bits/weight) + {sum(r.overhead_bytes for r in frozen)}"
                     " bytes of scales and biases")
    if before_bytes is not None and after_bytes is not None:
        lines.append(f"model: {before_bytes} bytes before, {after_bytes} bytes after "
                     f"({before_bytes / max(after_bytes, 1):.1f}x smaller) = {planes} bytes of "
                     f"weight planes + {after_bytes - planes} bytes of overhead (scales, biases, "
                     "float layers and state)")
    return "\n".join(lines)


def state_bytes(model: nnx.Module) -> int:
    """Bytes of every array in the model's state (what :func:`bnn_jax.export.save` writes)."""
    return sum(_nbytes(v[...]) for _, v in nnx.iter_graph(model) if isinstance(v, nnx.Variable))


__all__ = ["LayerRecord", "PackedBits", "Scale", "freeze", "is_frozen_layer",
           "quant_layer_groups", "report", "state_bytes"]

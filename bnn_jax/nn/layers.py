"""Quantized NNX layers (QuantLinear, QuantConv, QuantEinsum) over full-precision latent weights.

Each layer applies an *input quantizer* to its activations and a *kernel quantizer* to its latent
kernel, both taken from the :mod:`bnn_jax.quant` registry (a name, a ``dict(name=..., ...)`` spec,
a built :class:`~bnn_jax.quant.Quantizer`, or ``None`` for full precision), then computes the
ordinary float product. Layouts and parameter names follow ``nnx.Linear``, ``nnx.Conv`` and
``nnx.Einsum`` (``kernel``, ``bias``; NHWC activations, HWIO kernels) so
:func:`bnn_jax.nn.quantize` can keep the very same parameter objects.

Learned quantizer arrays (an LSQ step, an RSign shift, a BiViT scale) live in the layer as
``nnx.Param`` named ``input_<name>`` / ``kernel_<name>`` and are initialised by the quantizer's
first-call rule ``q.init(x)``: the kernel ones at construction (the kernel is known), the input
ones on the first call (they need data, like Keras' ``build``). :func:`initialize` runs that
first call on a sample batch; do it before building the optimizer so the optimizer sees them.

A kernel constraint (e.g. ``"weight_clip"``) is only *recorded* on the layer; the training step
applies it after the optimizer update with :func:`apply_constraints`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import opt_einsum
from flax import nnx
from flax.nnx.nn import dtypes, initializers
from jax import lax

from bnn_jax.quant.registry import Quantizer, check, get

default_kernel_init = initializers.lecun_normal()
default_bias_init = initializers.zeros_init()

_PAD_MODES = ("SAME", "VALID", "CIRCULAR", "REFLECT", "CAUSAL")


_SCHEDULE: contextvars.ContextVar[dict[str, dict[str, Any]]] = contextvars.ContextVar(
    "bnn_jax_quant_params", default={})


@contextlib.contextmanager
def quant_params(*, input: Mapping[str, Any] | None = None,
                 kernel: Mapping[str, Any] | None = None):
    """Per-call values of quantizers' static parameters (schedules such as ReSTE's ``o``) for
    every quantized layer called inside the block, without threading them through the model.

    Enter it *inside* the jitted step so the values are traced, e.g.
    ``with quant_params(kernel=dict(o=o_of_step)): logits = model(x)``. A value goes only to
    quantizers that have a parameter of that name; arguments given to a layer call win.
    """
    outer = _SCHEDULE.get()
    token = _SCHEDULE.set({"input": {**outer.get("input", {}), **(input or {})},
                           "kernel": {**outer.get("kernel", {}), **(kernel or {})}})
    try:
        yield
    finally:
        _SCHEDULE.reset(token)


#: When set (by bnn_jax.analysis.health), every quantizer call reports its operand to it.
_PROBE: contextvars.ContextVar[Any] = contextvars.ContextVar("bnn_jax_quant_probe", default=None)


@contextlib.contextmanager
def observe_quantizers(probe):
    """Call ``probe(key, role, quantizer, fn, x)`` for each quantizer application inside the
    block (``key``: the layer, or a Linen path; ``role``: 'input' or 'weight'; ``fn``: the
    quantizer as a function of its operand ``x``)."""
    token = _PROBE.set(probe)
    try:
        yield
    finally:
        _PROBE.reset(token)


def observed(key: Any, role: str, q: Quantizer, fn, x: jax.Array) -> jax.Array:
    """``fn(x)``, reported to the active probe (see :func:`observe_quantizers`)."""
    probe = _PROBE.get()
    if probe is not None:
        probe(key, role, q, fn, x)
    return fn(x)


def _scheduled(role: str, q: Quantizer, explicit: Mapping[str, Any]) -> dict[str, Any]:
    ctx = _SCHEDULE.get().get(role, {})
    return {**{k: v for k, v in ctx.items() if k in q.params}, **explicit}


def active_quant_params(role: str, q: Quantizer) -> dict[str, Any]:
    """The :func:`quant_params` values active now (``role`` 'input' or 'kernel') that ``q``
    takes as static parameters; a frozen model reads them to bake or check schedule values."""
    check(role in ("input", "kernel"), f"role must be one of ['input', 'kernel'], got {role!r}")
    return _scheduled(role, q, {})


def as_quantizer(spec: Any, *, role: str = "quantizer") -> Quantizer | None:
    """A :class:`Quantizer` from a name, a spec dict / ConfigDict, a Quantizer, or None."""
    if spec is None:
        return None
    try:
        return get(spec)
    except ValueError as e:
        raise ValueError(f"invalid {role}: {e}") from None


def _as_constraint(spec: Any) -> Quantizer | None:
    c = as_quantizer(spec, role="kernel_constraint")
    if c is not None and c.kind != "constraint":
        raise ValueError(f"kernel_constraint must be a constraint (e.g. 'weight_clip'), got "
                         f"{c.name!r} of kind {c.kind!r}")
    return c


def _param(layer: str, what: str, given: nnx.Param | None, shape: Sequence[int], init,
           param_dtype: Any, rngs: nnx.Rngs | None, *,
           init_shape: Sequence[int] | None = None) -> nnx.Param:
    """``given`` (an existing parameter, e.g. of the layer being quantized) if it has ``shape``,
    else a new one from ``init`` on ``init_shape`` (default ``shape``) reshaped to ``shape``."""
    shape = tuple(shape)
    if given is None:
        check(rngs is not None, f"{layer} needs rngs (or an existing {what.split()[0]}=)")
        value = init(rngs.params(), tuple(init_shape or shape), param_dtype)
        given = nnx.Param(jnp.reshape(value, shape))
    got = tuple(given.shape)
    # Leading axes are a stack of layers (nnx.vmap / nnx.scan over layers): the layer's call
    # runs inside the scan, where each step sees one slice of the stated shape.
    check(len(got) >= len(shape) and got[len(got) - len(shape):] == shape,
          f"{layer}: {what} has shape {got}, expected {shape} (or stacked layers' "
          f"(..., {', '.join(map(str, shape))}))")
    return given


class _QuantizedOperands(nnx.Module):
    """Shared machinery of the quantized layers: quantizers, their learned arrays, constraint."""

    #: Name of the weight variable (``kernel``; ``embedding`` for QuantEmbed, as nnx.Embed).
    KERNEL = "kernel"

    def kernel_variable(self) -> nnx.Param:
        """The latent weight variable (``kernel`` or ``embedding``)."""
        return getattr(self, self.KERNEL)

    def _setup_quantizers(self, input_quantizer, kernel_quantizer, kernel_constraint):
        self.input_quantizer = as_quantizer(input_quantizer, role="input_quantizer")
        self.kernel_quantizer = as_quantizer(kernel_quantizer, role="kernel_quantizer")
        self.kernel_constraint = _as_constraint(kernel_constraint)
        kvar = self.kernel_variable()
        self.stack_shape = tuple(kvar.shape[:len(kvar.shape) - len(self.kernel_shape)])
        bias = getattr(self, "bias", None)
        if bias is not None:
            check(tuple(bias.shape[:len(self.stack_shape)]) == self.stack_shape
                  and len(bias.shape) - len(self.stack_shape) == len(self.bias_layer_shape()),
                  f"{type(self).__name__}: bias of shape {tuple(bias.shape)} does not fit "
                  f"the kernel's stack axes {self.stack_shape}")
        qi = self.input_quantizer
        if self.stack_shape and qi is not None and qi.learned:
            raise ValueError(
                f"{type(self).__name__}: input quantizer {qi.name!r} creates learned arrays "
                f"{list(qi.learned)} on its first call, which a stacked (scanned/vmapped) "
                f"layer cannot do inside its scan; use an input quantizer without learned "
                f"arrays for the stacked layers")
        q = self.kernel_quantizer
        if q is not None and q.learned:
            # The kernel exists already, so its learned arrays get their first-call values now
            # (one set per stacked layer).
            k = kvar.get_value()
            if isinstance(k, jax.ShapeDtypeStruct):
                # An abstract model (nnx.eval_shape): abstract learned arrays, same structure.
                self._create_learned("kernel", q, init=jax.eval_shape(self._kernel_init, k))
            else:
                self._create_learned("kernel", q, init=self._kernel_init(k))

    def _kernel_init(self, kernel: jax.Array) -> dict[str, jax.Array]:
        """The kernel quantizer's first-call values of its learned arrays for ``kernel``."""
        def init_fn(k):
            return self.kernel_quantizer.init(self.latent_kernel(k))

        for _ in self.stack_shape:
            init_fn = jax.vmap(init_fn)
        return init_fn(kernel)

    def reinit_kernel_learned(self) -> None:
        """Recompute the kernel quantizer's learned arrays from the current kernel (e.g. after
        loading float weights that had none)."""
        q = self.kernel_quantizer
        if q is not None and q.learned:
            init = self._kernel_init(self.kernel_variable()[...])
            for name in q.learned:
                getattr(self, f"kernel_{name}").set_value(jax.lax.stop_gradient(init[name]))

    def bias_layer_shape(self) -> tuple[int, ...]:
        """The bias shape of one (unstacked) layer."""
        return (self.kernel_shape[-1],)

    def check_unstacked(self) -> None:
        """Refuse a call on the whole stack (outside the scan that slices it)."""
        k = self.kernel_variable()
        if len(k.shape) != len(self.kernel_shape):
            raise ValueError(
                f"{type(self).__name__} holds stacked kernels of shape {tuple(k.shape)} (one "
                f"{self.kernel_shape} per layer): call it inside the nnx.scan/nnx.vmap over "
                f"its leading axes, as the original layer")

    def _create_learned(self, role: str, q: Quantizer, x: jax.Array | None = None, *,
                        init: Mapping[str, Any] | None = None) -> None:
        init = q.init(x) if init is None else init
        missing = sorted(set(q.learned) - set(init))
        check(not missing, f"{q.name}.init returned {sorted(init)}, missing learned {missing}")
        for name in q.learned:
            value = init[name]
            if not isinstance(value, jax.ShapeDtypeStruct):
                # A starting value, not a function of x: no gradient flows back through it.
                value = jax.lax.stop_gradient(jnp.asarray(value))
            setattr(self, f"{role}_{name}", nnx.Param(value))

    def learned_pending(self) -> bool:
        """True until the first call has created the input quantizer's learned arrays."""
        q = self.input_quantizer
        return bool(q is not None and q.learned and not hasattr(self, f"input_{q.learned[0]}"))

    def _learned(self, role: str, q: Quantizer) -> dict[str, jax.Array]:
        return {n: getattr(self, f"{role}_{n}")[...] for n in q.learned}

    def quantize_input(self, x: jax.Array, **overrides) -> jax.Array:
        """The input quantizer applied to ``x`` (identity if None); creates learned arrays."""
        q = self.input_quantizer
        if q is None:
            return x
        if q.learned and not hasattr(self, f"input_{q.learned[0]}"):
            self._create_learned("input", q, x)
        learned, scheduled = self._learned("input", q), _scheduled("input", q, overrides)
        return observed(self, "input", q, lambda v: q(v, **learned, **scheduled), x)

    def latent_kernel(self, kernel: jax.Array | None = None) -> jax.Array:
        """The kernel (or ``kernel``) as the kernel quantizer sees it; subclasses may
        reparameterize it."""
        return self.kernel_variable()[...] if kernel is None else kernel

    def quantized_kernel(self, **overrides) -> jax.Array:
        """The kernel as the forward pass uses it (quantized, masked where a mask is set);
        for stacked layers, every layer of the stack (the quantizer runs per layer)."""
        q = self.kernel_quantizer
        learned = self._learned("kernel", q) if q is not None else {}
        scheduled = _scheduled("kernel", q, overrides) if q is not None else {}
        mask = getattr(self, "mask", None)

        def one(k, learned):
            w = self.latent_kernel(k)
            if q is not None:
                w = observed(self, "weight", q, lambda v: q(v, **learned, **scheduled), w)
            if mask is not None:
                # Mask after quantizing: a masked weight must contribute 0, not sign(0) = +1.
                w = w * jnp.reshape(mask, w.shape)
            return w

        k = self.kernel_variable()[...]
        for _ in range(k.ndim - len(self.kernel_shape)):
            one = jax.vmap(one)
        return one(k, learned)


class QuantLinear(_QuantizedOperands):
    """``y = q_in(x) @ q_w(W) + b``: a dense layer with quantized input and kernel (in, out)."""

    def __init__(self, in_features: int, out_features: int, *,
                 input_quantizer: Any = None, kernel_quantizer: Any = None,
                 kernel_constraint: Any = None, use_bias: bool = True,
                 dtype: Any = None, param_dtype: Any = jnp.float32, precision: Any = None,
                 kernel_init=default_kernel_init, bias_init=default_bias_init,
                 promote_dtype=dtypes.promote_dtype, dot_general=lax.dot_general,
                 preferred_element_type: Any = None,
                 kernel: nnx.Param | None = None, bias: nnx.Param | None = None,
                 rngs: nnx.Rngs | None = None):
        self.kernel_shape = (in_features, out_features)
        self.kernel = _param("QuantLinear", "kernel", kernel, (in_features, out_features),
                             kernel_init, param_dtype, rngs)
        self.bias = (_param("QuantLinear", "bias", bias, (out_features,), bias_init, param_dtype,
                            rngs) if use_bias else nnx.data(None))
        self.in_features, self.out_features, self.use_bias = in_features, out_features, use_bias
        self.dtype, self.param_dtype, self.precision = dtype, param_dtype, precision
        self.promote_dtype, self.dot_general = promote_dtype, dot_general
        self.preferred_element_type = preferred_element_type
        self._setup_quantizers(input_quantizer, kernel_quantizer, kernel_constraint)

    def __call__(self, x: jax.Array, *, input_params: Mapping | None = None,
                 kernel_params: Mapping | None = None, out_sharding=None) -> jax.Array:
        """Apply the layer; ``*_params`` override static quantizer parameters (schedules)."""
        self.check_unstacked()
        # Checked before the first call creates learned input arrays from x's shape.
        check(x.ndim >= 1 and x.shape[-1] == self.in_features,
              f"QuantLinear: input of shape {tuple(x.shape)}, the last axis must be "
              f"in_features={self.in_features}")
        xq = self.quantize_input(x, **(input_params or {}))
        w = self.quantized_kernel(**(kernel_params or {}))
        b = self.bias[...] if self.bias is not None else None
        xq, w, b = self.promote_dtype((xq, w, b), dtype=self.dtype)
        y = self.dot_general(xq, w, (((xq.ndim - 1,), (0,)), ((), ())), precision=self.precision,
                             **_pet(self.preferred_element_type, out_sharding))
        if b is not None:
            y = y + b
        return y


def _as_tuple(v: int | Sequence[int]) -> tuple[int, ...]:
    return (v,) if isinstance(v, int) else tuple(v)


class QuantLinearGeneral(_QuantizedOperands):
    """``nnx.LinearGeneral`` (contraction over several input axes into several output axes,
    e.g. the per-head projections of ``nnx.MultiHeadAttention``) with quantized operands.

    The kernel quantizer sees the kernel as a matrix ``(prod(in_features), prod(out_features))``,
    so "per output channel" means per output unit, as for :class:`QuantLinear`. Batch axes
    (``batch_axis``) are not supported.
    """

    def __init__(self, in_features: int | Sequence[int], out_features: int | Sequence[int], *,
                 axis: int | Sequence[int] = -1, input_quantizer: Any = None,
                 kernel_quantizer: Any = None, kernel_constraint: Any = None,
                 use_bias: bool = True, dtype: Any = None, param_dtype: Any = jnp.float32,
                 precision: Any = None, kernel_init=default_kernel_init,
                 bias_init=default_bias_init, promote_dtype=dtypes.promote_dtype,
                 dot_general=lax.dot_general, preferred_element_type: Any = None,
                 kernel: nnx.Param | None = None, bias: nnx.Param | None = None,
                 rngs: nnx.Rngs | None = None):
        self.in_features, self.out_features = _as_tuple(in_features), _as_tuple(out_features)
        self.axis = _as_tuple(axis)
        check(len(self.axis) == len(self.in_features),
              f"axis {self.axis} and in_features {self.in_features} must have the same length")
        shape = (*self.in_features, *self.out_features)
        n_in, n_out = math.prod(self.in_features), math.prod(self.out_features)
        self.kernel_shape = shape
        # Initialized as the (fan-in, fan-out) matrix, as nnx.LinearGeneral does.
        self.kernel = _param("QuantLinearGeneral", "kernel", kernel, shape, kernel_init,
                             param_dtype, rngs, init_shape=(n_in, n_out))
        self.bias = (_param("QuantLinearGeneral", "bias", bias, self.out_features, bias_init,
                            param_dtype, rngs, init_shape=(n_out,))
                     if use_bias else nnx.data(None))
        self.use_bias = use_bias
        self.dtype, self.param_dtype, self.precision = dtype, param_dtype, precision
        self.promote_dtype, self.dot_general = promote_dtype, dot_general
        self.preferred_element_type = preferred_element_type
        self._setup_quantizers(input_quantizer, kernel_quantizer, kernel_constraint)

    def bias_layer_shape(self) -> tuple[int, ...]:
        """The bias shape of one (unstacked) layer: the output feature axes."""
        return self.out_features

    def latent_kernel(self, kernel: jax.Array | None = None) -> jax.Array:
        """The kernel as the ``(fan-in, fan-out)`` matrix the kernel quantizer sees."""
        k = self.kernel[...] if kernel is None else kernel
        return jnp.reshape(k, (math.prod(self.in_features), math.prod(self.out_features)))

    def __call__(self, x: jax.Array, *, input_params: Mapping | None = None,
                 kernel_params: Mapping | None = None, out_sharding=None) -> jax.Array:
        """Contract ``axis`` of the quantized input with the quantized kernel."""
        self.check_unstacked()
        check(all(-x.ndim <= a < x.ndim for a in self.axis)
              and len({a % x.ndim for a in self.axis}) == len(self.axis),
              f"QuantLinearGeneral: axis {self.axis} does not fit an input of rank {x.ndim}")
        axis = tuple(sorted(a % x.ndim for a in self.axis))
        sizes = tuple(x.shape[a] for a in axis)
        check(sizes == self.in_features, f"QuantLinearGeneral: input of shape {tuple(x.shape)} "
              f"has sizes {sizes} on axes {axis}, expected in_features={self.in_features}")
        xq = self.quantize_input(x, **(input_params or {}))
        w = jnp.reshape(self.quantized_kernel(**(kernel_params or {})),
                        (*self.in_features, *self.out_features))
        b = self.bias[...] if self.bias is not None else None
        xq, w, b = self.promote_dtype((xq, w, b), dtype=self.dtype)
        contract = tuple(range(len(axis)))
        y = self.dot_general(xq, w, ((axis, contract), ((), ())), precision=self.precision,
                             **_pet(self.preferred_element_type, out_sharding))
        if b is not None:
            y = y + b
        return y


def _tuple(v: int | Sequence[int] | None, n: int, name: str) -> tuple[int, ...]:
    if v is None:
        v = 1
    if isinstance(v, int):
        return (v,) * n
    v = tuple(v)
    check(len(v) == n and all(isinstance(i, int) for i in v),
          f"{name} must be an int or {n} ints, got {v!r}")
    return v


def canonical_padding(padding: Any, rank: int) -> str | list[tuple[int, int]]:
    """A padding mode string or ``rank`` (low, high) pairs (nnx.Conv's accepted forms)."""
    if isinstance(padding, str):
        p = padding.upper()
        check(p in _PAD_MODES, f"padding must be one of {list(_PAD_MODES)}, an int or "
                               f"(low, high) pairs, got {padding!r}")
        return p
    if isinstance(padding, int):
        return [(padding, padding)] * rank
    if isinstance(padding, Sequence) and len(padding) == rank:
        pairs = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
        if all(len(p) == 2 for p in pairs):
            return [(int(lo), int(hi)) for lo, hi in pairs]
    raise ValueError(f"padding must be one of {list(_PAD_MODES)}, an int or {rank} "
                     f"(low, high) pairs, got {padding!r}")


class QuantConv(_QuantizedOperands):
    """N-D convolution (NHWC, HWIO kernel) with quantized input and kernel.

    ``pad_values`` is larq's constant padding: the *quantized* input is padded with this value
    (0 = ordinary zero padding, where a padded position contributes 0, not sign(0)). Groups
    (``feature_group_count``; depthwise = ``in_features``), strides, kernel and input dilation
    and every ``nnx.Conv`` padding mode are supported.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int | Sequence[int],
                 strides: int | Sequence[int] = 1, *, padding: Any = "SAME",
                 pad_values: float = 0.0, input_dilation: Any = 1, kernel_dilation: Any = 1,
                 feature_group_count: int = 1, use_bias: bool = True, mask: Any = None,
                 input_quantizer: Any = None, kernel_quantizer: Any = None,
                 kernel_constraint: Any = None, dtype: Any = None,
                 param_dtype: Any = jnp.float32, precision: Any = None,
                 kernel_init=default_kernel_init, bias_init=default_bias_init,
                 promote_dtype=dtypes.promote_dtype,
                 conv_general_dilated=lax.conv_general_dilated,
                 preferred_element_type: Any = None,
                 kernel: nnx.Param | None = None, bias: nnx.Param | None = None,
                 rngs: nnx.Rngs | None = None):
        kernel_size = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
        check(isinstance(feature_group_count, int) and feature_group_count >= 1
              and in_features % feature_group_count == 0
              and out_features % feature_group_count == 0,
              f"feature_group_count must divide in_features={in_features} and "
              f"out_features={out_features}, got {feature_group_count!r}")
        check(isinstance(pad_values, (int, float)) and not isinstance(pad_values, bool),
              f"pad_values must be a number, got {pad_values!r}")
        rank = len(kernel_size)
        self.kernel_shape = kernel_size + (in_features // feature_group_count, out_features)
        self.kernel = _param("QuantConv", "kernel (HWIO)", kernel, self.kernel_shape,
                             kernel_init, param_dtype, rngs)
        self.bias = (_param("QuantConv", "bias", bias, (out_features,), bias_init, param_dtype,
                            rngs) if use_bias else nnx.data(None))
        self.in_features, self.out_features, self.kernel_size = (in_features, out_features,
                                                                 kernel_size)
        self.strides = _tuple(strides, rank, "strides")
        self.input_dilation = _tuple(input_dilation, rank, "input_dilation")
        self.kernel_dilation = _tuple(kernel_dilation, rank, "kernel_dilation")
        self.padding = canonical_padding(padding, rank)
        check(self.padding != "CAUSAL" or rank == 1, "CAUSAL padding needs a 1-D convolution")
        check(float(pad_values) == 0.0 or self.input_dilation == (1,) * rank,
              "pad_values other than 0 cannot be combined with input_dilation")
        # CIRCULAR/REFLECT fill the border from the input itself; a constant would be ignored.
        check(float(pad_values) == 0.0 or self.padding not in ("CIRCULAR", "REFLECT"),
              f"pad_values other than 0 cannot be combined with {self.padding} padding")
        self.pad_values = float(pad_values)
        self.feature_group_count, self.use_bias = feature_group_count, use_bias
        self.mask = mask
        self.dtype, self.param_dtype, self.precision = dtype, param_dtype, precision
        self.promote_dtype, self.conv_general_dilated = promote_dtype, conv_general_dilated
        self.preferred_element_type = preferred_element_type
        self._setup_quantizers(input_quantizer, kernel_quantizer, kernel_constraint)

    def _pads(self, spatial: tuple[int, ...]) -> list[tuple[int, int]] | str:
        """Explicit (low, high) pads of the spatial axes, or a lax padding string."""
        dilated = [(k - 1) * d + 1 for k, d in zip(self.kernel_size, self.kernel_dilation)]
        p = self.padding
        if p in ("CIRCULAR", "REFLECT"):
            return [((k - 1) // 2, k // 2) for k in dilated]
        if p == "CAUSAL":
            return [(dilated[0] - 1, 0)]
        if p in ("SAME", "VALID"):
            if self.input_dilation != (1,) * len(spatial):
                return p  # lax computes SAME on the dilated input; only zero padding allowed
            return lax.padtype_to_pads(spatial, dilated, self.strides, p)
        return list(p)

    def __call__(self, x: jax.Array, *, input_params: Mapping | None = None,
                 kernel_params: Mapping | None = None, out_sharding=None) -> jax.Array:
        """Apply the layer; ``*_params`` override static quantizer parameters (schedules)."""
        self.check_unstacked()
        rank = len(self.kernel_size)
        check(x.ndim >= rank + 1 and x.shape[-1] == self.in_features,
              f"QuantConv: input of shape {tuple(x.shape)}, expected ([batch...], "
              f"{rank} spatial axes, in_features={self.in_features}) (channels last)")
        n_batch = x.ndim - (rank + 1)
        batch_shape = x.shape[:n_batch]
        # Any number of batch axes (also none), as nnx.Conv: flatten them into one.
        x = jnp.reshape(x, (-1,) + x.shape[n_batch:])
        xq = self.quantize_input(x, **(input_params or {}))
        w = self.quantized_kernel(**(kernel_params or {}))
        b = self.bias[...] if self.bias is not None else None
        xq, w, b = self.promote_dtype((xq, w, b), dtype=self.dtype)
        pads = self._pads(x.shape[1:-1])
        if self.padding in ("CIRCULAR", "REFLECT"):
            mode = {"CIRCULAR": "wrap", "REFLECT": "reflect"}[self.padding]
            xq, pads = jnp.pad(xq, [(0, 0), *pads, (0, 0)], mode=mode), "VALID"
        elif self.pad_values != 0.0 or self.padding == "CAUSAL":
            # Pad AFTER quantizing (larq): padded positions hold pad_values, not q(pad).
            xq = jnp.pad(xq, [(0, 0), *pads, (0, 0)], constant_values=self.pad_values)
            pads = "VALID"
        spatial = "HWDXYZ"[:rank]
        dn = lax.conv_dimension_numbers(xq.shape, w.shape, (f"N{spatial}C", f"{spatial}IO",
                                                            f"N{spatial}C"))
        y = self.conv_general_dilated(xq, w, self.strides, pads,
                                      lhs_dilation=self.input_dilation,
                                      rhs_dilation=self.kernel_dilation, dimension_numbers=dn,
                                      feature_group_count=self.feature_group_count,
                                      precision=self.precision,
                                      **_pet(self.preferred_element_type, out_sharding))
        if b is not None:
            y = y + b
        return jnp.reshape(y, batch_shape + y.shape[1:])


class QuantEinsum(_QuantizedOperands):
    """``einsum(einsum_str, q_in(x), q_w(W)) + b`` with the layout of ``nnx.Einsum``."""

    def __init__(self, einsum_str: str | None, kernel_shape: Sequence[int],
                 bias_shape: Sequence[int] | None = None, *,
                 input_quantizer: Any = None, kernel_quantizer: Any = None,
                 kernel_constraint: Any = None, dtype: Any = None,
                 param_dtype: Any = jnp.float32, precision: Any = None,
                 kernel_init=default_kernel_init, bias_init=default_bias_init,
                 promote_dtype=dtypes.promote_dtype, einsum_op=jnp.einsum,
                 preferred_element_type: Any = None,
                 kernel: nnx.Param | None = None, bias: nnx.Param | None = None,
                 rngs: nnx.Rngs | None = None):
        if einsum_str is not None:
            einsum_str = _check_einsum(einsum_str)
        self.kernel_shape = tuple(kernel_shape)
        self.kernel = _param("QuantEinsum", "kernel", kernel, self.kernel_shape, kernel_init,
                             param_dtype, rngs)
        self.bias_shape = None if bias_shape is None else tuple(bias_shape)
        self.bias = (_param("QuantEinsum", "bias", bias, self.bias_shape, bias_init, param_dtype,
                            rngs) if self.bias_shape is not None else nnx.data(None))
        self.einsum_str = einsum_str
        self.dtype, self.param_dtype, self.precision = dtype, param_dtype, precision
        self.promote_dtype, self.einsum_op = promote_dtype, einsum_op
        self.preferred_element_type = preferred_element_type
        self._setup_quantizers(input_quantizer, kernel_quantizer, kernel_constraint)

    def bias_layer_shape(self) -> tuple[int, ...]:
        """The bias shape of one (unstacked) layer."""
        return self.bias_shape or ()

    def __call__(self, x: jax.Array, einsum_str: str | None = None, *,
                 input_params: Mapping | None = None,
                 kernel_params: Mapping | None = None, out_sharding=None) -> jax.Array:
        """Apply the layer (``einsum_str`` here or at construction, as nnx.Einsum)."""
        self.check_unstacked()
        check((einsum_str is None) != (self.einsum_str is None),
              "give einsum_str either at construction or at call time (exactly one)")
        spec = _check_einsum(einsum_str) if einsum_str is not None else self.einsum_str
        if self.learned_pending():
            # The first call creates learned input arrays from x's shape: check x fits first.
            try:
                jax.eval_shape(functools.partial(jnp.einsum, spec),
                               jax.ShapeDtypeStruct(x.shape, x.dtype),
                               jax.ShapeDtypeStruct(self.kernel_shape, jnp.float32))
            except (TypeError, ValueError) as e:
                raise ValueError(f"QuantEinsum {spec!r}: input of shape {tuple(x.shape)} does "
                                 f"not fit the kernel {self.kernel_shape}: {e}") from None
        xq = self.quantize_input(x, **(input_params or {}))
        w = self.quantized_kernel(**(kernel_params or {}))
        b = self.bias[...] if self.bias is not None else None
        xq, w, b = self.promote_dtype((xq, w, b), dtype=self.dtype)
        y = self.einsum_op(spec, xq, w, precision=self.precision,
                           **_pet(self.preferred_element_type, out_sharding))
        if b is not None:
            # Bias axes = output axes that come from the kernel (as nnx.Einsum broadcasts it).
            operands, out, _ = opt_einsum.parser.parse_einsum_input((spec, xq, w))
            rhs = operands.split(",")[1]
            y = y + jnp.reshape(b, [w.shape[rhs.index(c)] if c in rhs else 1 for c in out])
        return y


def _check_einsum(einsum_str: str) -> str:
    einsum_str = einsum_str.replace(" ", "")
    check("->" in einsum_str and einsum_str.count(",") == 1,
          f"einsum_str must be explicit ('...->...') with two operands, got {einsum_str!r}")
    return einsum_str


def _pet(preferred_element_type, out_sharding=None):
    # Only pass keywords that are set: user-supplied dot/conv functions may not accept them.
    kw = {} if preferred_element_type is None else {
        "preferred_element_type": preferred_element_type}
    return kw if out_sharding is None else {**kw, "out_sharding": out_sharding}


class QuantEmbed(_QuantizedOperands):
    """``nnx.Embed`` with a quantized table (TBT's and BiPFT's binarized word embedding).

    The kernel quantizer sees the table ``(num_embeddings, features)``; for one scale per
    token (row) give it ``channel_axis=0`` (``tbt_weight``) or ``layerwise=False``
    (``bipft_weight``). ``attend(query)`` (a tied output layer) multiplies the quantized
    query (input quantizer) with the same quantized table.
    """

    KERNEL = "embedding"

    def __init__(self, num_embeddings: int, features: int, *, input_quantizer: Any = None,
                 kernel_quantizer: Any = None, kernel_constraint: Any = None,
                 dtype: Any = None, param_dtype: Any = jnp.float32,
                 embedding_init=nnx.nn.linear.default_embed_init,
                 promote_dtype=dtypes.promote_dtype, embedding: nnx.Param | None = None,
                 rngs: nnx.Rngs | None = None):
        self.kernel_shape = (num_embeddings, features)
        self.embedding = _param("QuantEmbed", "embedding", embedding, self.kernel_shape,
                                embedding_init, param_dtype, rngs)
        self.num_embeddings, self.features = num_embeddings, features
        self.dtype, self.param_dtype, self.promote_dtype = dtype, param_dtype, promote_dtype
        self._setup_quantizers(input_quantizer, kernel_quantizer, kernel_constraint)

    def __call__(self, inputs: jax.Array, *, kernel_params: Mapping | None = None,
                 out_sharding=None) -> jax.Array:
        """The quantized table's rows at the integer ``inputs``."""
        self.check_unstacked()
        check(jnp.issubdtype(inputs.dtype, jnp.integer),
              f"QuantEmbed: inputs must be integer token ids, got {inputs.dtype}")
        (table,) = self.promote_dtype((self.quantized_kernel(**(kernel_params or {})),),
                                      dtype=self.dtype, inexact=False)
        if out_sharding is not None:
            take = jax.sharding.auto_axes(lambda t, i: jnp.take(t, i, axis=0),
                                          out_sharding=out_sharding)
            return take(table, inputs)
        return jnp.take(table, inputs, axis=0)

    def attend(self, query: jax.Array, *, input_params: Mapping | None = None,
               kernel_params: Mapping | None = None, out_sharding=None) -> jax.Array:
        """``q_in(query) @ q_w(table).T``: logits over the vocabulary (tied embedding)."""
        self.check_unstacked()
        check(query.shape[-1] == self.features,
              f"QuantEmbed.attend: query of shape {tuple(query.shape)}, the last axis must be "
              f"features={self.features}")
        xq = self.quantize_input(query, **(input_params or {}))
        xq, table = self.promote_dtype((xq, self.quantized_kernel(**(kernel_params or {}))),
                                       dtype=self.dtype)
        kw = {} if out_sharding is None else {"out_sharding": out_sharding}
        return jnp.dot(xq, table.T, **kw)


class QuantConvTranspose(_QuantizedOperands):
    """``nnx.ConvTranspose`` (channels last) with quantized input and kernel (zero padding;
    CIRCULAR padding is not supported)."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int | Sequence[int],
                 strides: Any = None, *, padding: Any = "SAME", kernel_dilation: Any = None,
                 use_bias: bool = True, mask: Any = None, input_quantizer: Any = None,
                 kernel_quantizer: Any = None, kernel_constraint: Any = None,
                 dtype: Any = None, param_dtype: Any = jnp.float32, precision: Any = None,
                 kernel_init=default_kernel_init, bias_init=default_bias_init,
                 transpose_kernel: bool = False, promote_dtype=dtypes.promote_dtype,
                 preferred_element_type: Any = None, kernel: nnx.Param | None = None,
                 bias: nnx.Param | None = None, rngs: nnx.Rngs | None = None):
        kernel_size = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
        rank = len(kernel_size)
        check(not (isinstance(padding, str) and padding.upper() == "CIRCULAR"),
              "QuantConvTranspose: CIRCULAR padding is not supported")
        self.padding = canonical_padding(padding, rank)
        check(self.padding in ("SAME", "VALID") or not isinstance(self.padding, str),
              f"QuantConvTranspose: padding {padding!r}; valid: 'SAME', 'VALID', an int or "
              f"(low, high) pairs")
        io = (out_features, in_features) if transpose_kernel else (in_features, out_features)
        self.kernel_shape = kernel_size + io
        self.kernel = _param("QuantConvTranspose", "kernel", kernel, self.kernel_shape,
                             kernel_init, param_dtype, rngs)
        self.bias = (_param("QuantConvTranspose", "bias", bias, (out_features,), bias_init,
                            param_dtype, rngs) if use_bias else nnx.data(None))
        self.in_features, self.out_features, self.kernel_size = (in_features, out_features,
                                                                 kernel_size)
        self.strides = _tuple(strides, rank, "strides")
        self.kernel_dilation = _tuple(kernel_dilation, rank, "kernel_dilation")
        self.use_bias, self.mask, self.transpose_kernel = use_bias, mask, transpose_kernel
        self.dtype, self.param_dtype, self.precision = dtype, param_dtype, precision
        self.promote_dtype, self.preferred_element_type = promote_dtype, preferred_element_type
        self._setup_quantizers(input_quantizer, kernel_quantizer, kernel_constraint)

    def bias_layer_shape(self) -> tuple[int, ...]:
        """The bias shape of one (unstacked) layer."""
        return (self.out_features,)

    def __call__(self, x: jax.Array, *, input_params: Mapping | None = None,
                 kernel_params: Mapping | None = None, out_sharding=None) -> jax.Array:
        """Apply the layer (``lax.conv_transpose`` on the quantized operands)."""
        self.check_unstacked()
        rank = len(self.kernel_size)
        check(x.ndim >= rank + 1 and x.shape[-1] == self.in_features,
              f"QuantConvTranspose: input of shape {tuple(x.shape)}, expected ([batch...], "
              f"{rank} spatial axes, in_features={self.in_features})")
        batch_shape = x.shape[:x.ndim - (rank + 1)]
        x = jnp.reshape(x, (-1,) + x.shape[x.ndim - (rank + 1):])
        xq = self.quantize_input(x, **(input_params or {}))
        w = self.quantized_kernel(**(kernel_params or {}))
        b = self.bias[...] if self.bias is not None else None
        xq, w, b = self.promote_dtype((xq, w, b), dtype=self.dtype)
        y = lax.conv_transpose(xq, w, self.strides, self.padding,
                               rhs_dilation=self.kernel_dilation,
                               transpose_kernel=self.transpose_kernel, precision=self.precision,
                               preferred_element_type=self.preferred_element_type)
        if b is not None:
            y = y + b
        if out_sharding is not None:
            y = jax.lax.with_sharding_constraint(y, out_sharding)
        return jnp.reshape(y, batch_shape + y.shape[1:])


QUANT_LAYERS = (QuantLinear, QuantConv, QuantEinsum, QuantLinearGeneral, QuantEmbed,
                QuantConvTranspose)


def apply_constraints(model: nnx.Module) -> int:
    """Apply every layer's ``kernel_constraint`` to its latent kernel in place; returns the count.

    Call it after each optimizer update (larq/Keras apply ``kernel_constraint`` there).
    """
    n = 0
    for _, node in nnx.iter_graph(model):
        c = getattr(node, "kernel_constraint", None) if isinstance(node, nnx.Module) else None
        if isinstance(c, Quantizer):
            k = node.kernel_variable() if hasattr(node, "kernel_variable") else node.kernel
            k[...] = c(k[...])
            n += 1
    return n



def kernel_learned_paths(model: nnx.Module) -> dict[str, list[str]]:
    """``{layer path: [paths of its kernel quantizer's learned arrays]}`` (``a/b/kernel_s``)."""
    out = {}
    for path, node in nnx.iter_graph(model):
        q = getattr(node, "kernel_quantizer", None) if isinstance(node, _QuantizedOperands) \
            else None
        if q is not None and q.learned:
            p = "/".join(map(str, path))
            out[p] = [f"{p}/kernel_{n}" if p else f"kernel_{n}" for n in q.learned]
    return out


def input_learned_paths(model: nnx.Module) -> list[str]:
    """Paths of the input/activation quantizers' learned arrays (``a/b/input_alpha``, the
    ``alpha`` of an activation quantizer module), which their first call creates from data."""
    out = []
    for path, node in nnx.iter_graph(model):
        p = "/".join(map(str, path))
        if isinstance(node, _QuantizedOperands) and node.input_quantizer is not None:
            out += [f"{p}/input_{n}" for n in node.input_quantizer.learned]
        elif isinstance(node, nnx.Module) and isinstance(getattr(node, "quantizer", None),
                                                         Quantizer):
            out += [f"{p}/{n}" for n in node.quantizer.learned]
    return out


def reinit_kernel_learned(model: nnx.Module, paths: Sequence[str]) -> list[str]:
    """Recompute, from the current kernels, the kernel-quantizer arrays of every layer owning
    one of ``paths`` (see :func:`kernel_learned_paths`); returns those layers' paths."""
    wanted, done = set(paths), []
    layers = kernel_learned_paths(model)
    for path, node in nnx.iter_graph(model):
        p = "/".join(map(str, path))
        if p in layers and wanted.intersection(layers[p]):
            node.reinit_kernel_learned()
            done.append(p)
    return done


def pending_learned(model: nnx.Module) -> list[str]:
    """Paths of modules whose learned quantizer arrays wait for a first call on data."""
    return ["/".join(map(str, path)) for path, node in nnx.iter_graph(model)
            if isinstance(node, nnx.Module) and hasattr(node, "learned_pending")
            and node.learned_pending()]


def initialize(model: nnx.Module, *args, **kwargs) -> list[str]:
    """Run ``model(*args, **kwargs)`` once so that every learned quantizer array is created
    from data by its first-call rule; returns the paths that were initialized.

    Do this before splitting the model for a training step or building its optimizer: arrays
    created inside a pure function on a merged copy would be lost. The call runs in the
    model's current mode (train mode reproduces a first training step); BatchNorm statistics and
    RNG counters are restored, so the call has no effect besides the initialization.
    """
    pending = pending_learned(model)
    if not pending:
        return []
    # Everything but the parameters (BatchNorm statistics, RNG counters) is put back after.
    rest = nnx.clone(nnx.state(model, nnx.Not(nnx.Param)))
    # The arguments are closed over, so Python flags among them stay static.
    nnx.jit(lambda m: m(*args, **kwargs))(model)
    nnx.update(model, rest)
    left = pending_learned(model)
    check(not left, f"modules {left} were not called by model(...) and stay uninitialized")
    return pending

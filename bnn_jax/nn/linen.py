"""Linen: ``quantize_linen(module, rules)`` for unmodified Linen models, and quantized
``dot_general`` / ``conv_general_dilated`` primitives to plug into single Flax layers.

:func:`quantize_linen` wraps a Linen model so that its ``init``/``apply`` are called as the
original's and produce the same parameter tree (plus the learned quantizer arrays): while the
model runs, ``flax.linen.intercept_methods`` catches every ``Dense``, ``DenseGeneral``,
``Einsum``, ``Conv``, ``ConvTranspose`` and ``Embed`` call whose module path (``"/"``-joined
Linen scope names, e.g. ``"ResBlock_0/Conv_1"``) matches a rule, and quantizes the two operands
the layer hands to its ``promote_dtype`` (the input and the kernel; the table for
``Embed.__call__``) before the layer's own computation. Learned quantizer arrays (LSQ steps,
RSign shifts) become Linen parameters ``input_<name>`` / ``kernel_<name>`` of that layer, made
by the quantizer's first-call rule at ``init``.

For quantizers without learned state, quantization can also be a change of the primitive::

    dense = flax.linen.Dense(64, dot_general=quantized_dot_general(
        kernel_quantizer="ste_sign", input_quantizer="ste_sign"))
    conv = flax.linen.Conv(64, (3, 3), conv_general_dilated=quantized_conv_general_dilated(
        kernel_quantizer="ste_sign", input_quantizer="ste_sign", pad_values=1.0))

The same functions work for ``nnx.Linear(dot_general=...)`` and
``nnx.Conv(conv_general_dilated=...)``. The first operand (``lhs``) is the layer input and the
second (``rhs``) the kernel, as Flax's Dense, DenseGeneral, Conv and Einsum call them. The
quantizers are keyword arguments: a positional pair could be given in either order and would
binarize the wrong operand without a sound, so it is refused.
Schedule values set with :func:`bnn_jax.nn.quant_params` (ReSTE's ``o``, ...) reach them too.
Quantizers with learned arrays (LSQ steps, RSign shifts, ...) need somewhere to keep them: use
:class:`bnn_jax.nn.QuantLinear` or :func:`bnn_jax.nn.quantize` instead.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Iterable

import flax.linen as linen
import jax
import jax.numpy as jnp
from jax import lax

from bnn_jax.nn.layers import _scheduled, as_quantizer, observed
from bnn_jax.quant.registry import check


def _keywords_only(fn: str, args: tuple) -> None:
    if args:
        raise TypeError(
            f"{fn} takes its quantizers by keyword only: {fn}(kernel_quantizer=..., "
            f"input_quantizer=...); got {len(args)} positional argument(s) {args!r}, whose "
            f"order (input/kernel or weight/input, as in a rule) cannot be told apart")


def _stateless(spec: Any, role: str):
    q = as_quantizer(spec, role=role)
    if q is not None and q.learned:
        raise ValueError(f"{role} {q.name!r} has learned arrays {list(q.learned)}; a plain "
                         "dot_general/conv cannot hold them: use bnn_jax.nn.QuantLinear/QuantConv "
                         "or bnn_jax.nn.quantize(model, rules)")
    return q


def _apply(q, x, role: str):
    # Schedule values given with bnn_jax.nn.quant_params reach these layers as they reach the
    # NNX ones (ReSTE's o, ...).
    return x if q is None else q(x, **_scheduled(role, q, {}))


def quantized_dot_general(*args, kernel_quantizer: Any = None, input_quantizer: Any = None):
    """``lax.dot_general`` with ``lhs`` (input) and ``rhs`` (kernel) quantized first."""
    _keywords_only("quantized_dot_general", args)
    qi = _stateless(input_quantizer, "input_quantizer")
    qk = _stateless(kernel_quantizer, "kernel_quantizer")

    def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                    **kwargs):
        return lax.dot_general(_apply(qi, lhs, "input"), _apply(qk, rhs, "kernel"),
                               dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type, **kwargs)

    dot_general.input_quantizer, dot_general.kernel_quantizer = qi, qk
    return dot_general


def quantized_conv_general_dilated(*args, kernel_quantizer: Any = None,
                                   input_quantizer: Any = None, pad_values: float = 0.0):
    """``lax.conv_general_dilated`` with quantized input and kernel.

    ``pad_values`` (larq): the quantized input is padded with this constant instead of 0.
    """
    _keywords_only("quantized_conv_general_dilated", args)
    qi = _stateless(input_quantizer, "input_quantizer")
    qk = _stateless(kernel_quantizer, "kernel_quantizer")
    check(isinstance(pad_values, (int, float)) and not isinstance(pad_values, bool),
          f"pad_values must be a number, got {pad_values!r}")

    def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                             rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                             batch_group_count=1, precision=None, preferred_element_type=None,
                             **kwargs):
        x, w = _apply(qi, lhs, "input"), _apply(qk, rhs, "kernel")
        if pad_values != 0.0:
            check(lhs_dilation is None or all(d == 1 for d in lhs_dilation),
                  "pad_values other than 0 cannot be combined with lhs_dilation")
            dn = lax.conv_dimension_numbers(x.shape, w.shape, dimension_numbers)
            spatial_in = [x.shape[d] for d in dn.lhs_spec[2:]]
            window = [w.shape[d] for d in dn.rhs_spec[2:]]
            dil = rhs_dilation or (1,) * len(window)
            window = [(k - 1) * d + 1 for k, d in zip(window, dil)]
            if isinstance(padding, str):
                padding = lax.padtype_to_pads(spatial_in, window, window_strides, padding)
            widths = [(0, 0)] * x.ndim
            for d, p in zip(dn.lhs_spec[2:], padding):
                widths[d] = tuple(p)
            # Pad AFTER quantizing, so padded positions hold pad_values and not q(0).
            x = jnp.pad(x, widths, constant_values=pad_values)
            padding = [(0, 0)] * len(window)
        return lax.conv_general_dilated(x, w, window_strides, padding, lhs_dilation=lhs_dilation,
                                        rhs_dilation=rhs_dilation,
                                        dimension_numbers=dimension_numbers,
                                        feature_group_count=feature_group_count,
                                        batch_group_count=batch_group_count, precision=precision,
                                        preferred_element_type=preferred_element_type, **kwargs)

    conv_general_dilated.input_quantizer, conv_general_dilated.kernel_quantizer = qi, qk
    return conv_general_dilated


# ------------------------------------------------------------------------ quantize_linen --

#: Linen layers quantize_linen swaps operands of (ConvLocal's unshared kernel is not one).
LINEN_LAYERS = (linen.Dense, linen.DenseGeneral, linen.Einsum, linen.Conv, linen.ConvTranspose,
                linen.Embed)


def _first_rule(rules, path: str):
    return next(((i, r) for i, r in enumerate(rules) if r.matches(path)), (None, None))


def _linen_learned(m, q, role: str, x) -> dict[str, Any]:
    """The learned arrays of ``q`` as Linen params of ``m`` (created from ``x`` at init)."""
    if q is None or not q.learned:
        return {}
    if isinstance(m, linen.Embed):
        raise ValueError(f"{role} quantizer {q.name!r} has learned arrays {list(q.learned)}; "
                         "a Linen Embed (set up in setup()) cannot create them while it runs: "
                         "use a quantizer without learned arrays for embeddings")
    init = functools.lru_cache(maxsize=1)(lambda: q.init(x))
    return {n: m.param(f"{role}_{n}", lambda *_, n=n: jax.lax.stop_gradient(init()[n]))
            for n in q.learned}


def _quantize_operand(m, q, role: str, x, path: str):
    if q is None or x is None:
        return x
    learned = _linen_learned(m, q, role, x)
    scheduled = _scheduled(role, q, {})

    def fn(v):
        return q(v, **learned, **scheduled)

    kind = "weight" if role == "kernel" else "input"
    if role == "kernel" and isinstance(m, linen.DenseGeneral):
        # The quantizer sees the (fan-in, fan-out) matrix, as for QuantLinearGeneral.
        feats = m.features if isinstance(m.features, tuple) else (m.features,)
        shape = x.shape
        n_out = math.prod(shape[len(shape) - len(feats):])
        return jnp.reshape(observed(path, kind, q, fn, jnp.reshape(x, (-1, n_out))), shape)
    return observed(path, kind, q, fn, x)


def _interceptor(rules, prefix: str, seen: dict | None):
    def intercept(next_fun, args, kwargs, context):
        m = context.module
        if not isinstance(m, LINEN_LAYERS) or context.method_name not in ("__call__", "attend"):
            return next_fun(*args, **kwargs)
        path = "/".join(p for p in (prefix, *m.scope.path) if p)
        i, rule = _first_rule(rules, path)
        if seen is not None:
            seen[path] = (type(m).__name__, i)
        if rule is None or rule.full_precision:
            return next_fun(*args, **kwargs)
        qi = as_quantizer(rule.input, role="input quantizer")
        qk = as_quantizer(rule.weight, role="weight quantizer")
        table_only = isinstance(m, linen.Embed) and context.method_name == "__call__"
        original = m.promote_dtype

        def promote(*arrays, **kw):
            arrays = list(arrays)
            if table_only:
                arrays[0] = _quantize_operand(m, qk, "kernel", arrays[0], path)
            else:
                arrays[0] = _quantize_operand(m, qi, "input", arrays[0], path)
                arrays[1] = _quantize_operand(m, qk, "kernel", arrays[1], path)
            return original(*arrays, **kw)

        # Linen modules are frozen dataclasses: the operand hook is set for this call only.
        object.__setattr__(m, "promote_dtype", promote)
        try:
            return next_fun(*args, **kwargs)
        finally:
            object.__setattr__(m, "promote_dtype", original)

    return intercept


class QuantizedLinen(linen.Module):
    """``module`` whose Dense/DenseGeneral/Einsum/Conv/ConvTranspose/Embed calls are quantized
    by ``rules``; same scope as ``module``, so the parameter tree is the original's."""

    module: linen.Module
    rules: tuple = ()
    prefix: str = ""

    def setup(self):
        linen.share_scope(self, self.module)

    def __call__(self, *args, **kwargs):
        """Call the wrapped module with its layers intercepted."""
        with linen.intercept_methods(_interceptor(self.rules, self.prefix, None)):
            return self.module(*args, **kwargs)


def quantize_linen(module: linen.Module, rules: Iterable[Any], *,
                   prefix: str = "") -> QuantizedLinen:
    """``module`` (an unmodified Linen model) with its layers quantized by ``rules``.

    Rules are those of :func:`bnn_jax.nn.quantize` (first match wins; both quantizers None
    keeps a layer float), matched against Linen module paths such as ``"Dense_0"`` or
    ``"blocks_1/attn/query"`` (``prefix/`` in front when given). Call ``init``/``apply`` on
    the result exactly as on ``module``; :func:`linen_layers` lists what the rules matched.
    """
    from bnn_jax.nn.intercept import as_rule

    check(isinstance(module, linen.Module),
          f"quantize_linen expects a flax.linen Module, got {type(module).__name__} (for NNX "
          f"models use bnn_jax.nn.quantize)")
    return QuantizedLinen(module, tuple(as_rule(r) for r in rules), prefix)


def linen_layers(quantized: QuantizedLinen, *args, **kwargs) -> dict[str, tuple[str, Any]]:
    """{path: (layer type, index of the rule that matched it or None)} of the Linen layers
    that ``quantized`` runs on these arguments (traced abstractly; nothing is computed)."""
    seen: dict = {}

    def trace(*a, **k):
        with linen.intercept_methods(_interceptor(quantized.rules, quantized.prefix, seen)):
            return quantized.module.init(jax.random.key(0), *a, **k)

    jax.eval_shape(trace, *args, **kwargs)
    return seen

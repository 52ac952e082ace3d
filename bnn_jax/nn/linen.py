"""Quantized ``dot_general`` / ``conv_general_dilated`` to plug into Flax layers without rewriting.

For quantizers without learned state, quantization is just a change of the primitive::

    dense = flax.linen.Dense(64, dot_general=quantized_dot_general("ste_sign", "ste_sign"))
    conv = flax.linen.Conv(64, (3, 3), conv_general_dilated=quantized_conv_general_dilated(
        "ste_sign", "ste_sign", pad_values=1.0))

The same functions work for ``nnx.Linear(dot_general=...)`` and
``nnx.Conv(conv_general_dilated=...)``. The first operand (``lhs``) is the layer input and the
second (``rhs``) the kernel, as Flax's Dense, DenseGeneral, Conv and Einsum call them.
Schedule values set with :func:`bnn_jax.nn.quant_params` (ReSTE's ``o``, ...) reach them too.
Quantizers with learned arrays (LSQ steps, RSign shifts, ...) need somewhere to keep them: use
:class:`bnn_jax.nn.QuantLinear` or :func:`bnn_jax.nn.quantize` instead.
"""

from __future__ import annotations

from typing import Any

from jax import lax
import jax.numpy as jnp

from bnn_jax.nn.layers import _scheduled, as_quantizer
from bnn_jax.quant.registry import check


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


def quantized_dot_general(input_quantizer: Any = None, kernel_quantizer: Any = None):
    """``lax.dot_general`` with ``lhs`` (input) and ``rhs`` (kernel) quantized first."""
    qi = _stateless(input_quantizer, "input_quantizer")
    qk = _stateless(kernel_quantizer, "kernel_quantizer")

    def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                    **kwargs):
        return lax.dot_general(_apply(qi, lhs, "input"), _apply(qk, rhs, "kernel"),
                               dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type, **kwargs)

    dot_general.input_quantizer, dot_general.kernel_quantizer = qi, qk
    return dot_general


def quantized_conv_general_dilated(input_quantizer: Any = None, kernel_quantizer: Any = None,
                                   *, pad_values: float = 0.0):
    """``lax.conv_general_dilated`` with quantized input and kernel.

    ``pad_values`` (larq): the quantized input is padded with this constant instead of 0.
    """
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

"""Flax NNX layers built on bnn_jax.quant: quantized Linear/Conv/Einsum, activations, attention,
and ``quantize(model, rules)`` to quantize an existing NNX model in place."""

from bnn_jax.nn.layers import (QUANT_LAYERS, QuantConv, QuantEinsum, QuantLinear,
                               apply_constraints, as_quantizer)

__all__ = ["QUANT_LAYERS", "QuantConv", "QuantEinsum", "QuantLinear", "apply_constraints",
           "as_quantizer"]

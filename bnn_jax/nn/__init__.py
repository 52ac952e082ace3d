"""Flax NNX layers built on bnn_jax.quant: quantized Linear/Conv/Einsum, activations, attention,
and ``quantize(model, rules)`` to quantize an existing NNX model in place."""

from bnn_jax.nn.intercept import QuantizeReport, Replacement, Rule, as_rule, quantize
from bnn_jax.nn.layers import (QUANT_LAYERS, QuantConv, QuantEinsum, QuantLinear,
                               apply_constraints, as_quantizer)

__all__ = ["QUANT_LAYERS", "QuantConv", "QuantEinsum", "QuantLinear", "QuantizeReport",
           "Replacement", "Rule", "apply_constraints", "as_quantizer", "as_rule", "quantize"]

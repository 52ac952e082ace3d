"""Flax NNX layers built on bnn_jax.quant: quantized Linear/Conv/Einsum, activations, attention,
and ``quantize(model, rules)`` to quantize an existing NNX model in place."""

from bnn_jax.nn.activations import (DPReLU, LearnableBias, Quantize, RPReLU, RSign,
                                    SqueezeExcite, WSConv, hard_sigmoid, hard_tanh)
from bnn_jax.nn.attention import (BiAttention, BiPFTAttention, MultiHeadAttention,
                                  QKReparamAttention, SABAttention)
from bnn_jax.nn.intercept import QuantizeReport, Replacement, Rule, as_rule, quantize
from bnn_jax.nn.layers import (QUANT_LAYERS, QuantConv, QuantConvTranspose, QuantEinsum,
                               QuantEmbed, QuantLinear, QuantLinearGeneral, apply_constraints,
                               as_quantizer, initialize, pending_learned, quant_params)
from bnn_jax.nn.linen import (QuantizedLinen, linen_layers, quantize_linen,
                              quantized_conv_general_dilated, quantized_dot_general)
from bnn_jax.nn.policy import (apply_policy, config_rules, policy_rules, precision_policy,
                               quantize_config)

__all__ = [
    "BiAttention", "BiPFTAttention", "DPReLU", "LearnableBias", "MultiHeadAttention",
    "QKReparamAttention", "QUANT_LAYERS", "QuantConv", "QuantConvTranspose", "QuantEinsum",
    "QuantEmbed", "QuantLinear", "QuantizedLinen", "linen_layers", "quantize_linen",
    "QuantLinearGeneral", "Quantize", "QuantizeReport", "RPReLU", "RSign", "Replacement", "Rule",
    "SABAttention", "SqueezeExcite", "WSConv", "apply_constraints", "apply_policy",
    "as_quantizer", "as_rule", "hard_sigmoid", "hard_tanh", "initialize", "pending_learned",
    "config_rules", "policy_rules", "precision_policy", "quantize_config",
    "quant_params", "quantize", "quantized_conv_general_dilated", "quantized_dot_general",
]

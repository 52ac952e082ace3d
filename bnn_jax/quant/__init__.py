"""Pure-JAX quantizer primitives: the surrogate-gradient core, every method, and the registry.

``get(name, **params)`` returns a :class:`Quantizer`; ``names()`` lists what is registered.
Importing this package registers every method module below.
"""

from bnn_jax.quant.core import (clip, clipped_ste, estimator, heaviside, round_half_up, sign,
                                sign0, straight_through)
from bnn_jax.quant.registry import Quantizer, entry, get, markdown_table, names, register
from bnn_jax.quant.larq import (approx_sign, dorefa, hard_tanh, leaky_tanh, magnitude_aware_sign,
                                magnitude_aware_sign_unclipped, noop, ste_heaviside, ste_sign,
                                ste_tern, swish_sign, weight_clip, xnor_weight_scale)
from bnn_jax.quant.tbt import elastic_quantize, tbt_act, tbt_act8, tbt_weight
from bnn_jax.quant.bitnet import bitnet_act, bitnet_weight
from bnn_jax.quant.bibert import bi_attention, bibert_act, bibert_sign, bibert_weight
from bnn_jax.quant.bipft import (bipft_act, bipft_attention, bipft_attn_probs, bipft_weight,
                                 low_rank_residuals)
from bnn_jax.quant.binarydm import binarydm_lmb, binarydm_lmb1, progressive_binarization
from bnn_jax.quant.pbllm import asym_fake_quant, gptq_pb, pbllm_prepare, pbllm_weight
from bnn_jax.quant.dbllm import dbllm_fdb, fdb_init

__all__ = [
    "Quantizer", "approx_sign", "clip", "clipped_ste", "dorefa", "entry", "estimator", "get",
    "hard_tanh", "heaviside", "leaky_tanh", "magnitude_aware_sign",
    "magnitude_aware_sign_unclipped", "markdown_table", "names", "noop", "register",
    "round_half_up", "sign", "sign0", "ste_heaviside", "ste_sign", "ste_tern", "straight_through",
    "swish_sign", "weight_clip", "xnor_weight_scale",
]

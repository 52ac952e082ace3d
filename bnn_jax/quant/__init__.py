"""Pure-JAX quantizer primitives: the surrogate-gradient core, every method, and the registry.

``get(name, **params)`` returns a :class:`Quantizer`; ``names()`` lists what is registered.
Importing this package registers every method module below.
"""

from bnn_jax.quant.core import (clip, clipped_ste, estimator, exact_div, grad_scale, heaviside,
                                identity_ste, mean, per_channel_axes, round_half_up, sign, sign0,
                                sign_of, straight_through)
from bnn_jax.quant.registry import Quantizer, entry, get, markdown_table, names, register
from bnn_jax.quant.larq import (approx_sign, dorefa, hard_tanh, leaky_tanh, magnitude_aware_sign,
                                magnitude_aware_sign_unclipped, noop, ste_heaviside, ste_sign,
                                ste_tern, swish_sign, weight_clip, xnor_weight_scale)
from bnn_jax.quant import schedules
from bnn_jax.quant.classic import (binary_connect, binary_connect_stochastic, bireal_weight,
                                   bnn_ste, fda, fda_act, fda_noise_init, fda_weight, irnet_ede,
                                   irnet_weight, noise_adaption, rprelu, rsign, twn, xnor_act,
                                   xnor_scaling_map, xnor_weight)
from bnn_jax.quant.reste import reste_weight  # the function `reste` would shadow its module
from bnn_jax.quant.biper import (biper_act, biper_regularizer, biper_stage2_params,
                                 biper_two_stage, biper_weight, biper_weight_stage1)
from bnn_jax.quant.lsq import lsq_plus, mse_init  # `lsq` likewise: get("lsq") or quant.lsq.lsq
from bnn_jax.quant.ofq import (cga_apply, cga_mask, cga_restore, qk_reparam, qk_reparam_logits,
                               qk_reparam_weight, statsq)
from bnn_jax.quant.bivit import bivit_weight, sab_binarize, sab_threshold_mask
from bnn_jax.quant.norm import batch_channel_norm, weight_standardization
from bnn_jax.quant.tbt import elastic_quantize, tbt_act, tbt_act8, tbt_weight
from bnn_jax.quant.bitnet import bitnet_act, bitnet_weight
from bnn_jax.quant.bibert import bi_attention, bibert_act, bibert_sign, bibert_weight
from bnn_jax.quant.bipft import (bipft_act, bipft_attention, bipft_attn_probs, bipft_weight,
                                 low_rank_residuals)
from bnn_jax.quant.binarydm import (binarydm_act, binarydm_lmb, binarydm_lmb1,
                                    progressive_binarization)
from bnn_jax.quant.pbllm import asym_fake_quant, gptq_pb, pbllm_prepare, pbllm_weight
from bnn_jax.quant.dbllm import dbllm_fdb, fdb_init
from bnn_jax.quant.aqt import aqt

__all__ = [
    "aqt", "approx_sign", "asym_fake_quant", "batch_channel_norm", "bi_attention", "bibert_act",
    "bibert_sign", "bibert_weight", "binary_connect", "binary_connect_stochastic", "binarydm_act",
    "binarydm_lmb", "binarydm_lmb1", "biper_act", "biper_regularizer", "biper_stage2_params",
    "biper_two_stage", "biper_weight", "biper_weight_stage1", "bipft_act", "bipft_attention",
    "bipft_attn_probs", "bipft_weight", "bireal_weight", "bitnet_act", "bitnet_weight",
    "bivit_weight", "bnn_ste", "cga_apply", "cga_mask", "cga_restore", "clip", "clipped_ste",
    "dbllm_fdb", "dorefa", "elastic_quantize", "entry", "estimator", "exact_div", "fda", "fda_act",
    "fda_noise_init", "fda_weight", "fdb_init", "get", "gptq_pb", "grad_scale", "hard_tanh",
    "heaviside", "identity_ste", "irnet_ede", "irnet_weight", "leaky_tanh", "low_rank_residuals",
    "lsq_plus", "magnitude_aware_sign", "magnitude_aware_sign_unclipped", "markdown_table", "mean",
    "mse_init", "names", "noise_adaption", "noop", "pbllm_prepare", "pbllm_weight",
    "per_channel_axes", "progressive_binarization", "qk_reparam", "qk_reparam_logits",
    "qk_reparam_weight", "Quantizer", "register", "reste_weight", "round_half_up", "rprelu",
    "rsign", "sab_binarize", "sab_threshold_mask", "schedules", "sign", "sign0", "sign_of",
    "statsq", "ste_heaviside", "ste_sign", "ste_tern", "straight_through", "swish_sign", "tbt_act",
    "tbt_act8", "tbt_weight", "twn", "weight_clip", "weight_standardization", "xnor_act",
    "xnor_scaling_map", "xnor_weight", "xnor_weight_scale",
]

from bnn_jax.quant.ptq import int_weight, pbllm_ptq_weight  # noqa: E402

__all__ += ["int_weight", "pbllm_ptq_weight"]

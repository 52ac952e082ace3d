"""Bi-Real Net 18 (larq-zoo ``literature.BiRealNet``): ApproxSign inputs, magnitude-aware sign
kernels clipped at 1, BN momentum 0.8 (Keras epsilon 1e-3), no ReLU anywhere."""

from bnn_jax.models import resnet_e
from bnn_jax.models.blocks import variant

Model = variant(resnet_e.Model, "BiRealNet", __doc__, style="bireal",
                input_quantizer="approx_sign", kernel_quantizer="magnitude_aware_sign",
                kernel_constraint="weight_clip", bn_momentum=0.8, bn_epsilon=1e-3)

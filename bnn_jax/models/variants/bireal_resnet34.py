"""Bi-Real Net ResNet-34 (Liu et al., ECCV 2018): a real shortcut per binary conv, ApproxSign."""

from bnn_jax.models import resnet_e
from bnn_jax.models.blocks import variant

Model = variant(resnet_e.Model, "bireal_resnet34", __doc__, style="bireal", blocks=(3, 4, 6, 3),
                input_quantizer="approx_sign", kernel_quantizer="bireal_weight",
                kernel_constraint=None, bn_momentum=0.9, bn_epsilon=1e-5)

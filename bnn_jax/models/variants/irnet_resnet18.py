"""IR-Net ResNet-18 (Qin et al., CVPR 2020): IR-Net/ReSTE binary
layout, EDE inputs, balanced weights."""

from bnn_jax.models import resnet_imagenet
from bnn_jax.models.blocks import variant

Model = variant(resnet_imagenet.Model, "irnet_resnet18", __doc__,
                depth=18,
                input_quantizer="irnet_ede", kernel_quantizer="irnet_weight")

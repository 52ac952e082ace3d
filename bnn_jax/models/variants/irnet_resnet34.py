"""IR-Net ResNet-34 (Qin et al., CVPR 2020): IR-Net/ReSTE binary
layout, EDE inputs, balanced weights."""

from bnn_jax.models import resnet_imagenet
from bnn_jax.models.blocks import variant

Model = variant(resnet_imagenet.Model, "irnet_resnet34", __doc__,
                depth=34,
                input_quantizer="irnet_ede", kernel_quantizer="irnet_weight")

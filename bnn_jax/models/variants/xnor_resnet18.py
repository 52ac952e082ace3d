"""XNOR-Net ResNet-18 (Rastegari et al., ECCV 2016): binary layout, XNOR
scaled inputs and weights."""

from bnn_jax.models import resnet_imagenet
from bnn_jax.models.blocks import variant

Model = variant(resnet_imagenet.Model, "xnor_resnet18", __doc__,
                depth=18,
                input_quantizer="xnor_act", kernel_quantizer="xnor_weight")

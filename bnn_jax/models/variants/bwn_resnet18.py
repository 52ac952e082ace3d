"""BWN ResNet-18 (Rastegari et al., ECCV 2016): binary layout, float inputs, XNOR scaled weights."""

from bnn_jax.models import resnet_imagenet
from bnn_jax.models.blocks import variant

Model = variant(resnet_imagenet.Model, "bwn_resnet18", __doc__,
                depth=18, kernel_quantizer="xnor_weight")

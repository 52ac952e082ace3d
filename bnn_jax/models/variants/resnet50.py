"""Float ResNet-50 (torchvision layout), a distillation teacher."""

from bnn_jax.models import resnet_imagenet
from bnn_jax.models.blocks import variant

Model = variant(resnet_imagenet.Model, "resnet50", __doc__, depth=50, style="float")

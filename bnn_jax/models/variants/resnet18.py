"""Float ResNet-18 (torchvision layout), a distillation teacher."""

from bnn_jax.models import resnet_imagenet
from bnn_jax.models.blocks import variant

Model = variant(resnet_imagenet.Model, "resnet18", __doc__, depth=18, style="float")

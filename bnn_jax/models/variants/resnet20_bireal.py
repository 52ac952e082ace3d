"""CIFAR resnet20_bireal in the ReSTE / IR-Net code-base layout (``models.resnet_cifar``)."""

from bnn_jax.models import resnet_cifar
from bnn_jax.models.blocks import variant

Model = variant(resnet_cifar.Model, "resnet20_bireal", __doc__, arch="resnet20_bireal")

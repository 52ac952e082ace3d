"""CIFAR resnet18 in the ReSTE / IR-Net code-base layout (``bnn_jax.models.resnet_cifar``)."""

from bnn_jax.models import resnet_cifar
from bnn_jax.models.blocks import variant

Model = variant(resnet_cifar.Model, "resnet18_cifar", __doc__, arch="resnet18")

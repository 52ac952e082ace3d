"""CIFAR vgg_small in the ReSTE / IR-Net code-base layout (``bnn_jax.models.resnet_cifar``)."""

from bnn_jax.models import resnet_cifar
from bnn_jax.models.blocks import variant

Model = variant(resnet_cifar.Model, "vgg_small", __doc__, arch="vgg_small")

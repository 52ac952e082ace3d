"""larq-zoo ``literature`` binary_alexnet, from the AlexNet family (``bnn_jax.models.alexnet``)."""

from bnn_jax.models import alexnet
from bnn_jax.models.blocks import variant

Model = variant(alexnet.Model, "binary_alexnet", __doc__, arch="binary_alexnet")

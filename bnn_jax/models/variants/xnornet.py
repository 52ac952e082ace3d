"""larq-zoo ``literature`` xnornet in the AlexNet family module (``bnn_jax.models.alexnet``)."""

from bnn_jax.models import alexnet
from bnn_jax.models.blocks import variant

Model = variant(alexnet.Model, "xnornet", __doc__, arch="xnornet")

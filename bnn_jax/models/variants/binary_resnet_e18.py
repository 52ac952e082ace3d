"""BinaryResNetE18 (larq-zoo ``literature.BinaryResNetE18``): the defaults of resnet_e."""

from bnn_jax.models import resnet_e
from bnn_jax.models.blocks import variant

Model = variant(resnet_e.Model, "BinaryResNetE18", __doc__)

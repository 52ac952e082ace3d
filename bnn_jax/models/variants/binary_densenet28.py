"""BinaryDenseNet28 (larq-zoo ``literature.BinaryDenseNet28``):
BinaryDenseNet with layers 6-6-6-5, reductions 2.7-2.7-2.2."""

from bnn_jax.models import densenet
from bnn_jax.models.blocks import variant

Model = variant(densenet.Model, "BinaryDenseNet28", __doc__,
                layers=(6, 6, 6, 5), reduction=(2.7, 2.7, 2.2))

"""BinaryDenseNet37 (larq-zoo ``literature.BinaryDenseNet37``):
BinaryDenseNet with layers 6-8-12-6, reductions 3.3-3.3-4."""

from bnn_jax.models import densenet
from bnn_jax.models.blocks import variant

Model = variant(densenet.Model, "BinaryDenseNet37", __doc__,
                layers=(6, 8, 12, 6), reduction=(3.3, 3.3, 4))

"""BinaryDenseNet45 (larq-zoo ``literature.BinaryDenseNet45``):
BinaryDenseNet with layers 6-12-14-8, reductions 2.7-3.3-4."""

from bnn_jax.models import densenet
from bnn_jax.models.blocks import variant

Model = variant(densenet.Model, "BinaryDenseNet45", __doc__,
                layers=(6, 12, 14, 8), reduction=(2.7, 3.3, 4))

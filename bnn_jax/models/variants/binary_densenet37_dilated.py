"""BinaryDenseNet37Dilated (larq-zoo ``literature.BinaryDenseNet37Dilated``): BinaryDenseNet
with layers 6-8-12-6, reductions 3.3-3.3-4, dilation 1-1-2-4."""

from bnn_jax.models import densenet
from bnn_jax.models.blocks import variant

Model = variant(densenet.Model, "BinaryDenseNet37Dilated", __doc__, layers=(6, 8, 12, 6),
                reduction=(3.3, 3.3, 4), dilation_rate=(1, 1, 2, 4))

"""QuickNetSmall (larq-zoo ``sota.QuickNetSmall``): QuickNet with sections 32-64-256-512."""

from bnn_jax.models import quicknet
from bnn_jax.models.blocks import variant

Model = variant(quicknet.Model, "QuickNetSmall", __doc__, section_filters=(32, 64, 256, 512))

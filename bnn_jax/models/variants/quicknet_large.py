"""QuickNetLarge (larq-zoo ``sota.QuickNetLarge``): QuickNet with 6-8-12-6 blocks per section."""

from bnn_jax.models import quicknet
from bnn_jax.models.blocks import variant

Model = variant(quicknet.Model, "QuickNetLarge", __doc__, section_blocks=(6, 8, 12, 6))

"""DeiT-B/16, patch 16 (``bnn_jax.models.vit``; timm ``deit_base_patch16_224`` at 224x224)."""

from bnn_jax.models import vit
from bnn_jax.models.blocks import variant

Model = variant(vit.Model, "deit_base", __doc__,
                patch_size=16, hidden=768, depth=12, num_heads=12, mlp_dim=3072)

"""ViT-Ti/16, patch 16 (``bnn_jax.models.vit``; timm ``vit_tiny_patch16_224`` at 224x224)."""

from bnn_jax.models import vit
from bnn_jax.models.blocks import variant

Model = variant(vit.Model, "vit_tiny", __doc__,
                patch_size=16, hidden=192, depth=12, num_heads=3, mlp_dim=768)

"""DeiT-S/16 with the distillation token, patch 16
(``bnn_jax.models.vit``; timm ``deit_small_distilled_patch16_224`` at 224x224)."""

from bnn_jax.models import vit
from bnn_jax.models.blocks import variant

Model = variant(vit.Model, "deit_small_distilled", __doc__,
                patch_size=16, hidden=384, depth=12, num_heads=6, mlp_dim=1536, distilled=True)

"""Swin-S (``bnn_jax.models.swin``; timm ``swin_small_patch4_window7_224`` at 224x224)."""

from bnn_jax.models import swin
from bnn_jax.models.blocks import variant

Model = variant(swin.Model, "swin_small", __doc__, patch_size=4, embed_dim=96,
                depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7)

"""PVTv2-B2 (whai362/PVT ``classification/pvt_v2.py``, ``pvt_v2_b2``): widths 64-128-320-512,
3-4-6-3 blocks; 25.36M parameters at 1000 classes (the PVT README's ``get_flops.py`` output)."""

from bnn_jax.models import pvt
from bnn_jax.models.blocks import variant

Model = variant(pvt.Model, "PVTv2B2", __doc__, embed_dims=(64, 128, 320, 512),
                depths=(3, 4, 6, 3))

"""PVTv2-B0 (whai362/PVT ``classification/pvt_v2.py``, ``pvt_v2_b0``): widths 32-64-160-256,
two blocks per stage; 3.7M parameters at 1000 classes (the PVT README)."""

from bnn_jax.models import pvt
from bnn_jax.models.blocks import variant

Model = variant(pvt.Model, "PVTv2B0", __doc__, embed_dims=(32, 64, 160, 256),
                depths=(2, 2, 2, 2))

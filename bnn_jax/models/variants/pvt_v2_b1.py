"""PVTv2-B1 (whai362/PVT ``classification/pvt_v2.py``, ``pvt_v2_b1``): widths 64-128-320-512,
two blocks per stage; 14.0M parameters at 1000 classes (the PVT README)."""

from bnn_jax.models import pvt
from bnn_jax.models.blocks import variant

Model = variant(pvt.Model, "PVTv2B1", __doc__, embed_dims=(64, 128, 320, 512),
                depths=(2, 2, 2, 2))

"""ReActNet-A (Liu et al., ECCV 2020): the reference widths of reactnet.py."""

from bnn_jax.models import reactnet
from bnn_jax.models.blocks import variant

Model = variant(reactnet.Model, "reactnet_a", __doc__)

"""RealToBinaryNet (larq-zoo ``literature.RealToBinaryNet``): the defaults of real_to_binary."""

from bnn_jax.models import real_to_binary
from bnn_jax.models.blocks import variant

Model = variant(real_to_binary.Model, "RealToBinaryNet", __doc__)

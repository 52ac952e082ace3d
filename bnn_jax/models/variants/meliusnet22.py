"""MeliusNet22 (larq-zoo ``literature.MeliusNet22``): the defaults of ``meliusnet``."""

from bnn_jax.models import meliusnet
from bnn_jax.models.blocks import variant

Model = variant(meliusnet.Model, "MeliusNet22", __doc__)

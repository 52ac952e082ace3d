"""PokeBNN-2.0x: PokeBNN with filter_multiplier 2.0 (google/aqt pokebnn.py, method notes §13)."""

from bnn_jax.models import pokebnn
from bnn_jax.models.blocks import variant

Model = variant(pokebnn.Model, "PokeBNN_2_0x", __doc__, filter_multiplier=2.0)

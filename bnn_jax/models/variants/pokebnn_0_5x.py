"""PokeBNN-0.5x: PokeBNN with filter_multiplier 0.5 (google/aqt pokebnn.py, method notes §13)."""

from bnn_jax.models import pokebnn
from bnn_jax.models.blocks import variant

Model = variant(pokebnn.Model, "PokeBNN_0_5x", __doc__, filter_multiplier=0.5)

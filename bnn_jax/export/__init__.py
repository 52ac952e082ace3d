"""Freeze a trained model into packed bits + scales that run on bnn_jax.kernels; save and load it.

``frozen, records = freeze(model)``; ``save(frozen, path, records)``; ``load(path, model)``;
for Linen models made by ``bnn_jax.nn.quantize_linen``: ``freeze_linen`` / ``load_linen``.
``python -m bnn_jax.export --workdir DIR`` freezes the newest checkpoint of a training run.
"""

from bnn_jax.export.freeze import LayerRecord, freeze, is_frozen_layer, report, state_bytes
from bnn_jax.export.frozen import (FrozenConv, FrozenEinsum, FrozenEmbed, FrozenLinear,
                                   PackedBits, Scale, einsum_unsupported, input_encoding,
                                   split_levels)
from bnn_jax.export.io import build_model, load, read_meta, save
from bnn_jax.export.linen import FrozenLinen, freeze_linen, load_linen

__all__ = ["FrozenConv", "FrozenEinsum", "FrozenEmbed", "FrozenLinear", "FrozenLinen",
           "LayerRecord", "PackedBits", "Scale", "build_model", "einsum_unsupported", "freeze",
           "freeze_linen", "input_encoding", "is_frozen_layer", "load", "load_linen",
           "read_meta", "report", "save", "split_levels", "state_bytes"]

"""mBART (Liu et al., 2020): BART with pre-LN layers, final layer norms and scaled embeddings.

Hugging Face's ``MBartForConditionalGeneration`` differs from BART by normalizing each
sublayer's input (``x + f(norm(x))``), a ``layer_norm`` after the encoder and after the decoder,
and ``scale_embedding=True`` in its configs (token embeddings times ``sqrt(hidden)``); the
parameter names are BART's. Everything else, including TBT's ``bits`` placement (TBT's WMT16
En-Ro experiments quantize mBART), is :mod:`bnn_jax.models.bart`.
"""

from __future__ import annotations

from bnn_jax.models import bart


class Model(bart.Model):
    """mBART: ``bart.Model`` with ``pre_norm`` and ``scale_embedding`` defaulting to True."""

    pre_norm_default = True

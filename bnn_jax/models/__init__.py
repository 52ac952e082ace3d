"""The model zoo by name: ``build(config.model, num_classes=..., input_shape=..., rngs=...)``.

Each model module exports ``Model``, an NNX module constructed as
``Model(num_classes=..., input_shape=..., rngs=..., **config_fields)`` and called as
``model(images)`` (the loop feeds quantizer schedules through ``bnn_jax.nn.quant_params``).
Modules are imported only when their model is built, so the zoo costs nothing to list.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

# name -> module under bnn_jax.models that exports `Model`.
MODELS = {
    "mlp": "mlp",
    "digits_cnn": "digits_cnn",
    "llama": "llama",
    "bart": "bart",
    "mbart": "mbart",
    "bert": "bert",
}


def names() -> list[str]:
    """All model names, sorted."""
    return sorted(MODELS)


def get(name: str):
    """The ``Model`` class of ``name`` (ValueError listing valid names if unknown)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(names())}")
    return importlib.import_module(f"bnn_jax.models.{MODELS[name]}").Model


def fields(name: str) -> list[str]:
    """The config fields ``name`` accepts (its constructor's keyword parameters)."""
    sig = inspect.signature(get(name).__init__)
    skip = {"self", "num_classes", "input_shape", "rngs"}
    return sorted(p for p in sig.parameters if p not in skip)


def validate(cfg: Any) -> None:
    """Reject an unknown model or field before anything is built or compiled."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    valid = fields(name)
    unknown = sorted(set(cfg) - set(valid))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in config.model for model {name!r}; "
                         f"valid fields: {valid}")


def build(cfg: Any, *, num_classes: int, input_shape: tuple[int, ...], rngs) -> Any:
    """Construct the model named by ``cfg.name`` with the remaining fields as arguments."""
    validate(cfg)
    cfg = dict(cfg)
    return get(cfg.pop("name"))(num_classes=num_classes, input_shape=tuple(input_shape),
                                rngs=rngs, **cfg)

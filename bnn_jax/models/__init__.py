"""The model zoo by name: ``build(config.model, num_classes=..., input_shape=..., rngs=...)``.

Each model module exports ``Model``, an NNX module constructed as
``Model(num_classes=..., input_shape=..., rngs=..., **config_fields)`` and called as
``model(images)`` (the loop feeds quantizer schedules through ``bnn_jax.nn.quant_params``).
Modules are imported only when their model is built, so the zoo costs nothing to list.

Models written elsewhere join in two ways: ``register(name, cls)`` (from Python), or an import
path as the name, ``config.model.name = "my_pkg.models:MyNet"`` (the module is imported from
``sys.path``, e.g. ``PYTHONPATH``); ``config.quant`` then binarizes them (see
``bnn_jax.nn.policy.quantize_config``).
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
}


# name -> model class, added by register() (user models).
_REGISTERED: dict[str, Any] = {}


def names() -> list[str]:
    """All model names (zoo and registered), sorted."""
    return sorted({*MODELS, *_REGISTERED})


def register(name: str, cls: Any) -> None:
    """Make the model class ``cls`` buildable as ``config.model.name = name``."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"a model name is a non-empty string without ':' (':' marks import "
                         f"paths), got {name!r}")
    if name in MODELS:
        raise ValueError(f"model name {name!r} is taken by the zoo; zoo models: "
                         f"{', '.join(sorted(MODELS))}")
    if not callable(cls):
        raise ValueError(f"register({name!r}, ...) needs a model class, got {cls!r}")
    _REGISTERED[name] = cls


def _import_path(name: str):
    """The object at ``"pkg.module:Attr"`` (ValueError saying what could not be found)."""
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ValueError(f"model import path {name!r} must look like 'pkg.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"model {name!r}: cannot import module {module_name!r} ({e}); is its "
                         "folder on sys.path (PYTHONPATH)?") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in vars(module) if not n.startswith("_"))
            raise ValueError(f"model {name!r}: module {module_name!r} has no attribute "
                             f"{attr!r}; it defines {public}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"model {name!r} is not a class or function, got {obj!r}")
    return obj


def get(name: str):
    """The ``Model`` class of ``name``: a zoo or registered name, or an import path
    ``"pkg.module:Class"`` (ValueError listing valid names if unknown)."""
    if not isinstance(name, str):
        raise ValueError(f"a model name is a string, got {name!r}; valid models: "
                         f"{', '.join(names())}")
    if name in _REGISTERED:
        return _REGISTERED[name]
    if ":" in name:
        return _import_path(name)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(names())} (or "
                         "an import path 'pkg.module:Class', or bnn_jax.models.register)")
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

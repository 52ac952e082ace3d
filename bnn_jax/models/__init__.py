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
    "quicknet": "quicknet",
    "quicknet_small": "variants.quicknet_small",
    "quicknet_large": "variants.quicknet_large",
    "resnet_e": "resnet_e",
    "binary_resnet_e18": "variants.binary_resnet_e18",
    "birealnet": "variants.birealnet",
    "alexnet": "alexnet",
    "binary_alexnet": "variants.binary_alexnet",
    "xnornet": "variants.xnornet",
    "dorefanet": "variants.dorefanet",
    "densenet": "densenet",
    "binary_densenet28": "variants.binary_densenet28",
    "binary_densenet37": "variants.binary_densenet37",
    "binary_densenet37_dilated": "variants.binary_densenet37_dilated",
    "binary_densenet45": "variants.binary_densenet45",
    "meliusnet": "meliusnet",
    "meliusnet22": "variants.meliusnet22",
    "real_to_binary": "real_to_binary",
    "real_to_binary_net": "variants.real_to_binary_net",
    "pokebnn": "pokebnn",
    "pokebnn_0.5x": "variants.pokebnn_0_5x",
    "pokebnn_1.0x": "variants.pokebnn_1_0x",
    "pokebnn_2.0x": "variants.pokebnn_2_0x",
    "resnet_cifar": "resnet_cifar",
    "resnet20": "variants.resnet20",
    "resnet20_bireal": "variants.resnet20_bireal",
    "resnet18_cifar": "variants.resnet18_cifar",
    "vgg_small": "variants.vgg_small",
    "resnet_imagenet": "resnet_imagenet",
    "irnet_resnet18": "variants.irnet_resnet18",
    "irnet_resnet34": "variants.irnet_resnet34",
    "xnor_resnet18": "variants.xnor_resnet18",
    "bwn_resnet18": "variants.bwn_resnet18",
    "bireal_resnet18": "variants.bireal_resnet18",
    "bireal_resnet34": "variants.bireal_resnet34",
    "resnet18": "variants.resnet18",
    "resnet50": "variants.resnet50",
    "resnet50_int8": "variants.resnet50_int8",
    "reactnet": "reactnet",
    "reactnet_a": "variants.reactnet_a",
    "llama": "llama",
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

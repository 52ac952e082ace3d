"""The model zoo by name: ``build(config.model, rngs=..., **ds.spec)``.

Each model module exports ``Model``, an NNX module constructed as
``Model(rngs=..., <data-spec keys it needs>, **config_fields)``. The data spec is what the
dataset says (``ds.spec``): image models take ``num_classes`` and ``input_shape``, language
models ``vocab_size`` and ``max_len``, sequence classifiers also ``num_labels``; ``build``
passes each constructor the spec keys its signature names and ignores the rest, so one call
builds any model for any dataset that supplies what it needs. The task decides how a model is
called (``bnn_jax.tasks``); the loop feeds quantizer schedules through
``bnn_jax.nn.quant_params``. Modules are imported only when their model is built, so the zoo
costs nothing to list.

Intermediate features for distillation: a model records them with
``self.sow(nnx.Intermediate, "<name>", value, capture_noop=True)``; the loop reads them (only
when a distillation term asks) through ``nnx.capture`` under their module path, e.g.
``blocks/0/hidden`` or ``blocks/0/attn/q``.

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
    "conv_denoiser": "conv_denoiser",
    "unet": "unet",
    "encoder_decoder": "encoder_decoder",
    "llama": "llama",
    "opt": "opt",
    "text_encoder": "text_encoder",
    "bart": "bart",
    "mbart": "mbart",
    "bert": "bert",
    "vit": "vit",
    "vit_tiny": "variants.vit_tiny",
    "vit_small": "variants.vit_small",
    "vit_base": "variants.vit_base",
    "deit_tiny": "variants.deit_tiny",
    "deit_small": "variants.deit_small",
    "deit_base": "variants.deit_base",
    "deit_tiny_distilled": "variants.deit_tiny_distilled",
    "deit_small_distilled": "variants.deit_small_distilled",
    "deit_base_distilled": "variants.deit_base_distilled",
    "swin": "swin",
    "swin_tiny": "variants.swin_tiny",
    "swin_small": "variants.swin_small",
    "pvt_v2": "pvt",
    "pvt_v2_b0": "variants.pvt_v2_b0",
    "pvt_v2_b1": "variants.pvt_v2_b1",
    "pvt_v2_b2": "variants.pvt_v2_b2",
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


# What datasets say about themselves (``ds.spec``): never config fields of a model.
SPEC_KEYS = ("input_shape", "max_len", "num_classes", "num_labels", "vocab_size")


def _parameters(name: str) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(get(name).__init__).parameters)


def fields(name: str) -> list[str]:
    """The config fields ``name`` accepts (its constructor's keyword parameters)."""
    skip = {"self", "rngs", *SPEC_KEYS}
    return sorted(p for p in _parameters(name) if p not in skip)


def spec_keys(name: str) -> list[str]:
    """The data-spec keys the constructor of ``name`` takes."""
    return sorted(k for k in _parameters(name) if k in SPEC_KEYS)


def check_spec(name: str, spec: dict[str, Any]) -> None:
    """The data spec gives every key the model needs (ValueError naming the missing ones)."""
    params = _parameters(name)
    missing = [k for k in spec_keys(name) if k not in spec
               and params[k].default is inspect.Parameter.empty]
    if missing:
        raise ValueError(f"model {name!r} needs {missing} from the dataset, whose spec gives "
                         f"{sorted(spec)}; pick a dataset for this model's task")


def validate(cfg: Any) -> None:
    """Reject an unknown model or field before anything is built or compiled."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    valid = fields(name)
    unknown = sorted(set(cfg) - set(valid))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in config.model for model {name!r}; "
                         f"valid fields: {valid}")


def build(cfg: Any, *, rngs, **spec: Any) -> Any:
    """Construct the model named by ``cfg.name`` from its fields and the data ``spec``."""
    validate(cfg)
    cfg = dict(cfg)
    name = cfg.pop("name")
    check_spec(name, spec)
    given = {k: spec[k] for k in spec_keys(name) if k in spec}
    if "input_shape" in given:
        given["input_shape"] = tuple(given["input_shape"])
    return get(name)(rngs=rngs, **given, **cfg)

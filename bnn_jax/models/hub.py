"""Import pretrained Hugging Face checkpoints from a local directory (never downloaded).

A model directory holds ``config.json`` and its weights as ``*.safetensors`` (one file, or the
shards listed by ``model.safetensors.index.json``) with PyTorch parameter names. A *family*
says how to read it: which ``config.json`` ``model_type`` values it covers, which bnn_jax model
it builds and from which config keys (:attr:`Family.config`), and one explicit rule per
parameter: a regex on the PyTorch name, the path of the NNX parameter it fills, and whether the
matrix is transposed (``torch.nn.Linear`` stores ``[out, in]``, :class:`bnn_jax.nn.QuantLinear`
``[in, out]``). A tensor no rule claims, a model parameter no tensor fills, or a shape that does
not match the model built from ``config.json`` is an error before any array is copied. New
architectures add a ``Family`` to :data:`FAMILIES`.

    model = hub.load("path/to/llama", kernel_quantizer="bitnet_weight")
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx


@dataclasses.dataclass(frozen=True)
class Rule:
    """PyTorch name regex -> NNX parameter path (``\\1`` groups allowed), transposed or not."""

    pattern: str
    target: str
    transpose: bool = False


@dataclasses.dataclass(frozen=True)
class Family:
    """How one architecture's Hugging Face checkpoints map onto a bnn_jax model."""

    model: str                                   # name in bnn_jax.models.MODELS
    model_types: tuple[str, ...]                 # config.json "model_type" values
    config: dict[str, str]                       # our constructor field -> config.json key
    rules: tuple[Rule, ...]
    ignore: tuple[str, ...] = ()                 # regexes of tensors that carry nothing we use
    check_config: Callable[[dict], None] | None = None
    derived: Callable[[dict], dict] | None = None  # extra fields computed from config.json
    tied: tuple[str, ...] = ()       # targets a model with tied weights lacks (then dropped)


def _check_llama(cfg: dict) -> None:
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"llama import: hidden_act={act!r} is not supported (SwiGLU uses silu)")
    # transformers < 5 writes rope_scaling (null for plain RoPE); 5 writes rope_parameters.
    for key in ("rope_scaling", "rope_parameters"):
        rope = cfg.get(key) or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise ValueError(f"llama import: {key}={rope!r} is not supported; only the plain "
                             "rotary embedding (rope_type 'default')")


def _llama_derived(cfg: dict) -> dict:
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta")
    return {} if theta is None else {"rope_theta": theta}


LLAMA = Family(
    model="llama",
    model_types=("llama",),
    config={"vocab_size": "vocab_size", "max_len": "max_position_embeddings",
            "hidden": "hidden_size", "intermediate": "intermediate_size",
            "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
            "num_kv_heads": "num_key_value_heads", "head_dim": "head_dim",
            "rope_theta": "rope_theta", "norm_eps": "rms_norm_eps",
            "tie_embeddings": "tie_word_embeddings", "attention_bias": "attention_bias",
            "mlp_bias": "mlp_bias"},
    rules=(
        Rule(r"model\.embed_tokens\.weight", "embed_tokens/embedding"),
        Rule(r"model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.weight",
             r"layers/\1/self_attn/\2_proj/kernel", transpose=True),
        Rule(r"model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.bias",
             r"layers/\1/self_attn/\2_proj/bias"),
        Rule(r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight",
             r"layers/\1/mlp/\2_proj/kernel", transpose=True),
        Rule(r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.bias",
             r"layers/\1/mlp/\2_proj/bias"),
        Rule(r"model\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight",
             r"layers/\1/\2/scale"),
        Rule(r"model\.norm\.weight", "norm/scale"),
        Rule(r"lm_head\.weight", "lm_head/kernel", transpose=True),
    ),
    ignore=(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", r"model\.rotary_emb\..*"),
    check_config=_check_llama,
    derived=_llama_derived,
    tied=("lm_head/kernel",),  # some tied checkpoints still store lm_head.weight
)

FAMILIES: dict[str, Family] = {"llama": LLAMA}


def family_of(cfg: dict) -> Family:
    """The family whose ``model_types`` holds ``cfg["model_type"]``."""
    model_type = cfg.get("model_type")
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    valid = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise ValueError(f"config.json has model_type={model_type!r}; importable model types: "
                     f"{', '.join(valid)}")


def read_config(directory: str | pathlib.Path) -> dict:
    """``config.json`` of a local model directory (a clear error if it is not there)."""
    path = pathlib.Path(directory).expanduser()
    if not (path / "config.json").exists():
        raise ValueError(
            f"no config.json in {str(path)!r}: place the Hugging Face model directory there "
            "(config.json and its *.safetensors weights, e.g. from `huggingface-cli download "
            "MODEL --local-dir DIR` on a machine with internet); nothing is downloaded")
    return json.loads((path / "config.json").read_text(encoding="utf-8"))


def model_fields(cfg: dict, family: Family | None = None) -> dict[str, Any]:
    """Constructor fields of the family's model read from ``config.json`` (absent keys keep
    the model's defaults; ``null`` counts as absent)."""
    family = family or family_of(cfg)
    if family.check_config is not None:
        family.check_config(cfg)
    fields = {ours: cfg[theirs] for ours, theirs in family.config.items()
              if cfg.get(theirs) is not None}
    if family.derived is not None:
        fields.update(family.derived(cfg))
    return fields


def read_safetensors(directory: str | pathlib.Path) -> dict[str, np.ndarray]:
    """All tensors of the directory's ``*.safetensors`` files (shards included), by name."""
    from safetensors.numpy import load_file

    path = pathlib.Path(directory).expanduser()
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [f for f in files if not (path / f).exists()]
        if missing:
            raise ValueError(f"{str(index)!r} lists shards missing from the directory: {missing}")
        files = [path / f for f in files]
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors weights in {str(path)!r}: place the model's "
                         "model.safetensors (or its shards and model.safetensors.index.json) "
                         "there; PyTorch .bin checkpoints must be converted to safetensors")
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        tensors.update(load_file(str(f)))
    return tensors


def map_tensors(tensors: dict[str, np.ndarray], family: Family) -> dict[str, np.ndarray]:
    """NNX parameter path -> array, by the family's rules; unclaimed tensors are errors."""
    mapped, unknown = {}, []
    for name, value in tensors.items():
        if any(re.fullmatch(p, name) for p in family.ignore):
            continue
        for rule in family.rules:
            m = re.fullmatch(rule.pattern, name)
            if m:
                mapped[m.expand(rule.target)] = (name, value.T if rule.transpose else value)
                break
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"checkpoint tensors no {family.model} rule maps: {sorted(unknown)}")
    return mapped


def load_into(model: nnx.Module, directory: str | pathlib.Path,
              family: Family | None = None) -> nnx.Module:
    """Copy a checkpoint's weights into ``model`` (built to match it); returns ``model``."""
    family = family or family_of(read_config(directory))
    return _fill(model, map_tensors(read_safetensors(directory), family), family)


def load(directory: str | pathlib.Path, *, rngs: nnx.Rngs | None = None,
         **fields) -> nnx.Module:
    """Build the bnn_jax model ``config.json`` describes (``fields`` add or override
    constructor fields, e.g. quantizers) and fill it with the directory's weights."""
    from bnn_jax import models

    cfg = read_config(directory)
    family = family_of(cfg)
    mapped = map_tensors(read_safetensors(directory), family)
    kwargs = {**model_fields(cfg, family), **fields}
    cls = models.get(family.model)
    # Shapes are checked on the abstract model first: a mismatch costs no initialization.
    _check(nnx.eval_shape(lambda: cls(rngs=nnx.Rngs(0), **kwargs)), mapped, family)
    return _fill(cls(rngs=rngs or nnx.Rngs(0), **kwargs), mapped, family)


def _params(model: nnx.Module) -> dict[str, Any]:
    return {"/".join(map(str, path)): var
            for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _check(model: nnx.Module, mapped: dict, family: Family) -> dict[str, Any]:
    """Every rule target of the model filled by a tensor of its exact shape, or a ValueError."""
    params = _params(model)
    for p in family.tied:
        if p not in params:
            mapped.pop(p, None)
    absent = sorted(p for p in mapped if p not in params)
    if absent:
        raise ValueError(f"checkpoint tensors {[mapped[p][0] for p in absent]} map to "
                         f"{absent}, which the {family.model} model does not have (does "
                         "config.json match the weights?)")
    bad = [f"{mapped[p][0]}: checkpoint {tuple(mapped[p][1].shape)} (as {p}), model "
           f"{tuple(params[p].shape)}" for p in sorted(mapped)
           if tuple(mapped[p][1].shape) != tuple(params[p].shape)]
    if bad:
        raise ValueError("checkpoint shapes do not match the model built from config.json: "
                         + "; ".join(bad))
    targets = {p for p in params if any(_may_target(r, p) for r in family.rules)}
    unfilled = sorted(targets - set(mapped))
    if unfilled:
        raise ValueError(f"the checkpoint has no tensor for model parameters {unfilled}")
    return params


def _fill(model: nnx.Module, mapped: dict, family: Family) -> nnx.Module:
    params = _check(model, mapped, family)
    for p, (_, value) in mapped.items():
        var = params[p]
        var.set_value(jnp.asarray(value, dtype=var.get_value().dtype))
    # Learned quantizer arrays derived from the kernel at construction (e.g. a per-channel
    # scale) must follow the loaded kernel, not the random one.
    for _, node in nnx.iter_graph(model):
        q = getattr(node, "kernel_quantizer", None) if isinstance(node, nnx.Module) else None
        if q is not None and getattr(q, "learned", ()):
            node._create_learned("kernel", q, node.latent_kernel())
    return model


def _may_target(rule: Rule, path: str) -> bool:
    # A rule's target template as a regex over model paths (\1 etc. match one path element).
    pattern = re.sub(r"\\\d", r"[^/]+", rule.target.replace(".", r"\."))
    return re.fullmatch(pattern, path) is not None

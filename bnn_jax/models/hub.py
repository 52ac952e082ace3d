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
import warnings
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx


@dataclasses.dataclass(frozen=True)
class Rule:
    """PyTorch name regex -> NNX parameter path (``\\1`` groups allowed), transposed or not
    (``True``: all axes reversed, a linear weight; a tuple: that axis order, e.g.
    :data:`CONV` for a ``torch.nn.Conv2d`` weight)."""

    pattern: str
    target: str
    transpose: bool | tuple[int, ...] = False


#: ``torch.nn.Conv2d`` ``[out, in, kh, kw]`` -> Flax ``[kh, kw, in, out]``.
CONV = (2, 3, 1, 0)


def _oriented(rule: Rule, value: np.ndarray) -> np.ndarray:
    if rule.transpose is True:
        return value.T
    return np.transpose(value, rule.transpose) if rule.transpose else value


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
    # Regexes of task-head parameter paths: a head the model lacks is dropped from the
    # checkpoint, a head the checkpoint lacks keeps its fresh initialization (with a warning),
    # so e.g. a pretraining checkpoint loads under a new classification head.
    heads: tuple[str, ...] = ()
    # Regexes of targets a model built with other fields may lack: their tensors are dropped
    # (e.g. the query/key biases, which OFQ's reparameterized W_qk cannot hold).
    droppable: tuple[str, ...] = ()


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

def _linear(src: str, dst: str) -> tuple[Rule, Rule]:
    """A ``torch.nn.Linear``'s weight (transposed) and bias."""
    return (Rule(src + r"\.weight", dst + "/kernel", transpose=True),
            Rule(src + r"\.bias", dst + "/bias"))


def _norm(src: str, dst: str) -> tuple[Rule, Rule]:
    """A ``torch.nn.LayerNorm``'s weight (our ``scale``) and bias."""
    return Rule(src + r"\.weight", dst + "/scale"), Rule(src + r"\.bias", dst + "/bias")


def _check_act(key: str, valid: tuple[str, ...]) -> Callable[[dict], None]:
    def check(cfg: dict) -> None:
        act = cfg.get(key, "gelu")
        if act not in valid:
            raise ValueError(f"{cfg.get('model_type')} import: {key}={act!r} is not supported; "
                             f"supported: {list(valid)}")
        if cfg.get("tie_word_embeddings", True) is False:
            raise ValueError(f"{cfg.get('model_type')} import: tie_word_embeddings=false is not "
                             "supported (the output layer is the word embedding table)")
        pos = cfg.get("position_embedding_type", "absolute")
        if pos not in (None, "absolute"):
            raise ValueError(f"bert import: position_embedding_type={pos!r} is not supported; "
                             "only 'absolute'")
    return check


_ACTS = ("gelu", "relu", "gelu_new")
_PROJ = {"q": "query", "k": "key", "v": "value", "out": "out"}
_SEQ = r"model\.(encoder|decoder)"
_SEQ_LAYER = _SEQ + r"\.layers\.(\d+)"


def _bart_rules() -> tuple[Rule, ...]:
    rules = [Rule(r"model\.shared\.weight", "shared/embedding"),
             Rule(_SEQ + r"\.embed_positions\.weight", r"\1/embed_positions/embedding"),
             *_norm(_SEQ + r"\.layernorm_embedding", r"\1/layernorm_embedding"),
             *_norm(_SEQ + r"\.layer_norm", r"\1/layer_norm"),
             Rule(r"final_logits_bias", "final_logits_bias")]
    for theirs, ours in _PROJ.items():
        rules += _linear(_SEQ_LAYER + rf"\.(self_attn|encoder_attn)\.{theirs}_proj",
                         rf"\1/layers/\2/\3/{ours}")
    for fc in ("fc1", "fc2"):
        rules += _linear(_SEQ_LAYER + rf"\.{fc}", rf"\1/layers/\2/mlp/{fc}")
    rules += _norm(_SEQ_LAYER + r"\.(self_attn_layer_norm|encoder_attn_layer_norm|"
                                r"final_layer_norm)", r"\1/layers/\2/\3")
    return tuple(rules)


_BART_CONFIG = {"vocab_size": "vocab_size", "max_len": "max_position_embeddings",
                "hidden": "d_model", "encoder_layers": "encoder_layers",
                "decoder_layers": "decoder_layers", "encoder_heads": "encoder_attention_heads",
                "decoder_heads": "decoder_attention_heads", "encoder_ffn": "encoder_ffn_dim",
                "decoder_ffn": "decoder_ffn_dim", "act": "activation_function"}
# The token tables of encoder and decoder and the LM head are the tied `shared` table.
_BART_TIED = (_SEQ + r"\.embed_tokens\.weight", r"lm_head\.weight")


def _scale_embedding(cfg: dict) -> dict:
    # Hugging Face's BartConfig and MBartConfig both default to False.
    return {"scale_embedding": bool(cfg.get("scale_embedding", False))}


BART = Family(model="bart", model_types=("bart",), config=_BART_CONFIG, rules=_bart_rules(),
              ignore=_BART_TIED, check_config=_check_act("activation_function", _ACTS),
              derived=_scale_embedding)
MBART = dataclasses.replace(BART, model="mbart", model_types=("mbart",))

_BERT = r"(?:bert\.)?"
_BERT_LAYER = _BERT + r"encoder\.layer\.(\d+)"
_BERT_HEADS = {"BertForMaskedLM": "mlm", "BertForPreTraining": "pretraining",
               "BertForSequenceClassification": "classification"}


def _bert_derived(cfg: dict) -> dict:
    arch = (cfg.get("architectures") or [None])[0]
    if arch not in _BERT_HEADS:
        raise ValueError(f"bert import: architectures={cfg.get('architectures')!r}; "
                         f"importable: {sorted(_BERT_HEADS)}")
    fields = {"head": _BERT_HEADS[arch]}
    if fields["head"] == "classification":
        fields["num_labels"] = len(cfg.get("id2label") or {}) or cfg.get("num_labels", 2)
    return fields


BERT = Family(
    model="bert",
    model_types=("bert",),
    config={"vocab_size": "vocab_size", "max_len": "max_position_embeddings",
            "hidden": "hidden_size", "intermediate": "intermediate_size",
            "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
            "type_vocab_size": "type_vocab_size", "act": "hidden_act",
            "norm_eps": "layer_norm_eps"},
    rules=(
        Rule(_BERT + r"embeddings\.word_embeddings\.weight",
             "embeddings/word_embeddings/embedding"),
        Rule(_BERT + r"embeddings\.(position|token_type)_embeddings\.weight",
             r"embeddings/\1_embeddings/embedding"),
        *_norm(_BERT + r"embeddings\.LayerNorm", "embeddings/LayerNorm"),
        *_linear(_BERT_LAYER + r"\.attention\.self\.(query|key|value)",
                 r"layers/\1/attention/\2"),
        *_linear(_BERT_LAYER + r"\.attention\.output\.dense", r"layers/\1/attention/out"),
        *_norm(_BERT_LAYER + r"\.attention\.output\.LayerNorm", r"layers/\1/attention_norm"),
        *_linear(_BERT_LAYER + r"\.intermediate\.dense", r"layers/\1/intermediate"),
        *_linear(_BERT_LAYER + r"\.output\.dense", r"layers/\1/output"),
        *_norm(_BERT_LAYER + r"\.output\.LayerNorm", r"layers/\1/output_norm"),
        *_linear(_BERT + r"pooler\.dense", "pooler"),
        *_linear(r"cls\.predictions\.transform\.dense", "mlm_transform"),
        *_norm(r"cls\.predictions\.transform\.LayerNorm", "mlm_norm"),
        Rule(r"cls\.predictions\.bias", "mlm_bias"),
        *_linear(r"cls\.seq_relationship", "nsp"),
        *_linear(r"classifier", "classifier"),
    ),
    # The MLM decoder is the tied word table and cls.predictions.bias.
    ignore=(r"cls\.predictions\.decoder\.(weight|bias)", _BERT + r"embeddings\.position_ids"),
    check_config=_check_act("hidden_act", _ACTS),
    derived=_bert_derived,
    heads=(r"pooler/.*", r"classifier/.*", r"mlm_.*", r"nsp/.*"),
)


def _image_fields(cfg: dict) -> dict:
    size = cfg.get("image_size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return {"num_classes": len(cfg.get("id2label") or {}) or cfg.get("num_labels", 2),
            "input_shape": (h, w, cfg.get("num_channels", 3))}


def _check_vision(cfg: dict) -> None:
    kind = cfg.get("model_type")
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{kind} import: hidden_act={cfg.get('hidden_act')!r} is not "
                         "supported; only 'gelu' (exact)")
    if cfg.get("qkv_bias", True) is not True:
        raise ValueError(f"{kind} import: qkv_bias=false is not supported")
    if kind == "swin" and cfg.get("use_absolute_embeddings"):
        raise ValueError("swin import: use_absolute_embeddings=true is not supported")
    arch = (cfg.get("architectures") or [None])[0]
    valid = _VISION_ARCHS[kind]
    if arch not in valid:
        raise ValueError(f"{kind} import: architectures={cfg.get('architectures')!r}; "
                         f"importable: {sorted(valid)}")


_VISION_ARCHS = {"vit": ("ViTForImageClassification",),
                 "deit": ("DeiTForImageClassificationWithTeacher",),
                 "swin": ("SwinForImageClassification",)}


def _vit_rules(prefix: str) -> tuple[Rule, ...]:
    layer = prefix + r"\.encoder\.layer\.(\d+)"
    rules = [Rule(prefix + r"\.embeddings\.cls_token", "cls_token"),
             Rule(prefix + r"\.embeddings\.distillation_token", "dist_token"),
             Rule(prefix + r"\.embeddings\.position_embeddings", "pos_embed"),
             Rule(prefix + r"\.embeddings\.patch_embeddings\.projection\.weight",
                  "patch_embed/kernel", transpose=CONV),
             Rule(prefix + r"\.embeddings\.patch_embeddings\.projection\.bias",
                  "patch_embed/bias"),
             *_linear(layer + r"\.attention\.attention\.(query|key|value)",
                      r"blocks/\1/attn/\2"),
             *_linear(layer + r"\.attention\.output\.dense", r"blocks/\1/attn/out"),
             *_linear(layer + r"\.intermediate\.dense", r"blocks/\1/mlp/fc1"),
             *_linear(layer + r"\.output\.dense", r"blocks/\1/mlp/fc2"),
             *_norm(layer + r"\.layernorm_before", r"blocks/\1/ln1"),
             *_norm(layer + r"\.layernorm_after", r"blocks/\1/ln2"),
             *_norm(prefix + r"\.layernorm", "norm"),
             *_linear(r"(?:classifier|cls_classifier)", "head"),
             *_linear(r"distillation_classifier", "head_dist")]
    return tuple(rules)


_VIT_CONFIG = {"patch_size": "patch_size", "hidden": "hidden_size",
               "depth": "num_hidden_layers", "num_heads": "num_attention_heads",
               "mlp_dim": "intermediate_size", "norm_eps": "layer_norm_eps"}

VIT = Family(model="vit", model_types=("vit",), config=_VIT_CONFIG, rules=_vit_rules("vit"),
             ignore=(r"vit\.pooler\..*",), check_config=_check_vision, derived=_image_fields,
             droppable=(r"blocks/\d+/attn/(query|key)/bias",))
DEIT = Family(model="vit", model_types=("deit",), config=_VIT_CONFIG,
              rules=_vit_rules("deit"), ignore=(r"deit\.pooler\..*",),
              check_config=_check_vision,
              derived=lambda cfg: {**_image_fields(cfg), "distilled": True},
              droppable=VIT.droppable)

_SWIN_BLOCK = r"swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)"
SWIN = Family(
    model="swin",
    model_types=("swin",),
    config={"patch_size": "patch_size", "embed_dim": "embed_dim", "depths": "depths",
            "num_heads": "num_heads", "window_size": "window_size", "mlp_ratio": "mlp_ratio",
            "norm_eps": "layer_norm_eps"},
    rules=(
        Rule(r"swin\.embeddings\.patch_embeddings\.projection\.weight", "patch_embed/kernel",
             transpose=CONV),
        Rule(r"swin\.embeddings\.patch_embeddings\.projection\.bias", "patch_embed/bias"),
        *_norm(r"swin\.embeddings\.norm", "embed_norm"),
        *_linear(_SWIN_BLOCK + r"\.attention\.self\.(query|key|value)",
                 r"stages/\1/blocks/\2/attn/\3"),
        Rule(_SWIN_BLOCK + r"\.attention\.self\.relative_position_bias_table",
             r"stages/\1/blocks/\2/rel_bias_table"),
        *_linear(_SWIN_BLOCK + r"\.attention\.output\.dense", r"stages/\1/blocks/\2/attn/out"),
        *_linear(_SWIN_BLOCK + r"\.intermediate\.dense", r"stages/\1/blocks/\2/mlp/fc1"),
        *_linear(_SWIN_BLOCK + r"\.output\.dense", r"stages/\1/blocks/\2/mlp/fc2"),
        *_norm(_SWIN_BLOCK + r"\.layernorm_before", r"stages/\1/blocks/\2/ln1"),
        *_norm(_SWIN_BLOCK + r"\.layernorm_after", r"stages/\1/blocks/\2/ln2"),
        *_norm(r"swin\.encoder\.layers\.(\d+)\.downsample\.norm", r"stages/\1/downsample/norm"),
        Rule(r"swin\.encoder\.layers\.(\d+)\.downsample\.reduction\.weight",
             r"stages/\1/downsample/reduction/kernel", transpose=True),
        *_norm(r"swin\.layernorm", "norm"),
        *_linear(r"classifier", "head"),
    ),
    ignore=(r".*relative_position_index", r"swin\.pooler\..*"),
    check_config=_check_vision,
    derived=_image_fields,
    droppable=(r"stages/\d+/blocks/\d+/attn/(query|key)/bias",),
)

def _check_opt(cfg: dict) -> None:
    if cfg.get("activation_function", "relu") != "relu":
        raise ValueError(f"opt import: activation_function={cfg['activation_function']!r} is "
                         "not supported; only 'relu'")
    if not cfg.get("do_layer_norm_before", True):
        raise ValueError("opt import: do_layer_norm_before=false (OPT-350M's post-LN) is not "
                         "supported")
    hidden = cfg.get("hidden_size")
    if cfg.get("word_embed_proj_dim", hidden) != hidden:
        raise ValueError(f"opt import: word_embed_proj_dim={cfg['word_embed_proj_dim']} != "
                         f"hidden_size={hidden} (project_in/out) is not supported")
    if cfg.get("_remove_final_layer_norm", False):
        raise ValueError("opt import: _remove_final_layer_norm=true is not supported")


_OPT = r"model\.decoder"
_OPT_LAYER = _OPT + r"\.layers\.(\d+)"
OPT = Family(
    model="opt",
    model_types=("opt",),
    config={"vocab_size": "vocab_size", "max_len": "max_position_embeddings",
            "hidden": "hidden_size", "ffn": "ffn_dim", "num_layers": "num_hidden_layers",
            "num_heads": "num_attention_heads", "bias": "enable_bias"},
    rules=(
        Rule(_OPT + r"\.embed_tokens\.weight", "embed_tokens/embedding"),
        Rule(_OPT + r"\.embed_positions\.weight", "embed_positions/embedding"),
        *_linear(_OPT_LAYER + r"\.self_attn\.([qkv])_proj", r"layers/\1/self_attn/\2_proj"),
        *_linear(_OPT_LAYER + r"\.self_attn\.out_proj", r"layers/\1/self_attn/o_proj"),
        *_linear(_OPT_LAYER + r"\.(fc1|fc2)", r"layers/\1/\2"),
        *_norm(_OPT_LAYER + r"\.(self_attn_layer_norm|final_layer_norm)", r"layers/\1/\2"),
        *_norm(_OPT + r"\.final_layer_norm", "norm"),
    ),
    ignore=(r"lm_head\.weight",),  # tied to the token embedding
    check_config=_check_opt,
)

FAMILIES: dict[str, Family] = {"llama": LLAMA, "bart": BART, "mbart": MBART, "bert": BERT,
                               "vit": VIT, "deit": DEIT, "swin": SWIN, "opt": OPT}


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
                mapped[m.expand(rule.target)] = (name, _oriented(rule, value))
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
    return fill(model, map_tensors(read_safetensors(directory), family), family)


def load(directory: str | pathlib.Path, *, rngs: nnx.Rngs | None = None,
         **fields) -> nnx.Module:
    """Build the bnn_jax model ``config.json`` describes (``fields`` add or override
    constructor fields, e.g. quantizers) and fill it with the directory's weights."""
    cfg = read_config(directory)
    family = family_of(cfg)
    mapped = map_tensors(read_safetensors(directory), family)
    kwargs = {**model_fields(cfg, family), **fields}
    return build(family, mapped, kwargs, rngs=rngs)


def build(family: Family, mapped: dict, kwargs: dict[str, Any], *,
          rngs: nnx.Rngs | None = None) -> nnx.Module:
    """The family's model built with ``kwargs`` and filled with ``mapped`` (of
    :func:`map_tensors`); shapes are checked on the abstract model first, so a mismatch costs
    no initialization."""
    from bnn_jax import models

    cls = models.get(family.model)
    _check(nnx.eval_shape(lambda: cls(rngs=nnx.Rngs(0), **kwargs)), mapped, family)
    return fill(cls(rngs=rngs or nnx.Rngs(0), **kwargs), mapped, family)


def _params(model: nnx.Module) -> dict[str, Any]:
    return {"/".join(map(str, path)): var
            for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _check(model: nnx.Module, mapped: dict, family: Family) -> dict[str, Any]:
    """Every rule target of the model filled by a tensor of its exact shape, or a ValueError."""
    params = _params(model)
    for p in family.tied:
        if p not in params:
            mapped.pop(p, None)
    for p in [p for p in mapped if p not in params and (
            _is_head(family, p) or any(re.fullmatch(d, p) for d in family.droppable))]:
        mapped.pop(p)
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
    unfilled = sorted(p for p in targets - set(mapped) if not _is_head(family, p))
    if unfilled:
        raise ValueError(f"the checkpoint has no tensor for model parameters {unfilled}")
    return params


def _is_head(family: Family, path: str) -> bool:
    return any(re.fullmatch(h, path) for h in family.heads)


def fill(model: nnx.Module, mapped: dict, family: Family) -> nnx.Module:
    """Copy ``mapped`` (of :func:`map_tensors`) into ``model``, after :func:`_check`."""
    params = _check(model, mapped, family)
    fresh = sorted(p for p in params if _is_head(family, p) and p not in mapped)
    if fresh:
        warnings.warn(f"the checkpoint has no tensors for the task-head parameters {fresh}; "
                      "they keep their random initialization (train them before use)",
                      stacklevel=3)
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


def checkpoint_layers(directory: str | pathlib.Path) -> dict[str, int]:
    """Layer counts of a checkpoint by stack: ``{"encoder": 6, "decoder": 6}`` (BART/mBART)
    or ``{"layers": 12}`` (BERT), from its ``config.json``."""
    cfg = read_config(directory)
    family = family_of(cfg)
    keys = {"bart": ("encoder_layers", "decoder_layers"), "mbart": ("encoder_layers",
                                                                    "decoder_layers"),
            "bert": ("num_layers",)}.get(family.model)
    if keys is None:
        raise ValueError(f"checkpoint_layers: {family.model} checkpoints are not supported; "
                         "supported: bart, mbart, bert")
    fields = model_fields(cfg, family)
    return {k.split("_")[0] if k != "num_layers" else "layers": int(fields[k]) for k in keys}


def load_student(model: nnx.Module, directory: str | pathlib.Path, *,
                 layer_map: dict[str, list[int]] | None = None) -> nnx.Module:
    """Initialize a (smaller, quantized) student from a teacher checkpoint; returns ``model``.

    ``layer_map`` gives, per stack prefix (``"encoder/layers"``), the teacher layer each
    student layer copies (TBT's student initialization, ``run_summarization_no_trainer.py``
    lines 476-494). Position tables longer than the student's are cut to its rows: inputs of
    at most ``max_len`` tokens never read the others, so the student computes what the
    teacher's table would give.
    """
    family = family_of(read_config(directory))
    mapped = map_tensors(read_safetensors(directory), family)
    for prefix, teacher_of in (layer_map or {}).items():
        rx = re.compile(rf"{re.escape(prefix)}/(\d+)/(.*)")
        teacher = {}
        for p in [p for p in mapped if rx.fullmatch(p)]:
            m = rx.fullmatch(p)
            teacher[(int(m.group(1)), m.group(2))] = mapped.pop(p)
        have = sorted({i for i, _ in teacher})
        bad = [j for j in teacher_of if j not in have]
        if bad:
            raise ValueError(f"layer_map[{prefix!r}] = {list(teacher_of)} names teacher layers "
                             f"{bad}; the checkpoint has {prefix} {have}")
        for i, j in enumerate(teacher_of):
            for (k, rest), value in teacher.items():
                if k == j:
                    mapped[f"{prefix}/{i}/{rest}"] = value
    params = _params(model)
    for p, (name, value) in list(mapped.items()):
        if "position" in p and p in params and value.ndim == 2:
            rows = params[p].shape[0]
            if value.shape[0] > rows and value.shape[1:] == tuple(params[p].shape[1:]):
                mapped[p] = (name, value[:rows])
    return fill(model, mapped, family)

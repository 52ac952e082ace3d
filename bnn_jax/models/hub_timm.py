"""Import timm-named ViT / DeiT / Swin state dicts from one local file (never downloaded).

The file is a timm ``model.state_dict()`` saved without pickles, so that reading it needs no
torch: ``.safetensors`` (``safetensors.torch.save_file(model.state_dict(), path)``; timm's own
Hugging Face Hub weights are this file, ``model.safetensors``) or ``.npz``
(``numpy.savez(path, **{k: v.numpy() for k, v in model.state_dict().items()})``). A directory
stands for its ``model.safetensors``.

timm keeps an attention's query, key and value projections as one ``qkv`` linear whose output
rows are ``[q (all heads) | k | v]``: ``Attention.forward`` reshapes its output to
``(B, N, 3, heads, head_dim)`` (timm ``layers/attention.py``, ``WindowAttention`` alike in
``models/swin_transformer.py``). :func:`prepare` splits it into three linears, and renames
current timm Swin weights (the patch merging at the start of stage ``i >= 1``, the head as
``head.fc``) to the older layout (merging at the end of stage ``i - 1``, ``head``), the
inverse of timm's ``swin_transformer.checkpoint_filter_fn``; then one :class:`hub.Rule` per
name maps the tensors, with the checks of :mod:`bnn_jax.models.hub`. The model's fields are
read from the tensor shapes (:func:`vit_fields`, :func:`swin_fields`); a ViT's ``num_heads``
is not in them: it is given, or read from the ``architecture`` of a timm ``config.json``
beside the weights (``vit_small_patch16_224`` -> 6 heads).

    model = hub_timm.load("deit_small_distilled.safetensors")   # beside timm's config.json
    model = hub_timm.load("vit.npz", num_heads=3, kernel_quantizer="statsq")
"""

from __future__ import annotations

import json
import math
import pathlib
import re
from typing import Any

import numpy as np
from flax import nnx

from bnn_jax.models import hub
from bnn_jax.models.hub import CONV, Rule, _linear, _norm

#: timm's ViT / DeiT sizes (``vision_transformer.py`` / ``deit.py`` model functions): heads.
TIMM_HEADS = {"tiny": 3, "small": 6, "base": 12, "large": 16, "huge": 16}
_QKV = re.compile(r"(.*)\.attn\.qkv\.(weight|bias)")
_QUERY_KEY_BIAS = r"attn/(query|key)/bias"


_BLOCK = r"blocks\.(\d+)"
VIT = hub.Family(
    model="vit", model_types=(), config={},
    rules=(
        Rule(r"cls_token", "cls_token"), Rule(r"dist_token", "dist_token"),
        Rule(r"pos_embed", "pos_embed"),
        Rule(r"patch_embed\.proj\.weight", "patch_embed/kernel", transpose=CONV),
        Rule(r"patch_embed\.proj\.bias", "patch_embed/bias"),
        *_norm(_BLOCK + r"\.norm1", r"blocks/\1/ln1"),
        *_linear(_BLOCK + r"\.attn\.(query|key|value)", r"blocks/\1/attn/\2"),
        *_linear(_BLOCK + r"\.attn\.proj", r"blocks/\1/attn/out"),
        *_norm(_BLOCK + r"\.norm2", r"blocks/\1/ln2"),
        *_linear(_BLOCK + r"\.mlp\.(fc1|fc2)", r"blocks/\1/mlp/\2"),
        *_norm(r"norm", "norm"),
        *_linear(r"head", "head"), *_linear(r"head_dist", "head_dist"),
    ),
    droppable=(r"blocks/\d+/" + _QUERY_KEY_BIAS,))

_SWIN_BLOCK = r"layers\.(\d+)\.blocks\.(\d+)"
SWIN = hub.Family(
    model="swin", model_types=(), config={},
    rules=(
        Rule(r"patch_embed\.proj\.weight", "patch_embed/kernel", transpose=CONV),
        Rule(r"patch_embed\.proj\.bias", "patch_embed/bias"),
        *_norm(r"patch_embed\.norm", "embed_norm"),
        *_norm(_SWIN_BLOCK + r"\.norm1", r"stages/\1/blocks/\2/ln1"),
        *_linear(_SWIN_BLOCK + r"\.attn\.(query|key|value)", r"stages/\1/blocks/\2/attn/\3"),
        Rule(_SWIN_BLOCK + r"\.attn\.relative_position_bias_table",
             r"stages/\1/blocks/\2/rel_bias_table"),
        *_linear(_SWIN_BLOCK + r"\.attn\.proj", r"stages/\1/blocks/\2/attn/out"),
        *_norm(_SWIN_BLOCK + r"\.norm2", r"stages/\1/blocks/\2/ln2"),
        *_linear(_SWIN_BLOCK + r"\.mlp\.(fc1|fc2)", r"stages/\1/blocks/\2/mlp/\3"),
        *_norm(r"layers\.(\d+)\.downsample\.norm", r"stages/\1/downsample/norm"),
        Rule(r"layers\.(\d+)\.downsample\.reduction\.weight",
             r"stages/\1/downsample/reduction/kernel", transpose=True),
        *_norm(r"norm", "norm"),
        *_linear(r"head", "head"),
    ),
    # Buffers timm rebuilds from the window size (older checkpoints saved them).
    ignore=(r".*\.relative_position_index", r".*\.attn_mask"),
    droppable=(r"stages/\d+/blocks/\d+/" + _QUERY_KEY_BIAS,))

FAMILIES = {"vit": VIT, "swin": SWIN}


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` or ``.npz`` state dict (a directory: its
    ``model.safetensors``), by name."""
    path = pathlib.Path(path).expanduser()
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.exists():
        raise ValueError(f"no timm weights at {str(path)!r}: place the state dict there as "
                         ".safetensors or .npz; nothing is downloaded")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return dict(load_file(str(path)))
    if path.suffix == ".npz":
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    raise ValueError(
        f"{str(path)!r}: timm weights are read from .safetensors or .npz (no torch here); "
        "convert a .pth/.bin once where torch is installed: `safetensors.torch.save_file("
        "torch.load(path, map_location='cpu'), 'model.safetensors')`")


def family_of(tensors: dict[str, Any]) -> hub.Family:
    """:data:`VIT` (a ``cls_token``) or :data:`SWIN` (``layers.0.blocks.0...``)."""
    if "cls_token" in tensors:
        return VIT
    if any(k.startswith("layers.0.blocks.0.") for k in tensors):
        return SWIN
    raise ValueError("the state dict is neither a timm ViT/DeiT (no 'cls_token') nor a timm "
                     f"Swin (no 'layers.0.blocks.0.*'); its first names: {sorted(tensors)[:8]}")


def prepare(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Fused ``qkv`` split into ``query``/``key``/``value``; current-timm Swin names
    (``head.fc``, merging at the start of a stage) renamed to the older layout."""
    out: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        m = _QKV.fullmatch(name)
        if m is None:
            out[name] = np.asarray(value)
            continue
        if value.shape[0] % 3:
            raise ValueError(f"{name} has {value.shape[0]} rows; a fused qkv has 3 x width")
        for part, piece in zip(("query", "key", "value"), np.split(np.asarray(value), 3)):
            out[f"{m[1]}.attn.{part}.{m[2]}"] = piece
    if "head.fc.weight" in out and family_of(out) is SWIN:
        out = {re.sub(r"^layers\.(\d+)\.downsample\.",
                      lambda g: f"layers.{int(g[1]) - 1}.downsample.",
                      re.sub(r"^head\.fc\.", "head.", k)): v for k, v in out.items()}
    return out


def _count(tensors: dict, pattern: str) -> int:
    found = {int(m[1]) for k in tensors if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def vit_fields(tensors: dict[str, np.ndarray], input_shape=None) -> dict[str, Any]:
    """ViT / DeiT constructor fields from a prepared state dict's shapes (all but
    ``num_heads``); without ``input_shape`` the image is square, ``sqrt(patches)·patch`` wide."""
    hidden, channels, patch, _ = tensors["patch_embed.proj.weight"].shape
    distilled = "dist_token" in tensors
    if input_shape is None:
        patches = tensors["pos_embed"].shape[1] - (2 if distilled else 1)
        side = math.isqrt(patches)
        if side * side != patches:
            raise ValueError(f"pos_embed holds {patches} patch positions, not a square grid; "
                             "pass input_shape=(H, W, C)")
        input_shape = (side * patch, side * patch, int(channels))
    return dict(hidden=int(hidden), patch_size=int(patch), distilled=distilled,
                depth=_count(tensors, r"blocks\.(\d+)\."),
                mlp_dim=int(tensors["blocks.0.mlp.fc1.weight"].shape[0]),
                num_classes=int(tensors["head.weight"].shape[0]), input_shape=input_shape)


def swin_fields(tensors: dict[str, np.ndarray]) -> dict[str, Any]:
    """Swin constructor fields from a prepared state dict's shapes (not ``input_shape``)."""
    embed, _, patch, _ = tensors["patch_embed.proj.weight"].shape
    stages = _count(tensors, r"layers\.(\d+)\.blocks\.")
    depths = tuple(_count(tensors, rf"layers\.{i}\.blocks\.(\d+)\.") for i in range(stages))
    tables = [tensors[f"layers.{i}.blocks.0.attn.relative_position_bias_table"]
              for i in range(stages)]
    # A (2w - 1)^2-row table per stage; a stage smaller than the window has a smaller one.
    window = max((math.isqrt(t.shape[0]) + 1) // 2 for t in tables)
    return dict(embed_dim=int(embed), patch_size=int(patch), depths=depths,
                num_heads=tuple(int(t.shape[1]) for t in tables), window_size=int(window),
                mlp_ratio=tensors["layers.0.blocks.0.mlp.fc1.weight"].shape[0] / embed,
                num_classes=int(tensors["head.weight"].shape[0]))


def architecture_heads(path: str | pathlib.Path) -> int | None:
    """Heads of the timm ViT/DeiT named by ``config.json`` ``architecture`` beside ``path``."""
    path = pathlib.Path(path).expanduser()
    cfg = (path if path.is_dir() else path.parent) / "config.json"
    if not cfg.exists():
        return None
    arch = json.loads(cfg.read_text(encoding="utf-8")).get("architecture") or ""
    m = re.match(r"(?:vit|deit)_(tiny|small|base|large|huge)_", arch)
    return TIMM_HEADS[m[1]] if m else None


def fields_of(tensors: dict[str, np.ndarray], path: str | pathlib.Path,
              given: dict[str, Any]) -> dict[str, Any]:
    """The model's fields: read from the shapes, then ``given`` on top."""
    family = family_of(tensors)
    if family is SWIN:
        if "input_shape" not in given:
            raise ValueError("a Swin state dict does not record the image size; pass "
                             "input_shape=(H, W, C), e.g. (224, 224, 3)")
        return {**swin_fields(tensors), **given}
    fields = {**vit_fields(tensors, given.get("input_shape")), **given}
    if "num_heads" not in fields:
        heads = architecture_heads(path)
        if heads is None:
            raise ValueError("a ViT state dict does not record num_heads; pass num_heads= "
                             f"(timm's sizes: {TIMM_HEADS}) or place timm's config.json "
                             "(its 'architecture') beside the weights")
        fields["num_heads"] = heads
    return fields


def load(path: str | pathlib.Path, *, rngs: nnx.Rngs | None = None, **fields) -> nnx.Module:
    """The bnn_jax ViT/DeiT or Swin of a timm state dict, filled with its weights (``fields``
    add or override constructor fields, e.g. quantizers)."""
    tensors = prepare(read_state_dict(path))
    family = family_of(tensors)
    mapped = hub.map_tensors(tensors, family)
    return hub.build(family, mapped, fields_of(tensors, path, fields), rngs=rngs)


def load_into(model: nnx.Module, path: str | pathlib.Path) -> nnx.Module:
    """Copy a timm state dict into ``model`` (a ViT/DeiT or Swin built to match it)."""
    tensors = prepare(read_state_dict(path))
    family = family_of(tensors)
    from bnn_jax import models

    if not isinstance(model, models.get(family.model)):
        raise ValueError(f"{str(path)!r} holds a timm {family.model} state dict; the model "
                         f"to fill is a {type(model).__name__}")
    return hub.fill(model, hub.map_tensors(tensors, family), family)

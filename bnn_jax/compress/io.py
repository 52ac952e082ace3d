"""Compressed-model directories: the source's ``config.json`` and tokenizer, the weights and
quantizer arrays (``compressed.safetensors``, NNX paths) and ``compress.json`` (method,
quantizer, options, per-layer errors). A directory is written once: an existing one is an
error, never overwritten."""

from __future__ import annotations

import json
import pathlib
import shutil

import jax.numpy as jnp
import numpy as np
from flax import nnx

WEIGHTS, REPORT = "compressed.safetensors", "compress.json"
_COPIED = ("config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
           "special_tokens_map.json", "generation_config.json")


def check_new(out: str | pathlib.Path) -> pathlib.Path:
    """``out`` as a path that does not exist yet (else a ValueError)."""
    path = pathlib.Path(out).expanduser()
    if path.exists():
        raise ValueError(f"output directory {str(path)!r} exists; compressed runs are never "
                         "overwritten: give a new --out")
    return path


def _flat(model: nnx.Module) -> dict[str, np.ndarray]:
    return {"/".join(map(str, p)): np.asarray(v.get_value())
            for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def save(model: nnx.Module, report: dict, out, *, source: str | pathlib.Path | None = None,
         model_fields: dict | None = None) -> pathlib.Path:
    """Write a compressed model to the new directory ``out``."""
    from safetensors.numpy import save_file

    path = check_new(out)
    path.mkdir(parents=True)
    if source is not None:
        for name in _COPIED:
            if (pathlib.Path(source) / name).exists():
                shutil.copy(pathlib.Path(source) / name, path / name)
    save_file(_flat(model), str(path / WEIGHTS))
    meta = {**report, "source": None if source is None else str(source)}
    if model_fields is not None:
        meta["model_fields"] = model_fields
    (path / REPORT).write_text(json.dumps(meta, indent=1, default=float) + "\n")
    return path


def is_compressed(directory) -> bool:
    return (pathlib.Path(directory).expanduser() / REPORT).exists()


def load(directory) -> nnx.Module:
    """The compressed model of ``directory`` (its quantizer and arrays restored)."""
    from safetensors.numpy import load_file

    from bnn_jax import models
    from bnn_jax.models import hub

    path = pathlib.Path(directory).expanduser()
    if not is_compressed(path):
        raise ValueError(f"{str(path)!r} has no {REPORT}: not a bnn_jax.compress output")
    meta = json.loads((path / REPORT).read_text())
    if "model_fields" in meta:
        fields = dict(meta["model_fields"])
        cls = models.get(fields.pop("name"))
    else:
        cfg = hub.read_config(path)
        family = hub.family_of(cfg)
        fields, cls = hub.model_fields(cfg, family), models.get(family.model)
    model = cls(rngs=nnx.Rngs(0), **fields, kernel_quantizer=meta["quantizer"])
    arrays = load_file(str(path / WEIGHTS))
    for p, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        key = "/".join(map(str, p))
        if key not in arrays:
            raise ValueError(f"{WEIGHTS} lacks {key}; the directory does not match its model")
        var.set_value(jnp.asarray(arrays[key], var.get_value().dtype))
    return model

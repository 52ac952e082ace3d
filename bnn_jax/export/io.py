"""Save and load a frozen model: one uncompressed ``.npz`` of its arrays, written atomically.

The file holds every array of the frozen model's state under its "/"-joined path (packed
uint32 planes, float32 scales, biases, the float layers and BatchNorm statistics) and a JSON
``__meta__`` entry describing each frozen layer (kind, packing, activation encoding, baked
schedule values) and, when ``save`` is given ``model_spec``, how to build the architecture
(``bnn_jax.models.build`` arguments: the run's ``config.model``, classes, input shape), which
makes the file self-describing: ``load(path)`` then needs nothing else. Otherwise pass a freshly
built (unfrozen) model of the same configuration. Its quantized layers are replaced by frozen
ones rebuilt from the file, then every array is checked (names, shapes, dtypes) and set.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib

import jax.numpy as jnp
import numpy as np
from flax import nnx

from bnn_jax.export.freeze import LayerRecord, quant_layer_groups
from bnn_jax.export.frozen import FROZEN_KINDS  # every frozen layer class, by name
from bnn_jax.kernels import Packed
from bnn_jax.kernels.backend import resolve
from bnn_jax.nn.intercept import set_child

FORMAT = 1
META_KEY = "__meta__"

def _variables(model: nnx.Module) -> dict[str, nnx.Variable]:
    """Every Variable of the model by "/"-joined path."""
    return {"/".join(map(str, path)): node for path, node in nnx.iter_graph(model)
            if isinstance(node, nnx.Variable)}


def _frozen_layers(model: nnx.Module) -> dict[str, dict]:
    out = {}
    for path, node in nnx.iter_graph(model):
        if isinstance(node, tuple(FROZEN_KINDS.values())):
            out["/".join(map(str, path))] = dict(
                kind=type(node).__name__, length=node.length, axis=node.axis,
                encoding=node.encoding, activations=node.act_encoding,
                input_params=node.input_params, kernel_params=node.kernel_params)
    return out


def save(model: nnx.Module, path: str, records: list[LayerRecord] | None = None, *,
         model_spec: dict | None = None) -> int:
    """Write the frozen ``model`` to ``path`` (.npz) atomically; returns the file size in bytes.

    ``model_spec = dict(model=<config.model>, num_classes=..., input_shape=...)`` (JSON-able)
    records how ``bnn_jax.models.build`` makes the architecture, so :func:`load` needs no model.
    """
    from bnn_jax.export.lowbit import is_lowbit_layer

    lowbit = sorted(type(m).__name__ for _, m in nnx.iter_graph(model) if is_lowbit_layer(m))
    if lowbit:
        raise ValueError(f"save: the model has {lowbit[0]} layers (W1.58A8 / PB-LLM / DB-LLM), "
                         "which this file format does not store yet; keep the frozen model in "
                         "memory or save the trained checkpoint and freeze after loading")
    arrays = {k: np.asarray(v[...]) for k, v in _variables(model).items()}
    if META_KEY in arrays:
        raise ValueError(f"the model has a variable named {META_KEY!r}, which the format reserves")
    if model_spec is not None:
        missing = sorted({"model", "num_classes", "input_shape"} - set(model_spec))
        if missing:
            raise ValueError(f"model_spec is missing {missing}; it needs keys "
                             "['input_shape', 'model', 'num_classes']")
        model_spec = json.loads(json.dumps(dict(model_spec)))  # fail here if not JSON-able
    meta = dict(format=FORMAT, layers=_frozen_layers(model),
                records=[r.__dict__ for r in records or []], model_spec=model_spec)
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Write next to the target and rename: a crash never leaves a half-written model file.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".frozen-", suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
            # mkstemp creates the file 0600; give it what any new file gets (0666 - umask).
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(f.fileno(), 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return os.path.getsize(path)


def _read(path: str, arrays: bool) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, arrays if ``arrays`` else {}) of a saved frozen model; ValueError if the file
    is not one or is damaged (a missing file still raises FileNotFoundError)."""
    try:
        f = np.load(path)
    except FileNotFoundError:
        raise
    # A foreign or truncated file surfaces as a pickle ValueError, EOFError or BadZipFile.
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not a readable frozen model file (damaged, or not an .npz "
                         f"written by bnn_jax.export.save): {e}") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is a single .npy array, not a frozen bnn_jax model")
    with f:
        if META_KEY not in f.files:
            raise ValueError(f"{path} is not a frozen bnn_jax model (no {META_KEY} entry)")
        try:
            meta = json.loads(f[META_KEY].tobytes().decode())
            data = {k: f[k] for k in f.files if k != META_KEY} if arrays else {}
        except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as e:
            # Damaged entries fail here: CRC or zlib errors, cut-off .npy data, broken JSON.
            raise ValueError(f"{path} is damaged: {type(e).__name__}: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("layers"), dict):
        raise ValueError(f"{path}: its {META_KEY} entry is not frozen-model metadata")
    return meta, data


def read_meta(path: str) -> dict:
    """The JSON metadata of a saved frozen model."""
    return _read(path, arrays=False)[0]


def build_model(meta: dict) -> nnx.Module:
    """A fresh (unfrozen) model of the architecture recorded in a file's ``model_spec``."""
    from bnn_jax import models

    spec = meta.get("model_spec")
    if not spec:
        raise ValueError("the file records no model_spec (saved without one): pass a model "
                         "built from the same configuration to load()")
    from bnn_jax.nn.policy import quantize_config

    model = models.build(spec["model"], num_classes=int(spec["num_classes"]),
                         input_shape=tuple(spec["input_shape"]), rngs=nnx.Rngs(0))
    quantize_config(model, spec.get("quant"))  # a run's config.quant, when it had one
    return model


def load(path: str, model: nnx.Module | None = None, *, backend: str = "auto") -> nnx.Module:
    """The frozen model saved at ``path``, rebuilt on ``model`` (same architecture, not frozen)
    or, when ``model`` is None, on the architecture the file's ``model_spec`` records."""
    resolve(backend)
    meta, arrays = _read(path, arrays=True)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported format {meta.get('format')!r} (expected {FORMAT})")
    if model is None:
        try:
            model = build_model(meta)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    frozen = nnx.clone(model)
    layers = meta["layers"]
    found = set()
    for group in quant_layer_groups(frozen):
        # A layer shared by several parents is saved once, under one of its paths.
        name = next((p for p, *_ in group if p in layers), None)
        if name is None:
            continue
        child = group[0][3]
        info = layers[name]
        if (not isinstance(info, dict) or info.get("kind") not in FROZEN_KINDS
                or not {"length", "axis", "activations"} <= set(info)
                or f"{name}/scale" not in arrays):
            raise ValueError(f"{path}: the record of layer {name!r} is damaged: {info!r} "
                             f"(kinds {sorted(FROZEN_KINDS)}, with length, axis, activations "
                             "and a scale array)")
        planes = [jnp.asarray(arrays[f"{name}/{p}"]) if f"{name}/{p}" in arrays else None
                  for p in ("w_sign", "w_mask")]
        packed = Packed(*planes, length=info["length"], axis=info["axis"])
        q = child.input_quantizer
        for n in (q.learned if q is not None else ()):
            # Learned input arrays appear on a layer's first call; take them from the file.
            if not hasattr(child, f"input_{n}"):
                if f"{name}/input_{n}" not in arrays:
                    raise ValueError(f"{path} does not match the model: layer {name!r} has "
                                     f"the learned input array {n!r}, the file has none")
                setattr(child, f"input_{n}", nnx.Param(jnp.asarray(arrays[f"{name}/input_{n}"])))
        new = FROZEN_KINDS[info["kind"]](child, packed, arrays[f"{name}/scale"],
                                         info["activations"], backend=backend,
                                         input_params=info.get("input_params"),
                                         kernel_params=info.get("kernel_params"))
        for _, parent, key, _ in group:
            set_child(parent, key, new)
        found.add(name)
    missing_layers = sorted(set(layers) - found)
    if missing_layers:
        raise ValueError(f"{path}: the model has no quantized layers at {missing_layers}; "
                         "pass a model built from the same configuration")
    variables = _variables(frozen)
    missing, unexpected = sorted(set(variables) - set(arrays)), sorted(set(arrays) - set(variables))
    if missing or unexpected:
        raise ValueError(f"{path} does not match the model: missing {missing}, "
                         f"unexpected {unexpected}")
    for name, var in variables.items():
        want, got = var[...], arrays[name]
        if tuple(want.shape) != got.shape or np.dtype(want.dtype) != got.dtype:
            raise ValueError(f"{path}: {name} has shape {got.shape} {got.dtype}, the model "
                             f"expects {tuple(want.shape)} {np.dtype(want.dtype)}")
        var[...] = jnp.asarray(got)
    frozen.eval()
    return frozen

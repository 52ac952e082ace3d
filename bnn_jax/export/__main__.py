"""``python -m bnn_jax.export --workdir DIR``: freeze the newest checkpoint of a training run.

Rebuilds the model from ``DIR/config.json``, restores the newest good checkpoint under
``DIR/checkpoints`` (params and BatchNorm statistics), freezes it, prints the size before and
after and one line per quantized layer (with the reason for every layer kept float), checks the
frozen logits against the fake-quant logits on a batch of evaluation data, writes
``DIR/frozen.npz`` (or ``--out``) with the architecture recorded in it, loads that file back on
its own and prints the test-split accuracy of the loaded frozen model next to the fake-quant
model's; the same numbers go to ``frozen.json`` next to the .npz file. Method schedules
(``config.schedules``) are frozen at their values at the checkpoint's step, the values the
training loop's evaluation used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from bnn_jax import export, nn
from bnn_jax.kernels.backend import BACKENDS
from bnn_jax.nn import quant_params


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The run's ``config.json``."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ValueError(f"{path} not found: --workdir must be a training run's directory")
    with open(path, encoding="utf-8") as f:
        return ml_collections.ConfigDict(json.load(f))


def schedule_values(config, step: int) -> dict:
    """The method schedules' values at ``step`` (as the training loop computes them)."""
    from bnn_jax.train import config as config_lib

    progress = step / max(int(config.total_steps), 1)
    specs = config.get("schedules", {})
    specs = specs.to_dict() if hasattr(specs, "to_dict") else dict(specs)
    return {role: {k: float(config_lib.schedule_value(v, progress)) for k, v in dict(s).items()}
            for role, s in specs.items()}


def accuracy(model, ds, values=None) -> tuple[float, int]:
    """(top-1 accuracy, number of examples) of ``model`` on the dataset's test split."""
    correct = total = 0
    for batch in ds.eval_batches():
        with quant_params(**(values or {})):
            logits = np.asarray(model(jnp.asarray(batch["image"])))
        mask = np.asarray(batch.get("mask", np.ones(len(logits))), bool)
        correct += int(np.sum((logits.argmax(-1) == np.asarray(batch["label"])) & mask))
        total += int(mask.sum())
    return correct / max(total, 1), total


def restore_model(workdir: str):
    """(model in eval mode with the newest checkpoint's weights, dataset, step) of a run."""
    from bnn_jax import data as data_lib
    from bnn_jax import models
    from bnn_jax.train import checkpoint as ckpt_lib

    config = read_config(workdir)
    ds = data_lib.build(config.data, seed=config.seed)
    model = models.build(config.model, **ds.spec,
                         rngs=nnx.Rngs(config.seed))
    nn.quantize_config(model, config.get("quant"))  # as the training loop quantized it
    if nn.pending_learned(model):
        # Learned input-quantizer arrays (RSign shifts, LSQ steps) appear on the first call, as
        # in the training loop; create them so the checkpoint's trained values have a place.
        nn.initialize(model, jnp.asarray(next(iter(ds.eval_batches()))["image"]))
    ckpt = ckpt_lib.Checkpointer(workdir, async_save=False, read_only=True)  # never alter the run
    try:
        got = ckpt.restore_latest(None)  # the raw saved tree; matched to the model below
    finally:
        ckpt.close()
    if got is None:
        raise ValueError(f"no checkpoint found under {os.path.join(workdir, 'checkpoints')}")
    saved = got[0]
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    model = nnx.merge(graph, _like(nnx.to_pure_dict(params), saved["params"]),
                      _like(nnx.to_pure_dict(rest), saved["rest"]))
    model.eval()
    return model, ds, int(np.asarray(saved["step"]))


def _like(template, saved):
    """``saved`` in the template's structure and dtypes (orbax restores list indices as strings)."""
    if isinstance(template, dict):
        if not isinstance(saved, dict):
            raise ValueError(f"checkpoint does not match the model: expected a mapping with keys "
                             f"{sorted(map(str, template))}, got {type(saved).__name__}")
        missing = [k for k in template if k not in saved and str(k) not in saved]
        if missing:
            raise ValueError(f"checkpoint does not match the model: missing {missing}")
        extra = sorted(set(map(str, saved)) - set(map(str, template)))
        if extra:
            # Never drop trained arrays silently (the model would run on their init values).
            raise ValueError(f"checkpoint does not match the model: it has {extra}, which the "
                             "model built from config.json lacks")
        return {k: _like(v, saved[k] if k in saved else saved[str(k)])
                for k, v in template.items()}
    t = jnp.asarray(template)
    s = jnp.asarray(saved, dtype=t.dtype)
    if s.shape != t.shape:
        raise ValueError(f"checkpoint array of shape {s.shape} where the model has {t.shape}")
    return s


def main(argv=None) -> int:
    """Run the command line; returns the exit status (2 for a workdir that cannot be frozen)."""
    parser = argparse.ArgumentParser(prog="python -m bnn_jax.export", description=__doc__)
    parser.add_argument("--workdir", required=True, help="a training run's directory")
    parser.add_argument("--out", default=None, help="output file (default WORKDIR/frozen.npz)")
    parser.add_argument("--backend", default="auto", choices=list(BACKENDS))
    args = parser.parse_args(argv)
    try:
        model, ds, step = restore_model(args.workdir)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    config = read_config(args.workdir)
    values = schedule_values(config, step)
    frozen, records = export.freeze(model, backend=args.backend, quant_params=values)
    before, after = export.state_bytes(model), export.state_bytes(frozen)
    print(f"checkpoint step {step} of {args.workdir}")
    print(export.report(records, before, after))
    batch = next(iter(ds.eval_batches()))
    images = jnp.asarray(batch["image"])
    with quant_params(**values):
        ref = np.asarray(model(images))
    out = np.asarray(frozen(images))
    diff = float(np.max(np.abs(ref - out)))
    agree = float(np.mean(ref.argmax(-1) == out.argmax(-1)))
    print(f"frozen vs fake-quant logits on {len(images)} eval images: max |diff| {diff:.3g}, "
          f"same argmax {agree:.1%}")
    path = args.out or os.path.join(args.workdir, "frozen.npz")
    spec = dict(model=config.model.to_dict(), num_classes=int(ds.num_classes),
                input_shape=[int(d) for d in ds.image_shape],
                quant=config.quant.to_dict() if "quant" in config else None)
    size = export.save(frozen, path, records, model_spec=spec)
    print(f"wrote {path}: {size} bytes")
    # The file alone (architecture from its model_spec) against the fake-quant model.
    loaded = export.load(path, backend=args.backend)
    fake_acc, n = accuracy(model, ds, values)
    frozen_acc, _ = accuracy(loaded, ds)
    print(f"test accuracy on {n} images: fake-quant {fake_acc:.4f}, frozen (loaded from "
          f"{os.path.basename(path)}) {frozen_acc:.4f}")
    kinds: dict[str, int] = {}
    for r in records:
        key = f"W:{r.encoding} A:{r.activations}" if r.frozen else "kept float"
        kinds[key] = kinds.get(key, 0) + 1
    summary = dict(step=step, bytes_before=before, bytes_after=after, file_bytes=size,
                   plane_bytes=sum(r.plane_bytes for r in records),
                   max_logit_diff=diff, same_argmax=agree, fake_quant_top1=fake_acc,
                   frozen_top1=frozen_acc, test_examples=n, frozen_kinds=kinds,
                   layers=[dict(r.__dict__, bits_per_weight=r.bits_per_weight,
                                overhead_bytes=r.overhead_bytes) for r in records])
    report_path = os.path.splitext(path)[0] + ".json"
    with open(report_path, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    print(f"wrote {report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

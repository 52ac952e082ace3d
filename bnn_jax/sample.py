"""``python -m bnn_jax.sample --workdir DIR --num 1000 [--steps 100] [--eta 0]``: samples of a
trained ``denoising`` run (DDIM, :mod:`bnn_jax.diffusion`), a PNG grid and a quality metric.

The run's newest checkpoint is restored (its weight EMA when the run kept one), samples are
drawn in batches and mapped back to the data's ``[0, 1]`` range, and ``samples.png`` (a grid of
the first 64), ``samples.npz`` and ``sample_metrics.json`` are written to ``--out`` (default
``DIR/samples``; an existing one is never overwritten). The metric is FID and precision/recall
against the run's test images in the features of ``--features`` (see
:mod:`bnn_jax.analysis.fid`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bnn_jax import diffusion


def restore(workdir: str, *, ema: bool = True):
    """``(model in eval mode, config, dataset)`` of a run's newest checkpoint (EMA weights when
    ``ema`` and the run kept them)."""
    from bnn_jax import data as data_lib
    from bnn_jax import models
    from bnn_jax.export.__main__ import read_config
    from bnn_jax.nn import initialize, pending_learned
    from bnn_jax.nn.policy import quantize_config
    from bnn_jax.train import checkpoint as ckpt_lib

    config = read_config(workdir)
    if config.task.name != "denoising":
        raise ValueError(f"the run in {workdir} trained task {config.task.name!r}; sampling "
                         "needs a 'denoising' run")
    ds = data_lib.build(config.data, seed=config.seed)
    model = models.build(config.model, **ds.spec, rngs=nnx.Rngs(config.seed))
    quantize_config(model, config.get("quant"))
    if pending_learned(model):  # learned input-quantizer arrays appear on the first call
        x = jnp.asarray(next(iter(ds.eval_batches()))["image"], jnp.float32)
        initialize(model, x, jnp.zeros((x.shape[0],), jnp.int32))
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    use_ema = ema and float(config.ema.decay) > 0
    saved = ckpt_lib.restore_params(workdir, {"params": nnx.to_pure_dict(params),
                                              "rest": nnx.to_pure_dict(rest)}, ema=use_ema)
    model = nnx.merge(graph, saved["params"], saved["rest"])
    model.eval()
    return model, config, ds


def check_classifier_range(workdir: str, classifier: str) -> None:
    """Refuse a FID classifier trained on another pixel range than the run's data (e.g.
    standardized digits against a diffusion run's ``[0, 1]`` images)."""
    from bnn_jax.export.__main__ import read_config

    run, cls = read_config(workdir).data, read_config(classifier).data
    a, b = bool(run.get("normalize", True)), bool(cls.get("normalize", True))
    if run.name != cls.name or a != b:
        raise ValueError(f"the classifier in {classifier} was trained on {cls.name!r} with "
                         f"data.normalize={b}, the run in {workdir} on {run.name!r} with "
                         f"data.normalize={a}; train the classifier on the run's data "
                         f"(--config.data.name={run.name} --config.data.normalize={a})")


def draw(model, config, num: int, *, steps: int, eta: float = 0.0, seed: int = 0,
         batch_size: int = 250) -> np.ndarray:
    """``num`` samples ``[N, H, W, C]`` in the data's ``[0, 1]`` range."""
    abar = diffusion.task_abar(config.task)
    center = bool(config.task.get("center", False))
    shape = tuple(model.input_shape) if hasattr(model, "input_shape") else None
    if shape is None:
        raise ValueError("the model does not say its input_shape; sampling needs it")
    out, key = [], jax.random.key(seed)
    for start in range(0, num, batch_size):
        key, k = jax.random.split(key)
        n = min(batch_size, num - start)
        x = diffusion.sample(model, (n, *shape), k, abar=abar, steps=steps, eta=eta,
                             clip=(-1.0, 1.0) if center else (0.0, 1.0))
        out.append(np.asarray(x))
    x = np.concatenate(out)
    return np.clip((x + 1) / 2 if center else x, 0.0, 1.0)


def grid(images: np.ndarray, cols: int = 8) -> np.ndarray:
    """Images ``[N, H, W, C]`` in [0, 1] tiled row by row into one ``[rows·(H+1), ...]`` array
    with 1-pixel white borders."""
    n, h, w, c = images.shape
    rows = -(-n // cols)
    g = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c), np.float32)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        g[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = im
    return g


def save_png(path: str, images: np.ndarray, *, cols: int = 8, scale: int = 4) -> None:
    """A PNG grid of ``images`` (nearest-upscaled ``scale`` times)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = grid(images, cols)
    g = np.repeat(np.repeat(g, scale, 0), scale, 1)
    plt.imsave(path, g[..., 0] if g.shape[-1] == 1 else g, cmap="gray", vmin=0.0, vmax=1.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bnn_jax.sample", description=__doc__)
    p.add_argument("--workdir", required=True, help="a finished denoising run")
    p.add_argument("--num", type=int, default=1000, help="number of samples")
    p.add_argument("--steps", type=int, default=100, help="DDIM steps")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--features", default="classifier",
                   help="FID features: 'classifier' (a run dir via --classifier) or "
                        "'inception' (--inception-weights FILE)")
    p.add_argument("--classifier", help="a bnn_jax classification run on the same data")
    p.add_argument("--inception-weights", help="a local Inception-V3 weights file (.npz)")
    p.add_argument("--no-ema", action="store_true", help="sample with the raw weights")
    p.add_argument("--out", help="output folder (default WORKDIR/samples; must not exist)")
    a = p.parse_args(argv)
    out = a.out or os.path.join(a.workdir, "samples")
    try:
        if a.num < 1:
            raise ValueError(f"--num must be a positive integer, got {a.num}")
        if os.path.exists(out):
            raise ValueError(f"{out} exists; give another --out (earlier samples are kept)")
        from bnn_jax.analysis import fid

        if a.features == "classifier" and a.classifier:
            check_classifier_range(a.workdir, a.classifier)
        extractor = fid.extractor(a.features, classifier=a.classifier,
                                  inception_weights=a.inception_weights)
        model, config, ds = restore(a.workdir, ema=not a.no_ema)
        images = draw(model, config, a.num, steps=a.steps, eta=a.eta, seed=a.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(out)
    save_png(os.path.join(out, "samples.png"), images[:64])
    np.savez_compressed(os.path.join(out, "samples.npz"), images=images)
    real = fid.test_images(ds)
    metrics = {"num": a.num, "steps": a.steps, "eta": a.eta, "features": a.features,
               **fid.metrics(extractor(real), extractor(images))}
    with open(os.path.join(out, "sample_metrics.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

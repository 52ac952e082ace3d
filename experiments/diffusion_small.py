"""Small-scale BinaryDM evidence on CPU: float U-Net vs plain-sign W1 vs BinaryDM W1.1, at A32
and A8, the same fine-tuning budget, scored by classifier-FID on digits (8x8).

  PYTHONPATH=. nice -n 10 python experiments/diffusion_small.py           # train, then render
  PYTHONPATH=. python experiments/diffusion_small.py --render             # from the json only

The float U-Net (``configs/binarydm.py:quick,stage=fp``) is trained first and is the teacher and
the starting point of every binarized variant (``stage=sign`` / ``stage=binarydm``, same steps,
same optimizer). Each model draws as many DDIM samples as there are test images; a float
``digits_cnn`` classifier trained here gives the features of the FID (its head's input). Writes
``results/diffusion_small.json`` (one record per variant, added as runs finish), then
``diffusion_small.md`` and one sample grid per variant (``diffusion_small_<variant>.png``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import tempfile

import numpy as np
from flax import nnx

from bnn_jax import models
from bnn_jax import sample as sample_lib
from bnn_jax.analysis import cost, fid
from bnn_jax.train import config as config_lib
from bnn_jax.train import loop

HERE = pathlib.Path(__file__).parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "diffusion_small.json"
FP_STEPS, BIN_STEPS, CLS_STEPS = 1000, 300, 300
DDIM_STEPS = 50
# variant -> (stage, act_bits, label)
VARIANTS = {
    "fp": ("fp", 0, "float (W32/A32)"),
    "sign_a32": ("sign", 0, "plain sign W1/A32"),
    "binarydm_a32": ("binarydm", 0, "BinaryDM (LMB) W/A32"),
    "sign_a8": ("sign", 8, "plain sign W1/A8"),
    "binarydm_a8": ("binarydm", 8, "BinaryDM (LMB) W/A8"),
}


def recipe(arg: str):
    """``configs/binarydm.py`` with ``arg``."""
    spec = importlib.util.spec_from_file_location("binarydm_config", ROOT / "configs/binarydm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def config(variant: str, fp_dir: str):
    stage, bits, _ = VARIANTS[variant]
    steps = FP_STEPS if stage == "fp" else BIN_STEPS
    c = recipe(f"quick,stage={stage},act_bits={bits},steps={steps},teacher={fp_dir}")
    c.tensorboard, c.log_every = False, 100
    return c


def classifier_config():
    c = config_lib.defaults()
    c.total_steps, c.checkpoint_every, c.log_every, c.tensorboard = CLS_STEPS, CLS_STEPS, 100, False
    # The diffusion runs' [0, 1] images: real and generated digits are scored in one range.
    c.data = dict(name="digits", batch_size=64, eval_batch_size=120, normalize=False)
    c.model = dict(name="digits_cnn", width=32, depth=2)
    c.optimizer = dict(name="adam", learning_rate=3e-3, schedule="warmup_cosine",
                       warmup_steps=20)
    return c


def bits_per_weight(variant: str) -> float | None:
    cfg = dict(config(variant, "unused").model)
    m = nnx.eval_shape(lambda: models.build(cfg, input_shape=(8, 8, 1), num_classes=10,
                                            rngs=nnx.Rngs(0)))
    return cost.analyze(m, (8, 8, 1)).totals()["quantized_bits_per_weight"]


def train_all(runs: str | None = None) -> dict:
    """Train and score every variant (finished runs under ``runs`` are reused)."""
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": {}}
    task = config("fp", "unused").task
    setup = dict(data="digits (1437 train / 360 test, 8x8, [0, 1] centred to [-1, 1])",
                 model="unet 16 channels, mult (1, 2), 1 res block, attention at 4x4, "
                       "GroupNorm of 4 channels per group",
                 timesteps=task.num_timesteps, beta=[task.beta_start, task.beta_end],
                 fp_steps=FP_STEPS, binarized_steps=BIN_STEPS, batch=32,
                 ddim_steps=DDIM_STEPS, classifier=f"digits_cnn width 32, {CLS_STEPS} steps",
                 seed=0)
    if results.get("setup", setup) != setup:
        raise SystemExit(f"{RESULTS} holds runs of another setup; move it away to start over")
    results["setup"] = setup
    RESULTS.parent.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        tmp = runs or scratch
        cls_dir = str(pathlib.Path(tmp) / "classifier")
        r = loop.run(classifier_config(), cls_dir)
        results["classifier_top1"] = r["test_top1"]
        features = fid.classifier_features(cls_dir)
        fp_dir = str(pathlib.Path(tmp) / "fp")
        real = None
        for variant, (_, _, label) in VARIANTS.items():
            workdir = fp_dir if variant == "fp" else str(pathlib.Path(tmp) / variant)
            if variant in results["runs"] and variant != "fp":
                continue
            r = loop.run(config(variant, fp_dir), workdir)
            model, cfg, ds = sample_lib.restore(workdir)
            if real is None:
                real = fid.test_images(ds)
                results["real_vs_real"] = _real_floor(ds, features, len(real))
            images = sample_lib.draw(model, cfg, len(real), steps=DDIM_STEPS, seed=0)
            sample_lib.save_png(str(HERE / f"diffusion_small_{variant}.png"), images[:64])
            results["runs"][variant] = dict(
                label=label, test_loss=r["test_loss"], train_loss=r["train_loss"],
                seconds=r["seconds"], bits_per_weight=bits_per_weight(variant),
                **fid.metrics(features(real), features(images)))
            RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    return results


def _real_floor(ds, features, n: int) -> dict:
    """Real training images against the test images: the metric's floor at this sample size."""
    parts = []
    for b in ds.train_batches(0):
        parts.append(np.asarray(b["image"], np.float32))
        if sum(len(p) for p in parts) >= n:
            break
    train = np.concatenate(parts)[:n]
    return fid.metrics(features(fid.test_images(ds)), features(train))


def _reading(results: dict) -> str:
    """What the table says, from its numbers."""
    runs, floor = results["runs"], results["real_vs_real"]["fid"]
    text = ("Budget: minutes on a shared 2-core CPU, one seed, no repeats, so small "
            "differences are untested. ")
    if "fp" in runs:
        fp = runs["fp"]
        text += (f"The float U-Net's FID is {fp['fid']:.2f} against the floor's {floor:.2f} "
                 f"(recall {fp['recall']:.3f}); see the grids for what each model draws. ")
    binarized = sorted((r["fid"], v) for v, r in runs.items() if v != "fp")
    if binarized:
        text += ("Binarized variants by FID, best first: "
                 + ", ".join(f"{VARIANTS[v][2]} {f:.2f} ({runs[v]['bits_per_weight']:.2f} "
                             "bits/weight)" for f, v in binarized)
                 + "; the bits differ, so a gap mixes the method with its extra bits.")
    return text


def markdown(results: dict) -> str:
    """The diffusion_small.md text from the results."""
    s = results["setup"]
    rows = []
    for variant in VARIANTS:
        r = results["runs"].get(variant)
        if r is None:
            continue
        bpw = "32" if r["bits_per_weight"] is None else f"{r['bits_per_weight']:.2f}"
        rows.append(f"| {VARIANTS[variant][2]} | {bpw} | {r['fid']:.2f} | {r['precision']:.3f} | "
                    f"{r['recall']:.3f} | {r['test_loss']:.4f} | "
                    f"![{variant}](diffusion_small_{variant}.png) |")
    f = results["real_vs_real"]
    md = ["# BinaryDM on digits: float vs plain sign vs BinaryDM, same budget", "",
          "Written by `experiments/diffusion_small.py` from "
          "`experiments/results/diffusion_small.json`. "
          f"Data: {s['data']}; model: {s['model']}; {s['timesteps']} diffusion steps (linear β "
          f"{s['beta'][0]:g}..{s['beta'][1]:g}). The float U-Net trains {s['fp_steps']} steps "
          f"(AdamW 2e-3, batch "
          f"{s['batch']}, EMA 0.99); every binarized variant starts from it and fine-tunes "
          f"{s['binarized_steps']} steps (AdamW 5e-4, EMA 0.99); BinaryDM adds its progressive "
          "switch (one group per step, middle outward) and LRM (1e-4, PCA bases from the "
          f"teacher's first batch). Samples: DDIM {s['ddim_steps']} steps, eta 0, as many as "
          f"test images; one seed ({s['seed']}).", "",
          f"⚠ **Classifier-FID**: features are the head inputs of a float {s['classifier']} "
          f"(test top-1 {100 * results['classifier_top1']:.1f} %) trained here; the numbers rank "
          "these models against each other and are not comparable to Inception FID. "
          f"Floor (real train vs test images, same count): FID {f['fid']:.2f}, precision "
          f"{f['precision']:.3f}, recall {f['recall']:.3f}.", "",
          _reading(results) + " "
          + (f"Not run (time): {', '.join(v for v in VARIANTS if v not in results['runs'])}."
             if set(VARIANTS) - set(results["runs"]) else ""), "",
          "Bits/weight is the analysis CLI's mean over binarized kernels: this 2-level U-Net "
          "has mostly outer-group (order-2) layers, so BinaryDM's placement gives more than the "
          "paper's 1.1 bits of its 4-level LSUN U-Net (`configs/binarydm.py:LSUN_LDM4_UNET`).",
          "",
          "| model | bits/weight (binarized layers) | classifier-FID ↓ | precision ↑ | "
          "recall ↑ | test L_simple | samples |", "|---|---|---|---|---|---|---|", *rows, ""]
    return "\n".join(md)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--render", action="store_true", help="only render from the json")
    p.add_argument("--runs", help="keep the training runs here (default: a temporary folder)")
    a = p.parse_args(argv)
    results = json.loads(RESULTS.read_text()) if a.render else train_all(a.runs)
    (HERE / "diffusion_small.md").write_text(markdown(results))
    print((HERE / "diffusion_small.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Small-scale reproduction: one binary ResNet-20-style network, every CNN method's estimator,
the same budget, three seeds, on scikit-learn's digits (offline, real images).

  PYTHONPATH=. python experiments/cnn_small.py            # train (resumes), then render
  PYTHONPATH=. python experiments/cnn_small.py --render   # tables and plot from the json only

Writes ``results/cnn_small.json`` (one record per method and seed, added as runs finish, so an
interrupted sweep resumes), then ``cnn_small.md`` (mean +- std top-1, training time, ACE, model
size) and ``cnn_small.png`` (top-1 against ACE, the PokeBNN paper's view) from that file.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

import numpy as np
from flax import nnx

from bnn_jax import models
from bnn_jax.analysis import cost
from bnn_jax.train import config as config_lib
from bnn_jax.train import loop

HERE = pathlib.Path(__file__).parent
RESULTS = HERE / "results" / "cnn_small.json"
SEEDS = (0, 1, 2)
STEPS = 150
SHAPE, CLASSES = (8, 8, 1), 10
WIDTH = 8

# method -> (paper, arch, input quantizer, kernel quantizer, schedules)
METHODS = {
    "float": ("full precision", "resnet20", None, None, {}),
    "bnn_ste": ("BNN (Hubara et al. 2016)", "resnet20", "ste_sign", "ste_sign", {}),
    "xnor": ("XNOR-Net (Rastegari et al. 2016)", "resnet20", "xnor_act", "xnor_weight", {}),
    "bireal": ("Bi-Real (Liu et al. 2018)", "resnet20_bireal", "approx_sign", "bireal_weight",
               {}),
    "reactnet": ("ReActNet (Liu et al. 2020)", "resnet20_bireal", "rsign", "bireal_weight", {}),
    # IR-Net's Log_UP (t, k) of its ResNet-20 1w1a trainer (T_min 1e-3, T_max 10), per step
    "irnet": ("IR-Net (Qin et al. 2020)", "resnet20", dict(name="irnet_ede", t_min=1e-3),
              dict(name="irnet_weight", t_min=1e-3),
              {"progress": dict(kind="linear", start=0.0, end=1.0)}),
    "reste": ("ReSTE (Wu et al. 2023)", "resnet20", "reste", "reste_weight",
              {"o": dict(kind="cosine", start=1.0, end=3.0)}),
    "biper": ("BiPer (Vargas et al. 2024)", "resnet20", "biper_act", "biper_weight", {}),
    "fda": ("FDA (Xu et al. 2021), Fourier estimator", "resnet20", "fda", "fda", {}),
    "dorefa": ("DoReFa (Zhou et al. 2016), 1-bit", "resnet20", dict(name="dorefa", k_bit=1),
               "magnitude_aware_sign_unclipped", {}),
    "pokebnn": ("PokeBNN/AQT binary quantizer", "resnet20",
                dict(name="aqt", bits=1, half_shift=True, bound=3.0),
                dict(name="aqt", bits=1, half_shift=True, per_channel=True), {}),
}
# Model fields beyond the quantizers: BiPer's CIFAR tau regularizer (its stage-2 tau), which the
# classification task adds to the loss (model_regularizer).
MODEL_FIELDS = {"biper": dict(weight_regularizer=dict(name="biper", tau=0.0468))}


def config(method: str, seed: int):
    """The training config of one run."""
    _, arch, qin, qk, schedules = METHODS[method]
    c = config_lib.defaults()
    c.seed, c.total_steps, c.log_every, c.checkpoint_every = seed, STEPS, 100, STEPS
    c.tensorboard = False
    c.data = dict(name="digits", batch_size=64, eval_batch_size=120)
    c.model = dict(name="resnet_cifar", arch=arch, width=WIDTH,
                   input_quantizer=None if qin is None else (qin if isinstance(qin, dict)
                                                             else dict(name=qin)),
                   kernel_quantizer=None if qk is None else (qk if isinstance(qk, dict)
                                                             else dict(name=qk)),
                   **MODEL_FIELDS.get(method, {}))
    if "weight_regularizer" in c.model:
        c.task = dict(name="classification", model_regularizer=True)
    c.optimizer = dict(name="adam", learning_rate=3e-3, schedule="warmup_cosine",
                       warmup_steps=STEPS // 20, weight_decay=0.0)
    c.schedules = dict(input=dict(schedules), kernel=dict(schedules))
    return c


def model_cost(method: str) -> dict:
    """ACE and model size of the method's network at the digits shape (per example)."""
    cfg = dict(config(method, 0).model)
    m = nnx.eval_shape(lambda: models.build(cfg, num_classes=CLASSES, input_shape=SHAPE,
                                            rngs=nnx.Rngs(0)))
    t = cost.analyze(m, SHAPE).totals()
    return {"ace": t["ace"], "memory_bytes": t["memory_bytes"], "macs": t["macs"],
            "binarized_mac_ratio": t["binarized_mac_ratio"]}


def train_all() -> dict:
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": []}
    setup = dict(data="digits (1797 images, 8x8)", model=f"resnet_cifar width {WIDTH}",
                 steps=STEPS, batch=64, optimizer="adam 3e-3 cosine",
                 seeds=list(SEEDS))
    if results.get("setup", setup) != setup:
        raise SystemExit(f"{RESULTS} holds runs of another setup ({results['setup']}); move it "
                         "away to start over")
    results["setup"] = setup
    done = {(r["method"], r["seed"]) for r in results["runs"]}
    for method in METHODS:
        for seed in SEEDS:
            if (method, seed) in done:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    r = loop.run(config(method, seed), tmp)
                except loop.NonFiniteLossError as e:  # reported as diverged, not dropped
                    results["runs"].append(dict(method=method, seed=seed, top1=None,
                                                diverged=str(e).split(";")[0]))
                    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
                    continue
            results["runs"].append(dict(method=method, seed=seed, top1=r["test_top1"],
                                        seconds=r["seconds"], train_loss=r["train_loss"]))
            RESULTS.parent.mkdir(exist_ok=True)
            RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    results["cost"] = {m: model_cost(m) for m in METHODS}
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    return results


def markdown(results: dict) -> tuple[str, list]:
    """The cnn_small.md text and the plot's points, from the results."""
    rows, points = [], []
    for method, (paper, arch, *_rest) in METHODS.items():
        all_runs = [r for r in results["runs"] if r["method"] == method]
        runs = [r for r in all_runs if r["top1"] is not None]
        c = results["cost"][method]
        size = f"{cost._num(c['ace'])} | {c['memory_bytes'] / 1024:.1f}"
        if not runs:
            if all_runs:
                rows.append(f"| {method} | {paper} | {arch} | diverged (non-finite gradient) | "
                            f"0 of {len(all_runs)} | - | {size} |")
            continue
        top1 = np.array([r["top1"] for r in runs]) * 100
        secs = np.array([r["seconds"] for r in runs])
        seeds = f"{len(runs)}" + (f" of {len(all_runs)}" if len(runs) < len(all_runs) else "")
        rows.append(f"| {method} | {paper} | {arch} | {top1.mean():.2f} +- {top1.std():.2f} | "
                    f"{seeds} | {secs.mean():.1f} | {size} |")
        points.append((method, c["ace"], top1.mean(), top1.std()))
    s = results["setup"]
    md = ["# Binary ResNet-20-style networks on digits: every CNN method, same budget", "",
          f"Written by `experiments/cnn_small.py` from `experiments/results/cnn_small.json`. "
          f"Data: {s['data']}; model: {s['model']} (float first conv and dense, BN after each "
          f"binary conv); {s['steps']} steps at batch {s['batch']}, {s['optimizer']}; seeds "
          f"{s['seeds']}. ACE and size per example (float operands at 16 bits in ACE; size "
          "with binary weights as bits). Train s: wall seconds after the first (compiling) "
          "step on a shared CPU, so only a rough guide.", "",
          "| method | paper | network | top-1 % (mean +- std) | seeds | train s | ACE | "
          "size (KiB) |", "|---|---|---|---|---|---|---|---|", *rows, "",
          "![top-1 against ACE](cnn_small.png)", ""]
    return "\n".join(md), points


def render(results: dict) -> None:
    """cnn_small.md and cnn_small.png from the results."""
    md, points = markdown(results)
    (HERE / "cnn_small.md").write_text(md)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    markers = "osD^v<>pPX*h"
    for i, (name, ace, mean, std) in enumerate(points):
        # the binary methods share one ACE: a legend, not labels on the points, tells them apart
        ax.errorbar(ace, mean, yerr=std, fmt=markers[i % len(markers)], capsize=3, label=name)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax.set_xscale("log")
    ax.set_xlabel("ACE per example (log)")
    ax.set_ylabel("top-1 % on digits")
    ax.set_title("Binary ResNet-20-style, digits, same budget")
    fig.tight_layout()
    fig.savefig(HERE / "cnn_small.png", dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--render", action="store_true", help="only render from the json")
    a = p.parse_args(argv)
    results = json.loads(RESULTS.read_text()) if a.render else train_all()
    render(results)
    print((HERE / "cnn_small.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

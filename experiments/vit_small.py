"""Small-scale evidence for the vision-transformer methods: one small ViT on MNIST-5k in full
precision, OFQ W4A4 / W3A3 / W2A2, BiViT W1A1, plain sign W1A1, and EcoFormer's hashing
attention against softmax attention; the same budget, three seeds; plus OFQ's oscillation
diagnostic with and without Confidence-Guided Annealing.

  PYTHONPATH=. python experiments/vit_small.py            # train (resumes), then render
  PYTHONPATH=. python experiments/vit_small.py --render   # the table from the json only

Writes ``results/vit_small.json`` (a record per run, added as runs finish), then
``vit_small.md``. Every network is trained from scratch for the same number of steps:

* ``float``: the full-precision ViT (softmax attention), also each seed's distillation teacher;
* ``ofq_w{b}a{b}``: :func:`bnn_jax.models.vit.ofq_fields`; QAT, then the last ``CGA_STEPS``
  with CGA (a second stage started from the first with ``config.init_from``), KD hard + soft
  from the float run of the same seed;
* ``bivit``: Cross-layer Binarization, MLPs W1A1 for the first half, then SAB attention too
  (``init_from``), soft KD from the float run;
* ``sign``: :func:`bnn_jax.models.vit.sign_fields`, the same KD as OFQ;
* ``ecoformer``: the float ViT with EcoFormer attention (``configs/ecoformer.py``'s small-input
  fields and refit hook), no KD, against ``float`` (softmax).

Oscillation (OFQ, W2A2 only): over the final ``CGA_STEPS`` of each seed the StatsQ code of
every CGA-eligible weight is recorded after each step (a step hook); a weight oscillates when
its code changes direction at least once (up then down, or down then up) in that window. The
same window is run once with CGA (the table's run) and once without (plain QAT continued).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import re
import sys
import tempfile

import jax
import numpy as np
from flax import nnx

from bnn_jax import models
from bnn_jax.analysis import cost
from bnn_jax.models.vit import bivit_fields, ofq_fields, sign_fields
from bnn_jax.nn import QuantLinear
from bnn_jax.train import config as config_lib
from bnn_jax.train import hooks, loop

HERE = pathlib.Path(__file__).parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "vit_small.json"
SEEDS = (0, 1, 2)
STEPS, CGA_STEPS, BATCH = 300, 60, 64
SHAPE, CLASSES = (28, 28, 1), 10
VIT = dict(name="vit", patch_size=7, hidden=48, depth=2, num_heads=3, mlp_dim=96)
CGA_PATTERN = r"(mlp/fc1|mlp/fc2|attn/value|attn/out)/kernel$"
LR = 1e-3

METHODS = {
    "float": "full precision, softmax attention",
    "ofq_w4a4": "OFQ W4A4 (StatsQ, LSQ per token + biases, QKR, CGA)",
    "ofq_w3a3": "OFQ W3A3",
    "ofq_w2a2": "OFQ W2A2",
    "bivit": "BiViT W1A1 (SAB, learned scales, CLB: MLP then attention)",
    "sign": "plain sign W1A1 (ste_sign weights, inputs, Q, K, V)",
    "ecoformer": "EcoFormer attention (16-bit hash codes), float otherwise",
}


def ecoformer_recipe():
    """``configs/ecoformer.py`` (the EcoFormer recipe), or None where it is not installed."""
    path = ROOT / "configs" / "ecoformer.py"
    if not path.exists() or importlib.util.find_spec("bnn_jax.nn.ecoformer") is None:
        return None
    spec = importlib.util.spec_from_file_location("ecoformer_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def base(seed: int, steps: int):
    c = config_lib.defaults()
    c.seed, c.total_steps, c.log_every, c.checkpoint_every = seed, steps, 100, steps
    c.tensorboard = False
    c.data = dict(name="mnist5k", batch_size=BATCH, eval_batch_size=200)
    c.optimizer = dict(name="adamw", learning_rate=LR, weight_decay=0.05,
                       schedule="warmup_cosine", warmup_steps=steps // 20, end_factor=0.01)
    return c


def kd(c, teacher: str, hard: bool) -> None:
    """Distil from the float run: soft KL (T = 1), plus the labels' cross-entropy (``hard``)."""
    c.kd = dict(enabled=True, teacher_model=dict(VIT), teacher_workdir=teacher,
                task_weight=1.0 if hard else 0.0,
                terms=[dict(name="logit", weight=1.0, temperature=1.0)])


def stages(method: str, seed: int, teacher: str) -> list:
    """The configs of a method's stages, in order (later stages start from the one before)."""
    if method == "float":
        c = base(seed, STEPS)
        c.model = dict(VIT)
        return [c]
    if method == "ecoformer":
        eco = ecoformer_recipe()
        c = base(seed, STEPS)
        c.model = dict(VIT, attention="ecoformer", attention_fields=dict(eco.QUICK_ATTENTION))
        c.hooks = eco.refresh_hooks(4000 // BATCH, seed=seed)
        return [c]
    if method == "sign":
        c = base(seed, STEPS)
        c.model = dict(VIT, **sign_fields())
        kd(c, teacher, hard=True)
        return [c]
    if method == "bivit":
        out = []
        for attention in (False, True):
            c = base(seed, STEPS // 2)
            c.model = dict(VIT, **bivit_fields(attention=attention, mlp=True))
            kd(c, teacher, hard=False)
            out.append(c)
        return out
    bits = int(method[-1])
    qat = base(seed, STEPS - CGA_STEPS)
    qat.model = dict(VIT, **ofq_fields(bits))
    kd(qat, teacher, hard=True)
    return [qat, cga_stage(qat, bits, cga=True)]


def cga_stage(qat, bits: int, *, cga: bool):
    """OFQ's last stage: CGA_STEPS at the final learning rate, with or without CGA."""
    c = base(qat.seed, CGA_STEPS)
    c.model, c.kd = dict(qat.model), qat.kd
    c.optimizer = dict(name="adamw", learning_rate=LR * 0.01, weight_decay=0.05,
                       schedule="constant")
    if cga:
        c.optimizer["cga"] = dict(bits=bits, boundary_range=0.005, steps=CGA_STEPS,
                                  pattern=CGA_PATTERN)
    return c


# ------------------------------------------------------------------------ oscillation --
CODES: dict[str, list] = {}


@hooks.register("vit_small_codes")
def record_codes(model, batch, step, *, bits: int = 2):
    """Append the StatsQ codes of the CGA-eligible kernels after this step."""
    n = 2.0 ** (bits - 1)
    for path, node in nnx.iter_graph(model):
        name = "/".join(map(str, path)) + "/kernel"
        if isinstance(node, QuantLinear) and re.search(CGA_PATTERN, name):
            w = np.asarray(node.kernel[...], np.float32)
            s = 2.0 * np.abs(w).mean(axis=0, keepdims=True)
            c = np.clip(w / s, -1.0, np.float32(1 - 1e-6))
            CODES.setdefault(name, []).append(np.round(c * n - 0.5).astype(np.int8))


def oscillating_share() -> float:
    """Share of recorded weights whose code changed direction at least once."""
    total = osc = 0
    for seq in CODES.values():
        codes = np.stack(seq).astype(np.int16)  # [steps, ...]
        d = np.sign(np.diff(codes, axis=0))
        moves = [d[i] for i in range(d.shape[0])]
        last = np.zeros(codes.shape[1:], np.int16)
        flipped = np.zeros(codes.shape[1:], bool)
        for m in moves:
            flipped |= (m != 0) & (last != 0) & (m != last)
            last = np.where(m != 0, m, last)
        total += flipped.size
        osc += int(flipped.sum())
    return osc / max(total, 1)


def run_with_codes(c, workdir: str, bits: int):
    CODES.clear()
    c.hooks = [dict(name="vit_small_codes", every=1, bits=bits)]
    result = loop.run(c, workdir)
    return result, oscillating_share()


# ----------------------------------------------------------------------------- sweep --
def model_cost(method: str) -> dict:
    """Parameters, ACE and size of the method's (final-stage) network at 28x28 (per example)."""
    if method == "ecoformer" and ecoformer_recipe() is None:
        return {}
    cfg = dict(stages(method, 0, "")[-1].model)
    m = nnx.eval_shape(lambda: models.build(cfg, num_classes=CLASSES, input_shape=SHAPE,
                                            rngs=nnx.Rngs(0)))
    t = cost.analyze(m, SHAPE).totals()
    return {"params": t["total_params"], "ace": t["ace"], "memory_bytes": t["memory_bytes"]}


def train_all() -> dict:
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": []}
    setup = dict(data="mnist5k (4000 train / 1000 test, 28x28)", model=str(VIT),
                 steps=STEPS, cga_steps=CGA_STEPS, batch=BATCH,
                 optimizer=f"adamw {LR} wd 0.05 warmup_cosine", seeds=list(SEEDS))
    if results.get("setup", setup) != setup:
        raise SystemExit(f"{RESULTS} holds runs of another setup ({results['setup']}); move it "
                         "away to start over")
    results["setup"] = setup
    methods = [m for m in METHODS if m != "ecoformer" or ecoformer_recipe() is not None]
    results["skipped"] = [m for m in METHODS if m not in methods]
    done = {(r["method"], r["seed"]) for r in results["runs"]}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in SEEDS:
            teacher = f"{tmp}/float_{seed}"
            for method in methods:
                if (method, seed) in done and method != "float":
                    continue
                if method == "float" and (method, seed) in done and not any(
                        (m, seed) not in done for m in methods):
                    continue
                record = run_method(method, seed, teacher, tmp)
                if (method, seed) in done:
                    continue  # the float teacher was retrained for a resumed seed
                results["runs"].append(record)
                RESULTS.parent.mkdir(exist_ok=True)
                RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    results["cost"] = {m: model_cost(m) for m in methods}
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    return results


def run_method(method: str, seed: int, teacher: str, tmp: str) -> dict:
    configs = stages(method, seed, teacher)
    record = dict(method=method, seed=seed, seconds=0.0)
    previous = None
    for i, c in enumerate(configs):
        workdir = teacher if method == "float" else f"{tmp}/{method}_{seed}_{i}"
        if previous is not None:
            c.init_from = previous
        config_lib.validate(c)
        last_ofq = method.startswith("ofq") and i == len(configs) - 1
        if last_ofq and method == "ofq_w2a2":
            r, record["oscillating_cga"] = run_with_codes(c, workdir, 2)
            plain = cga_stage(configs[0], 2, cga=False)
            plain.init_from = previous
            config_lib.validate(plain)
            _, record["oscillating_no_cga"] = run_with_codes(plain, f"{workdir}_plain", 2)
        else:
            r = loop.run(c, workdir)
        record["seconds"] += r["seconds"]
        previous = workdir
    record.update(top1=r["test_top1"], train_loss=r["train_loss"])
    print(f"{method} seed {seed}: top-1 {r['test_top1']:.4f}", flush=True)
    return record


# ---------------------------------------------------------------------------- render --
def markdown(results: dict) -> str:
    rows = []
    for method, what in METHODS.items():
        runs = [r for r in results["runs"] if r["method"] == method]
        if not runs:
            continue
        top1 = np.array([r["top1"] for r in runs]) * 100
        secs = np.array([r["seconds"] for r in runs])
        c = results["cost"].get(method, {})
        rows.append(f"| {method} | {what} | {top1.mean():.2f} +- {top1.std():.2f} | "
                    f"{len(runs)} | {secs.mean():.0f} | {c.get('params', 0):,} | "
                    f"{cost._num(c.get('ace', 0))} | {c.get('memory_bytes', 0) / 1024:.1f} |")
    osc = [r for r in results["runs"] if "oscillating_cga" in r]
    s = results["setup"]
    md = ["# A small ViT on MNIST-5k: OFQ, BiViT, sign and EcoFormer, same budget", "",
          f"Written by `experiments/vit_small.py` from `experiments/results/vit_small.json`. "
          f"Data: {s['data']}; model: {s['model']} (patch 7: 16 patches and a class token; "
          f"patch embedding and head full precision); {s['steps']} steps at batch "
          f"{s['batch']}, {s['optimizer']}, from scratch; seeds {s['seeds']}. OFQ: QAT for "
          f"{s['steps'] - s['cga_steps']} steps, then {s['cga_steps']} with CGA (boundary range "
          "0.005) at 1 % of the learning rate; KD hard + soft from the float run of the same "
          "seed (sign too); BiViT: half the steps with W1A1 MLPs, half with SAB attention too, "
          "soft KD. Params, ACE (float operands at 16 bits) and size per example from "
          "`bnn_jax.analysis.cost` (the layers' MACs; attention's own matrix products are not "
          "layers and are not counted). Train s: wall seconds after compiling, on a shared "
          "CPU, a rough guide only.", "",
          "| method | what | top-1 % (mean +- std) | seeds | train s | params | ACE | "
          "size (KiB) |", "|---|---|---|---|---|---|---|---|", *rows, ""]
    if results.get("skipped"):
        md += [f"Not run: {', '.join(results['skipped'])} (``bnn_jax.nn.ecoformer`` or "
               "``configs/ecoformer.py`` missing).", ""]
    if osc:
        with_cga = np.array([r["oscillating_cga"] for r in osc]) * 100
        without = np.array([r["oscillating_no_cga"] for r in osc]) * 100
        md += ["## OFQ's oscillation diagnostic (W2A2)", "",
               f"Share of the CGA-eligible weights (fc1, fc2, V, output projection) whose "
               f"StatsQ code changed direction at least once during the last "
               f"{s['cga_steps']} steps, recorded after every step; mean +- std over "
               f"{len(osc)} seeds.", "",
               "| final phase | oscillating weights % |", "|---|---|",
               f"| with CGA | {with_cga.mean():.3f} +- {with_cga.std():.3f} |",
               f"| without CGA (plain QAT) | {without.mean():.3f} +- {without.std():.3f} |", ""]
    return "\n".join(md)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--render", action="store_true", help="only render from the json")
    a = p.parse_args(argv)
    jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(tempfile.gettempdir())
                                                       / "bnn_jax_vit_small_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    results = json.loads(RESULTS.read_text()) if a.render else train_all()
    (HERE / "vit_small.md").write_text(markdown(results))
    print((HERE / "vit_small.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

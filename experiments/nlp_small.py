"""Small-scale evidence for the language methods, offline on CPU: TBT's bit settings and the
TWN baseline on a tiny BART, BiBERT against plain sign on a tiny BERT; the same budget, three
seeds.

  PYTHONPATH=. python experiments/nlp_small.py            # train (resumes), then render
  PYTHONPATH=. python experiments/nlp_small.py --render   # the tables from the json only
  PYTHONPATH=. python experiments/nlp_small.py --part seq2seq   # one part (both can run at once)

Writes ``results/nlp_small.json`` (a record per run, added as runs finish), then
``nlp_small.md``.

* Sequence to sequence: ``synthetic_seq2seq``, reverse a sequence of 5-11 random tokens (29
  token values), 2048 training pairs, 64 test pairs, ROUGE of beam search (2 beams) on the
  test pairs. One float BART teacher (``configs/tbt.py:quick,stage=teacher``); each student
  is the same tiny BART distilled from it with TBT's loss (``configs/tbt.py:quick``): float
  (no quantizers), TBT W2-E2-A8, W1-E1-A8, W2-E2-A2, W1-E1-A1, and the TWN W2-E2-A8 baseline.
  Students start from random weights (TBT starts them from the teacher's; a bnn_jax run does
  not initialize a quantized student of another run yet).
* Classification: ``synthetic_glue``, is the majority of a sequence's tokens in the lower half
  of the vocabulary (2048 train / 256 test sequences); one float BERT teacher; BiBERT
  (``configs/bibert.py:quick``) against plain sign: ``ste_sign`` weights and inputs in the same
  linears (encoder and pooler), softmax attention and word table kept in float, with
  BiBERT's distillation loss too.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import json
import pathlib
import tempfile

import jax
import numpy as np

from bnn_jax.train import config as config_lib
from bnn_jax.train import loop

HERE = pathlib.Path(__file__).parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "nlp_small.json"
SEEDS = (0, 1, 2)
STEPS = 300  # every student
SEQ2SEQ = {
    "float": "full precision (KD from the teacher)",
    "tbt_w2e2a8": "TBT W2-E2-A8",
    "tbt_w1e1a8": "TBT W1-E1-A8",
    "tbt_w2e2a2": "TBT W2-E2-A2",
    "tbt_w1e1a1": "TBT W1-E1-A1",
    "twn_w2e2a8": "TWN weights W2-E2-A8 (baseline)",
}
CLASSIFICATION = {
    "float": "full precision (KD from the teacher)",
    "bibert": "BiBERT W1-E1-A1 (Bi-Attention, DMD)",
    "sign": "plain sign weights and inputs, float attention",
}
SIGN_RULE = (r"(layers/\d+/(attention/(query|key|value|out)|intermediate|output)|pooler)",
             "ste_sign", "ste_sign")


def config_module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finish(c, seed: int):
    c.seed, c.tensorboard, c.async_checkpoint = seed, False, False
    c.log_every, c.checkpoint_every = 100, 10_000
    config_lib.validate(c)
    return c


def seq2seq_config(method: str, seed: int, teacher: str):
    tbt = config_module("tbt")
    if method == "teacher":
        return finish(tbt.get_config("quick,stage=teacher"), seed)
    if method == "float":
        c = tbt.get_config(f"quick,teacher={teacher},steps={STEPS}")
        c.model = dict(name="bart", **tbt.QUICK)
    else:
        weights, bits = method.split("_")
        c = tbt.get_config(f"quick,teacher={teacher},steps={STEPS},bits={bits.upper()},"
                           f"weights={weights}")
    return finish(c, seed)


def classification_config(method: str, seed: int, teacher: str):
    bibert = config_module("bibert")
    if method == "teacher":
        return finish(bibert.get_config("quick,stage=teacher"), seed)
    c = bibert.get_config(f"quick,teacher={teacher},steps={STEPS}")
    if method != "bibert":
        c.model = dict(name="bert", **bibert.QUICK)
    if method == "sign":
        c.quant = dict(rules=[SIGN_RULE])
    return finish(c, seed)


def _key(r: dict) -> tuple:
    return r["part"], r["method"], r["seed"]


def save(results: dict) -> None:
    """Write the runs, merged with those another process (the other part) wrote meanwhile."""
    RESULTS.parent.mkdir(exist_ok=True)
    with open(pathlib.Path(tempfile.gettempdir()) / "nlp_small.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        disk = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": []}
        mine = {_key(r) for r in results["runs"]}
        results["runs"] += [r for r in disk["runs"] if _key(r) not in mine]
        results["teachers"] = {**disk.get("teachers", {}), **results.get("teachers", {})}
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")


def train_all(only: str | None = None) -> dict:
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": []}
    setup = dict(seeds=list(SEEDS), steps=STEPS, seq2seq=list(SEQ2SEQ),
                 classification=list(CLASSIFICATION))
    if results.get("setup", setup) != setup:
        raise SystemExit(f"{RESULTS} holds runs of another setup ({results['setup']}); move it "
                         "away to start over")
    results["setup"] = setup
    done = {(r["part"], r["method"], r["seed"]) for r in results["runs"]}
    parts = (("seq2seq", SEQ2SEQ, seq2seq_config), ("classification", CLASSIFICATION,
                                                    classification_config))
    with tempfile.TemporaryDirectory() as tmp:
        for part, methods, make in parts:
            if only not in (None, part):
                continue
            teacher = f"{tmp}/{part}_teacher"
            todo = [(m, s) for s in SEEDS for m in methods if (part, m, s) not in done]
            if not todo:
                continue
            t = loop.run(make("teacher", 0, teacher), teacher)
            results.setdefault("teachers", {})[part] = {k: v for k, v in t.items()
                                                        if k.startswith("test_")}
            for method, seed in todo:
                r = loop.run(make(method, seed, teacher), f"{tmp}/{part}_{method}_{seed}")
                record = dict(part=part, method=method, seed=seed, seconds=r["seconds"],
                              **{k[5:]: v for k, v in r.items() if k.startswith("test_")})
                print(f"{part} {method} seed {seed}: "
                      + ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                                  if isinstance(v, float)), flush=True)
                results["runs"].append(record)
                save(results)
    save(results)
    return json.loads(RESULTS.read_text())


# ---------------------------------------------------------------------------- render --
def _stat(runs, key, scale=1.0):
    v = np.array([r[key] for r in runs]) * scale
    return f"{v.mean():.2f} +- {v.std():.2f}"


def markdown(results: dict) -> str:
    s = results["setup"]
    teachers = results.get("teachers", {})
    md = ["# Tiny BART and BERT, offline: TBT's bit settings and TWN, BiBERT and sign", "",
          "Written by `experiments/nlp_small.py` from `experiments/results/nlp_small.json`; "
          f"every student {s['steps']} steps with the same distillation loss, data and "
          f"optimizer; seeds {s['seeds']} (each seed draws its own data and initialization; the "
          "teachers are the seed-0 runs); mean +- std over seeds. Students start from random "
          "weights (the papers start them from the teacher), so these are relative results "
          "of the quantizers under one small budget, not reproductions of the papers' "
          "numbers.", "",
          "## Sequence to sequence: reverse a token sequence (tiny BART, TBT's loss)", "",
          "`synthetic_seq2seq`: 5-11 random tokens reversed, 2048 training and 64 test pairs; "
          "BART with 2+2 layers, width 32; `configs/tbt.py:quick` (task CE + logits soft-CE + "
          "hidden-state and attention-map MSE, all weight 1); ROUGE (percent) of 2-beam "
          "search on the test pairs, token accuracy teacher-forced."
          + (f" The float teacher: ROUGE-L {teachers['seq2seq']['test_rougeL']:.2f}, token "
             f"accuracy {100 * teachers['seq2seq']['test_accuracy']:.2f}."
             if "seq2seq" in teachers else ""), "",
          "| student | what | ROUGE-1 | ROUGE-2 | ROUGE-L | token accuracy % | seeds |",
          "|---|---|---|---|---|---|---|"]
    for method, what in SEQ2SEQ.items():
        runs = [r for r in results["runs"] if r["part"] == "seq2seq" and r["method"] == method]
        if runs:
            md.append(f"| {method} | {what} | {_stat(runs, 'rouge1')} | {_stat(runs, 'rouge2')} "
                      f"| {_stat(runs, 'rougeL')} | {_stat(runs, 'accuracy', 100)} | "
                      f"{len(runs)} |")
    md += ["", "## Classification: majority of low tokens (tiny BERT, BiBERT's loss)", "",
           "`synthetic_glue` (2 labels, sequences of 8-16 tokens, 2048 train / 256 test); BERT "
           "with 2 layers, width 32; `configs/bibert.py:quick` (soft-CE + 0.5 CE, hidden-state "
           "loss, DMD on Q, K, V)."
           + (f" The float teacher: accuracy "
              f"{100 * teachers['classification']['test_accuracy']:.2f}."
              if "classification" in teachers else ""), "",
           "| student | what | accuracy % | seeds |", "|---|---|---|---|"]
    for method, what in CLASSIFICATION.items():
        runs = [r for r in results["runs"]
                if r["part"] == "classification" and r["method"] == method]
        if runs:
            md.append(f"| {method} | {what} | {_stat(runs, 'accuracy', 100)} | {len(runs)} |")
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--render", action="store_true", help="only render from the json")
    p.add_argument("--part", choices=("seq2seq", "classification"), default=None,
                   help="train one part only (the two can run at once)")
    a = p.parse_args(argv)
    jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(tempfile.gettempdir())
                                                       / "bnn_jax_nlp_small_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    results = json.loads(RESULTS.read_text()) if a.render else train_all(a.part)
    (HERE / "nlp_small.md").write_text(markdown(results))
    print((HERE / "nlp_small.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

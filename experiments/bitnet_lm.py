"""The main text job measured: BitNet b1.58 vs float decoder LM on the offline corpus.

Trains ``configs/bitnet_lm.py`` and ``configs/bitnet_lm.py:float`` (seed 0, CPU), reads the
final ``test`` line of each run's ``metrics.jsonl``, writes the raw numbers to
``experiments/results/bitnet_lm.json`` and renders the table in ``experiments/bitnet_lm.md``
and in README.md (between the ``bitnet_lm`` markers) from that file. Usage:

  python experiments/bitnet_lm.py                 # train both, write json, render tables
  python experiments/bitnet_lm.py --render-only   # re-render the tables from the json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import platform
import re
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results" / "bitnet_lm.json"
REPORT = ROOT / "experiments" / "bitnet_lm.md"
README = ROOT / "README.md"
VARIANTS = (("BitNet b1.58 (ternary weights, 8-bit activations)", ""),
            ("float", "float"))


def load_config(arg):
    spec = importlib.util.spec_from_file_location("bitnet_lm", ROOT / "configs" / "bitnet_lm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def train_all(workroot: str) -> dict:
    from bnn_jax.train import run

    rows = []
    for label, arg in VARIANTS:
        c = load_config(arg)
        c.tensorboard = False
        workdir = os.path.join(workroot, arg or "bitnet")
        t0 = time.perf_counter()
        result = run(c, workdir)
        lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
        final = [x for x in lines if x["split"] == "test"][-1]
        rows.append({"model": label, "config": f"configs/bitnet_lm.py{':' + arg if arg else ''}",
                     "steps": c.total_steps, "test": final,
                     "train_loss": result["train_loss"],
                     "seconds": round(time.perf_counter() - t0, 1)})
    import jax

    return {"rows": rows, "machine": {"platform": platform.platform(),
                                      "devices": [str(d) for d in jax.devices()],
                                      "cpu_count": os.cpu_count()}}


def table(data: dict) -> str:
    lines = ["| model | config | steps | val perplexity (bytes) | bits per byte | val loss | "
             "train seconds |", "|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        t = r["test"]
        lines.append(f"| {r['model']} | `{r['config']}` | {r['steps']} | "
                     f"{t['perplexity']:.3f} | {t['bits_per_byte']:.3f} | {t['loss']:.4f} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines)


def render(data: dict) -> None:
    tbl = table(data)
    REPORT.write_text(
        "# BitNet b1.58 decoder LM on the offline corpus\n\n"
        "Rendered by `python experiments/bitnet_lm.py` from `experiments/results/"
        "bitnet_lm.json` (raw metrics of both runs). Byte-level tokens on the Python "
        "documentation (`pydoc_data`), validation split `test` of `metrics.jsonl`.\n\n"
        f"{tbl}\n\nMachine: {data['machine']['platform']}, {data['machine']['cpu_count']} "
        f"CPUs, devices {data['machine']['devices']}.\n")
    text = README.read_text()
    begin, end = "<!-- bitnet_lm:begin -->", "<!-- bitnet_lm:end -->"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end),
                      lambda _: f"{begin}\n{tbl}\n{end}", text, flags=re.S)
        README.write_text(text)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args()
    if not args.render_only:
        with tempfile.TemporaryDirectory() as root:
            data = train_all(root)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    render(json.loads(RESULTS.read_text()))
    print(table(json.loads(RESULTS.read_text())))


if __name__ == "__main__":
    main()

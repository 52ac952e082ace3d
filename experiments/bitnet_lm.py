"""The main text job measured: BitNet b1.58 vs float decoder LM on the offline corpus.

Trains ``configs/bitnet_lm.py`` and ``configs/bitnet_lm.py:float`` (seeds 0, 1, 2, CPU), reads
the final ``test`` line of each run's ``metrics.jsonl``, writes the raw numbers to
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
SEEDS = (0, 1, 2)


def load_config(arg):
    spec = importlib.util.spec_from_file_location("bitnet_lm", ROOT / "configs" / "bitnet_lm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def train_all(workroot: str) -> dict:
    from bnn_jax.train import run

    rows = []
    for label, arg in VARIANTS:
        for seed in SEEDS:
            c = load_config(arg)
            c.tensorboard, c.seed = False, seed
            workdir = os.path.join(workroot, f"{arg or 'bitnet'}_{seed}")
            t0 = time.perf_counter()
            result = run(c, workdir)
            lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
            final = [x for x in lines if x["split"] == "test"][-1]
            rows.append({"model": label,
                         "config": f"configs/bitnet_lm.py{':' + arg if arg else ''}",
                         "seed": seed, "steps": c.total_steps, "test": final,
                         "train_loss": result["train_loss"],
                         "seconds": round(time.perf_counter() - t0, 1),
                         "load_average": os.getloadavg()[0]})
    import jax

    return {"rows": rows, "machine": {"platform": platform.platform(),
                                      "devices": [str(d) for d in jax.devices()],
                                      "cpu_count": os.cpu_count()}}


def _groups(data: dict) -> list[tuple[str, str, list[dict]]]:
    out: dict[tuple[str, str], list[dict]] = {}
    for r in data["rows"]:
        out.setdefault((r["model"], r["config"]), []).append(r)
    return [(m, c, rs) for (m, c), rs in out.items()]


def _stat(values, fmt: str) -> str:
    """Mean (min-max) over the seeds."""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return format(mean, fmt)
    return f"{format(mean, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def table(data: dict) -> str:
    lines = ["| model | config | steps | val perplexity (bytes) | bits per byte | val loss | "
             "train seconds | seeds |", "|---|---|---|---|---|---|---|---|"]
    for model, config, rs in _groups(data):
        t = [r["test"] for r in rs]
        lines.append(
            f"| {model} | `{config}` | {rs[0]['steps']} | "
            f"{_stat([x['perplexity'] for x in t], '.3f')} | "
            f"{_stat([x['bits_per_byte'] for x in t], '.3f')} | "
            f"{_stat([x['loss'] for x in t], '.4f')} | "
            f"{_stat([r['seconds'] for r in rs], '.0f')} | "
            f"{', '.join(str(r.get('seed', 0)) for r in rs)} |")
    return "\n".join(lines)


def gap(data: dict) -> str:
    """The ternary model's mean perplexity relative to the float one, as a sentence."""
    (_, _, q), (_, _, f) = _groups(data)
    mq = sum(r["test"]["perplexity"] for r in q) / len(q)
    mf = sum(r["test"]["perplexity"] for r in f) / len(f)
    loads = [r["load_average"] for r in data["rows"] if "load_average" in r]
    load = f" (load average {min(loads):.1f}-{max(loads):.1f})" if loads else ""
    return (f"Mean (min-max) over seeds {', '.join(str(r.get('seed', 0)) for r in q)}, one CPU "
            f"device of a 2-core machine shared with other jobs{load}, so the seconds are "
            f"loose. At this size and budget the ternary model's perplexity is "
            f"{100 * (mq / mf - 1):.1f} % above the float one's.")


def render(data: dict) -> None:
    tbl = table(data)
    REPORT.write_text(
        "# BitNet b1.58 decoder LM on the offline corpus\n\n"
        "Rendered by `python experiments/bitnet_lm.py` from `experiments/results/"
        "bitnet_lm.json` (raw metrics of every run). Byte-level tokens on the Python "
        "documentation (`pydoc_data`), validation split `test` of `metrics.jsonl`.\n\n"
        f"{tbl}\n\n{gap(data)}\n\nMachine: {data['machine']['platform']}, "
        f"{data['machine']['cpu_count']} CPUs, devices {data['machine']['devices']}.\n")
    text = README.read_text()
    begin, end = "<!-- bitnet_lm:begin -->", "<!-- bitnet_lm:end -->"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end),
                      lambda _: f"{begin}\n{tbl}\n\n{gap(data)}\n{end}", text, flags=re.S)
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

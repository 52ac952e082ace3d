"""The main job's numbers: every variant for three seeds, then the README and kernels.md tables.

  python experiments/main_job.py               # run what is missing, then render the tables
  python experiments/main_job.py --render      # only re-render from experiments/results/
  python experiments/main_job.py --force       # rerun everything

Each run is the documented command (``python -m bnn_jax.main --config ... --workdir ...`` with
``--config.seed=S``) in a fresh workdir, timed from outside (wall time of the process, its CPU
time and peak memory) and from inside (``result.json``: test top-1 and training-loop seconds);
the binary CNN runs are then exported (``python -m bnn_jax.export``, read back from
``frozen.json``). Raw records go to ``experiments/results/main_job.json`` as soon as each run
ends, with the machine and its load average before and after every run; the tables in
README.md and experiments/kernels.md are rendered from that file only.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "results" / "main_job.json"
SEEDS = (0, 1, 2)

# name -> (label in the tables, config spec, extra overrides, export the checkpoint?)
VARIANTS = {
    "binary": ("binary, clipped STE (default)", "configs/digits_bnn.py", [], True),
    "approx_sign": ("binary, `:estimator=approx_sign`",
                    "configs/digits_bnn.py:estimator=approx_sign", [], True),
    "float": ("float, `:float` (same network, no quantizers)", "configs/digits_bnn.py:float", [],
              False),
    "mlp_binary": ("binary MLP, `configs/digits_mlp.py` (2 x 512, sign activations and weights)",
                   "configs/digits_mlp.py", [], False),
    "mlp_float": ("float MLP, `configs/digits_mlp.py:float`", "configs/digits_mlp.py:float", [],
                  False),
    "quick": ("binary, `:quick` (60 steps, 16 wide, 2 blocks)", "configs/digits_bnn.py:quick", [],
              False),
    "rsign_bivit": ("RSign input + BiViT kernel, `:steps=500`", "configs/digits_bnn.py:steps=500",
                    ["--config.model.input_quantizer.name=rsign",
                     "--config.model.kernel_quantizer.name=bivit_weight"], True),
    "lsq_input": ("LSQ 2-bit input + ±1 kernel, `:steps=500`", "configs/digits_bnn.py:steps=500",
                  ["--config.model.input_quantizer.name=lsq"], True),
}
README_TABLE = ("binary", "approx_sign", "float", "mlp_binary", "mlp_float", "quick")
EXPORT_TABLE = ("binary", "rsign_bivit", "lsq_input")


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = ""
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                    if ln.startswith("model name")), "")
    except OSError:
        pass
    import importlib.util

    import jax

    def has(mod):
        return importlib.util.find_spec(mod) is not None

    return {"cpu": cpu or platform.processor(), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(),
            "jax": jax.__version__, "tensorflow_installed": has("tensorflow"),
            "tensorboardX_installed": has("tensorboardX")}


def timed(cmd: list[str], log: pathlib.Path) -> dict:
    """Run ``cmd`` in the repository; wall seconds, CPU seconds, peak RSS, load before/after."""
    env = {k: v for k, v in os.environ.items() if k != "BNN_JAX_MAX_STEPS"}
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise RuntimeError(f"{' '.join(cmd)} exited with {code}; see {log}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024, "load_before": load0,
            "load_after": os.getloadavg()[0]}


def run_one(name: str, seed: int, root: pathlib.Path) -> dict:
    """Train (and export) one variant at one seed in a fresh workdir."""
    _, spec, extra, export = VARIANTS[name]
    wd = root / f"{name}-s{seed}"
    shutil.rmtree(wd, ignore_errors=True)
    wd.mkdir(parents=True)
    cmd = [sys.executable, "-m", "bnn_jax.main", f"--config={spec}", f"--workdir={wd}",
           f"--config.seed={seed}", *extra]
    rec = {"variant": name, "seed": seed, "command": " ".join(cmd[1:]), "train": timed(
        cmd, wd / "console.log")}
    result = json.loads((wd / "result.json").read_text())
    rec["test_top1"], rec["loop_s"] = result["test_top1"], result["seconds"]
    if export:
        rec["export"] = {**timed([sys.executable, "-m", "bnn_jax.export", f"--workdir={wd}"],
                                 wd / "export.log"),
                         **json.loads((wd / "frozen.json").read_text())}
    return rec


def load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": []}


def save(data: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(RESULTS)


def _runs(data, name):
    return [r for r in data["runs"] if r["variant"] == name]


def _rng(values, fmt, unit=""):
    """``mean unit (min-max)`` over the runs (one run: the value alone)."""
    lo, hi = min(values), max(values)
    mean = sum(values) / len(values)
    if len(values) == 1:
        return fmt(mean) + unit
    return f"{fmt(mean)}{unit} ({fmt(lo)}-{fmt(hi)})"


def pct(v):
    return f"{100 * v:.1f}"


def secs(v):
    return f"{v:.0f}"


def acc4(v):
    return f"{v:.4f}"


def model_totals(name: str) -> dict:
    """Model summary totals of a variant (``bnn_jax.analysis.summary``), built from its config."""
    sys.path.insert(0, str(REPO))
    from flax import nnx

    from bnn_jax import data as data_lib
    from bnn_jax import models
    from bnn_jax.analysis import summary
    from bnn_jax.sweep import load_config_module

    path, _, arg = VARIANTS[name][1].partition(":")
    module, arg = load_config_module(f"{REPO / path}:{arg}" if arg else str(REPO / path))
    c = module.get_config(arg)
    ds = data_lib.build(c.data, seed=c.seed)
    m = models.build(c.model, num_classes=ds.num_classes, input_shape=ds.image_shape,
                     rngs=nnx.Rngs(0))
    return summary.totals(summary.summarize(m))


def readme_table(data: dict) -> str:
    """The README's main-job block: model size, then mean (min-max) over the seeds."""
    m, t = data["machine"], data["model_totals"]["binary"]
    all_runs = [r for n in README_TABLE for r in _runs(data, n)]
    loads = [x for r in all_runs for x in (r["train"]["load_before"], r["train"]["load_after"])]
    share = [r["train"]["cpu_s"] / r["train"]["wall_s"] for r in all_runs]
    lines = [f"The default network has {t['quantized_params']:,} binary and "
             f"{t['float_params']:,} float parameters (+ {t['non_trainable']:,} BatchNorm "
             f"statistics): {t['memory_bytes'] / 1000:.1f} kB at 1 bit per binary weight instead "
             f"of {t['float32_bytes'] / 1000:.0f} kB in float32 (model summary).", "",
             "| variant | test top-1 (360 held-out digits) | wall time of the command | "
             "training loop | runs |", "|---|---|---|---|---|"]
    for n in README_TABLE:
        rs = _runs(data, n)
        lines.append(f"| {VARIANTS[n][0]} | {_rng([r['test_top1'] for r in rs], pct, ' %')} | "
                     f"{_rng([r['train']['wall_s'] for r in rs], secs, ' s')} | "
                     f"{_rng([r['loop_s'] for r in rs], secs, ' s')} | seeds "
                     f"{', '.join(str(r['seed']) for r in rs)} |")
    peak = max(r["train"]["peak_rss_mb"] for r in all_runs) / 1024
    lines += ["", f"Mean (min-max) over the seeds, measured {data['date']} on {m['cpu_count']} "
              f"CPU cores ({m['cpu']}) shared with other jobs: load average "
              f"{min(loads):.1f}-{max(loads):.1f} during the runs, which got "
              f"{100 * min(share):.0f}-{100 * max(share):.0f} % of one core; peak memory "
              f"{peak:.1f} GB; Python {m['python']}, jax {m['jax']}. The wall time includes "
              "start-up and compilation; the training loop is `result.json`'s `seconds`."]
    return "\n".join(lines)


def quickstart_claim(data: dict) -> str:
    """The quick-start comment: accuracy and wall-time range of the default command."""
    rs = _runs(data, "binary")
    acc = [r["test_top1"] for r in rs]
    wall = [r["train"]["wall_s"] for r in rs]
    return (f"{100 * min(acc):.1f}-{100 * max(acc):.1f} % test, "
            f"{min(wall):.0f}-{max(wall):.0f} s on 2 shared CPU cores")


def export_claim(data: dict) -> str:
    """The README's one-line export result of the default binary runs."""
    es = [r["export"] for r in _runs(data, "binary")]
    fq, fr = [e["fake_quant_top1"] for e in es], [e["frozen_top1"] for e in es]
    if fq == fr:
        acc = f"test top-1 {_rng(fr, acc4)}, the same as the fake-quant model's"
    else:
        acc = f"test top-1 frozen {_rng(fr, acc4)}, fake-quant {_rng(fq, acc4)}"
    return (f"{acc} over {len(es)} seeds, {es[0]['bytes_before'] / 1000:.0f} kB -> "
            f"{es[0]['bytes_after'] / 1000:.0f} kB")


def export_table(data: dict) -> str:
    """kernels.md's export block: per run kind, sizes and accuracy; per layer for the default."""
    lines = ["| run | frozen layers | state before -> after (bytes) | weight planes + overhead "
             "(bytes) | test top-1 fake-quant | test top-1 frozen | max logit diff | runs |",
             "|---|---|---|---|---|---|---|---|"]
    for n in EXPORT_TABLE:
        rs = _runs(data, n)
        e = rs[0]["export"]
        frozen = "; ".join(f"{v} x {k}" for k, v in sorted(e["frozen_kinds"].items()))
        lines.append(
            f"| {VARIANTS[n][0]} | {frozen} | {e['bytes_before']:,} -> {e['bytes_after']:,} | "
            f"{e['plane_bytes']:,} + {e['bytes_after'] - e['plane_bytes']:,} | "
            f"{_rng([r['export']['fake_quant_top1'] for r in rs], acc4)} | "
            f"{_rng([r['export']['frozen_top1'] for r in rs], acc4)} | "
            f"{max(r['export']['max_logit_diff'] for r in rs):.2g} | seeds "
            f"{', '.join(str(r['seed']) for r in rs)} |")
    e = _runs(data, "binary")[0]["export"]
    sizes = {json.dumps([(r["bytes_before"], r["bytes_after"], r["plane_bytes"])
                         for r in x["export"]["layers"]]) for x in _runs(data, "binary")}
    same = "the same for every seed" if len(sizes) == 1 else "sizes differ between seeds"
    lines += ["", f"Per layer, default binary run (seed {_runs(data, 'binary')[0]['seed']}; "
              f"{same}):", "",
              "| layer | weights | float32 (bytes) | frozen (bytes) | bits/weight (planes) | "
              "overhead (bytes) | encoding |", "|---|---|---|---|---|---|---|"]
    for r in e["layers"]:
        enc = f"W:{r['encoding']} A:{r['activations']}" if r["frozen"] else "kept float"
        lines.append(f"| {r['path']} | {r['weights']:,} | {r['bytes_before']:,} | "
                     f"{r['bytes_after']:,} | {r['bits_per_weight']:.3f} | "
                     f"{r['overhead_bytes']:,} | {enc} |")
    lines.append(f"\nFile `frozen.npz`: {e['file_bytes']:,} bytes.")
    return "\n".join(lines)


def replace_block(path: pathlib.Path, marker: str, body: str, inline: bool = False) -> None:
    """Rewrite the text between ``<!-- marker:start -->`` and ``<!-- marker:end -->``."""
    text = path.read_text()
    nl = "" if inline else "\n"
    start, end = f"<!-- {marker}:start -->{nl}", f"<!-- {marker}:end -->"
    if start not in text or end not in text:
        raise ValueError(f"{path} has no {start.strip()} ... {end} block")
    head, rest = text.split(start, 1)
    path.write_text(head + start + body + nl + end + rest.split(end, 1)[1])


def render(data: dict) -> None:
    """README.md's main-job table, quick-start claim and export claim; kernels.md's export block."""
    missing = [n for n in (*README_TABLE, *EXPORT_TABLE) if not _runs(data, n)]
    if missing:
        print(f"not rendering: no runs recorded for {missing}", file=sys.stderr)
        return
    if "model_totals" not in data:
        data["model_totals"] = {"binary": model_totals("binary")}
        save(data)
    readme = REPO / "README.md"
    replace_block(readme, "main-job-table", readme_table(data))
    replace_block(readme, "export-claim", export_claim(data), inline=True)
    text = readme.read_text()
    text = re.sub(r"(# binary CNN on real digits, offline: ).*", r"\g<1>" + quickstart_claim(data),
                  text, count=1)
    readme.write_text(text)
    replace_block(REPO / "experiments" / "kernels.md", "export-table", export_table(data))
    print(readme_table(data) + "\n\n" + export_table(data))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--render", action="store_true", help="only render the tables")
    p.add_argument("--force", action="store_true", help="rerun runs that are already recorded")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    p.add_argument("--root", default="/tmp/bnn_jax_main_job", help="parent of the workdirs")
    args = p.parse_args(argv)
    if os.environ.get("BNN_JAX_MAX_STEPS"):
        print("BNN_JAX_MAX_STEPS is set: the recorded numbers must be full runs; unset it.",
              file=sys.stderr)
        return 2
    data = load()
    if not args.render:
        data["machine"] = machine()
        data["date"] = time.strftime("%Y-%m-%d")
        for name in args.variants.split(","):
            if name not in VARIANTS:
                print(f"unknown variant {name!r}; valid: {list(VARIANTS)}", file=sys.stderr)
                return 2
            for seed in SEEDS:
                done = [r for r in data["runs"] if (r["variant"], r["seed"]) == (name, seed)]
                if done and not args.force:
                    continue
                rec = run_one(name, seed, pathlib.Path(args.root))
                data["runs"] = [r for r in data["runs"] if r not in done] + [rec]
                save(data)
                print(f"{name} seed {seed}: top-1 {rec['test_top1']:.4f}, wall "
                      f"{rec['train']['wall_s']:.0f} s, loop {rec['loop_s']:.0f} s", flush=True)
    render(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())

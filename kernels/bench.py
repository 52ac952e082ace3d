"""Benchmark of the packed operations against float XLA, in interleaved rounds; report from records.

``python -m bnn_jax.kernels.bench --out DIR [--quick] [--rounds R]`` times every workload and
writes ``DIR/kernels.json`` (raw records: the machine, the load sampled during the run, every
round's time of every candidate); without ``--out`` it only prints. ``python -m
bnn_jax.kernels.bench --render DIR/kernels.json --md experiments/kernels.md --readme README.md``
fills the marked blocks of those files from the records (nothing else in them changes).

Each workload has candidates (the native CPU kernels, the XLA packed path, the float32 XLA
op of the same shape, GEMV variants) that are compiled and warmed up first, then timed in R
rounds; each round times every candidate once (the median of a few calls), in an order that
rotates from round to round, so a burst of load from other processes hits all candidates
alike. Ratios are float time / packed time of the same round (> 1: packed is faster); the
report gives their median and range over the rounds. The ceiling is the bare XNOR-popcount
register tile of the native library on L1-resident operands (``native.ceiling``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform as py_platform
import resource
import statistics
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bnn_jax.kernels import native, ops
from bnn_jax.kernels.packing import pack

FORMAT = 2  # version of the records file
FLAGS = ("popcnt", "bmi2", "fma", "avx2", "avx512f", "avx512bw", "avx512_vpopcntdq", "avx_vnni",
         "avx512_vnni")


# ----------------------------------------------------------------------------- timing

def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn, args, calls: int) -> tuple[float, float]:
    """(median seconds per call over ``calls`` calls, CPU cores used meanwhile)."""
    times = []
    c0, w0 = _cpu_s(), time.perf_counter()
    for _ in range(calls):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    wall = time.perf_counter() - w0
    return statistics.median(times), (_cpu_s() - c0) / max(wall, 1e-9)


def measure(candidates: dict, rounds: int, budget_s: float) -> dict:
    """Interleaved rounds over ``candidates`` (name -> (fn, args)): per name the round times
    and cores used. Each candidate gets about ``budget_s`` of calls per round."""
    calls = {}
    for name, (fn, args) in candidates.items():
        jax.block_until_ready(fn(*args))  # compile
        t, _ = timed(fn, args, 2)
        calls[name] = int(min(50, max(3, budget_s / max(t, 1e-7))))
    names = list(candidates)
    times = {n: [] for n in names}
    cores = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, args = candidates[name]
            t, c = timed(fn, args, calls[name])
            times[name].append(t)
            cores[name].append(c)
    return dict(times_s=times, cores=cores, calls=calls)


class LoadSampler:
    """Samples /proc/loadavg (1-minute) and this process's CPU use once a second."""

    def __init__(self):
        self.samples, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(1.0):
            self.samples.append(_loadavg()[0])

    def __enter__(self):
        self.samples.append(_loadavg()[0])
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append(_loadavg()[0])


def _loadavg() -> list[float]:
    try:
        return [float(v) for v in pathlib.Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return [float("nan")] * 3


def machine() -> dict:
    """CPU model, the instruction-set flags that matter here, core counts, native library."""
    info = dict(cpu=py_platform.processor() or py_platform.machine(), flags=[],
                logical_cpus=os.cpu_count(), usable_cpus=len(os.sched_getaffinity(0)))
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and info["cpu"] in ("", py_platform.machine(),
                                                       py_platform.processor()):
                info["cpu"] = value.strip()
            elif key in ("cpu family", "model") and key.replace(" ", "_") not in info:
                info[key.replace(" ", "_")] = value.strip()
            elif key == "flags" and not info["flags"]:
                have = set(value.split())
                info["flags"] = [f for f in FLAGS if f in have]
    except OSError:
        pass
    info.update(platform=jax.devices()[0].platform, jax=jax.__version__,
                native=native.available())
    if native.available():
        info.update(native_isa=native.isa(), native_threads=native.num_threads())
    return info


# ----------------------------------------------------------------------------- workloads

def _pm1(rng, shape):
    # Device arrays: numpy arguments would time a host copy on every call.
    return jnp.asarray(np.where(rng.random(shape, dtype=np.float32) < 0.5, -1, 1)
                       .astype(np.float32))


def _conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def packed_backends() -> list[str]:
    """The packed candidates of this platform: the native kernels (when built) and XLA."""
    return (["cpu_native"] if jax.devices()[0].platform == "cpu" and native.available()
            else []) + ["xla"]


def wl_matmul(rng, m, k, n):
    """±1 (M, K) x (K, N) -> int32 on packed operands, against the f32 dot."""
    a, w = _pm1(rng, (m, k)), _pm1(rng, (k, n))
    pa, pw = pack(a, -1, backend="xla"), pack(w, 0)
    cands = {be: (jax.jit(lambda x, y, be=be: ops.packed_matmul(x, y, backend=be)), (pa, pw))
             for be in packed_backends()}
    cands["f32"] = (jax.jit(jnp.dot), (a, w))
    return dict(op="xnor_matmul", shape=[m, k, n], bit_macs=m * k * n), cands


def wl_fc(rng, m, k=4096):
    """Binary FC layer including the packing of its float input (the LCE benchmark layer)."""
    a, w = _pm1(rng, (m, k)), _pm1(rng, (k, k))
    pw = pack(w, 0)
    cands = {be: (jax.jit(lambda x, y, be=be: ops.packed_matmul(pack(x, -1, backend=be), y,
                                                                backend=be)), (a, pw))
             for be in packed_backends()}
    cands["f32"] = (jax.jit(jnp.dot), (a, w))
    return dict(op="fc_with_packing", shape=[m, k, k], bit_macs=m * k * k), cands


def wl_conv(rng, batch, hw, c):
    """Binary 3x3 SAME conv C -> C (zero padding, corrected) on packed NHWC activations."""
    x, w = _pm1(rng, (batch, hw, hw, c)), _pm1(rng, (3, 3, c, c))
    px, pw = pack(x, 3, backend="xla"), pack(w, 2)
    cands = {be: (jax.jit(lambda x, y, be=be: ops.packed_conv2d(x, y, padding="SAME",
                                                                backend=be)), (px, pw))
             for be in packed_backends()}
    cands["f32"] = (jax.jit(_conv), (x, w))
    return dict(op="xnor_conv3x3", shape=[batch, hw, hw, c],
                bit_macs=batch * hw * hw * 9 * c * c), cands


def wl_conv_stack(rng, hw=28, c=256, depth=4):
    """``depth`` binary 3x3 convs, batch 1, re-binarizing (sign + pack) between them."""
    x = _pm1(rng, (1, hw, hw, c))
    ws = [_pm1(rng, (3, 3, c, c)) for _ in range(depth)]
    pws = [pack(w, 2) for w in ws]

    def packed(x, pws, be):
        p = pack(x, 3, backend=be)
        for pw in pws:  # each layer's int32 output is binarized (sign) and packed for the next
            y = ops.packed_conv2d(p, pw, padding="SAME", backend=be)
            p = pack(y, 3, backend=be)
        return y

    def float_stack(x, ws):
        for w in ws:
            x = _conv(x, w)
        return x

    cands = {be: (jax.jit(lambda x, p, be=be: packed(x, p, be)), (x, pws))
             for be in packed_backends()}
    cands["f32"] = (jax.jit(float_stack), (x, ws))
    return dict(op="conv_stack4", shape=[1, hw, hw, c], bit_macs=depth * hw * hw * 9 * c * c), \
        cands


def wl_gemv(rng, k, n, encoding):
    """Packed ±1 / ternary weights times one f32 activation row (a decoding step), every
    native GEMV body, the XLA path and the f32 dot."""
    x = jnp.asarray(rng.normal(size=(1, k)).astype(np.float32))
    w = _pm1(rng, (k, n)) if encoding == "binary" else jnp.asarray(
        rng.integers(-1, 2, (k, n)).astype(np.float32))
    pw = pack(w, 0, encoding)
    cands = {}
    if "cpu_native" in packed_backends():
        for method in native.GEMV_METHODS:
            if method == "int8":
                fn = jax.jit(lambda x, y: ops.packed_weight_matmul(x, y, backend="cpu_native",
                                                                   act_quant="int8"))
                cands["native_int8"] = (fn, (x, pw))
            else:
                fn = jax.jit(lambda x, s, m, method=method: native.weight_matmul(x, s, m, method))
                cands[f"native_{method}"] = (fn, (x, pw.sign, pw.mask))
        cands["cpu_native"] = (jax.jit(lambda x, y: ops.packed_weight_matmul(
            x, y, backend="cpu_native")), (x, pw))
    cands["xla"] = (jax.jit(lambda x, y: ops.packed_weight_matmul(x, y, backend="xla")), (x, pw))
    cands["f32"] = (jax.jit(jnp.dot), (x, w))
    op = "w1a32_gemv" if encoding == "binary" else "w158a32_gemv"
    return dict(op=op, shape=[1, k, n], bit_macs=None), cands


def workloads(quick: bool):
    """(builder, args) of every workload of a full run, or of the quick smoke run."""
    if quick:
        return [(wl_matmul, (8, 1024, 1024)), (wl_conv, (1, 14, 64)),
                (wl_gemv, (1024, 1024, "ternary")), (wl_fc, (1, 1024))]
    out = [(wl_matmul, (m, 4096, 4096)) for m in (1, 8, 64, 256)]
    out += [(wl_conv, (1, 28, 256)), (wl_conv, (1, 56, 64)), (wl_conv_stack, ())]
    out += [(wl_fc, (m,)) for m in (1, 64)]
    out += [(wl_gemv, (4096, n, e)) for e in ("binary", "ternary") for n in (4096, 11008)]
    return out


def run(quick: bool, rounds: int, log=print) -> dict:
    """Every record of one benchmark run, with the machine and the load during it."""
    rng = np.random.default_rng(0)
    budget = 0.05 if quick else 0.15  # seconds of calls per candidate per round
    meta = dict(format=FORMAT, machine=machine(), rounds=rounds, quick=quick,
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    records = []
    t0 = time.perf_counter()
    with LoadSampler() as load:
        if native.available():
            threads = sorted({1, native.machine_threads()})
            ceil = {str(t): [native.ceiling(t, 0.1 if quick else 0.3) for _ in range(rounds)]
                    for t in threads}
            records.append(dict(op="ceiling", shape=[], gbit_macs=ceil, isa=native.isa()))
            log("ceiling Gbit-MAC/s: " + ", ".join(f"{t} thread(s) {statistics.median(v):.0f}"
                                                      for t, v in ceil.items()))
        for build, args in workloads(quick):
            rec, cands = build(rng, *args)
            rec.update(measure(cands, rounds, budget))
            records.append(rec)
            log(_summary(rec))
    meta.update(wall_s=time.perf_counter() - t0, load_1min=load.samples)
    return dict(meta=meta, records=records)


# ----------------------------------------------------------------------------- report

def primary(rec) -> str:
    """The candidate ``backend='auto'`` runs for this record (native when it was measured)."""
    return "cpu_native" if "cpu_native" in rec["times_s"] else "xla"


def ratios(rec, num: str = "f32", den: str | None = None) -> list[float]:
    """Per-round time ratios num / den (default: f32 / the primary packed candidate)."""
    den = den or primary(rec)
    return [a / b for a, b in zip(rec["times_s"][num], rec["times_s"][den])]


def _med_range(values, fmt="{:.1f}") -> str:
    return (f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-"
            f"{fmt.format(max(values))})")


def _ms(values) -> str:
    return _med_range([v * 1e3 for v in values], "{:.3f}")


def ceiling_record(records):
    hits = [r for r in records if r["op"] == "ceiling"]
    return hits[0] if hits else None


def gemm_efficiency(rec, ceil) -> list[float]:
    """Per-round fraction of the all-threads ceiling the native GEMM reached (same round)."""
    top = ceil["gbit_macs"][max(ceil["gbit_macs"], key=int)]
    achieved = [rec["bit_macs"] / t * 1e-9 for t in rec["times_s"]["cpu_native"]]
    return [a / c for a, c in zip(achieved, top)]


def _find(records, op, shape):
    return [r for r in records if r["op"] == op and r["shape"] == list(shape)]


def _judge(values, need) -> str:
    med = statistics.median(values)
    hits = sum(v >= need for v in values)
    verdict = "met" if med >= need else "NOT met"
    return f"**{verdict}** (median {med:.2f}; {hits} of {len(values)} rounds >= {need:g})"


def targets(records) -> list[str]:
    """One line per target of the native CPU backend, judged from the records."""
    lines = []
    ceil = ceiling_record(records)
    gemms = [r for m in (64, 256) for r in _find(records, "xnor_matmul", (m, 4096, 4096))
             if "cpu_native" in r["times_s"]]
    text = "XNOR GEMM K=N=4096, M=64 and 256 >= 80 % of the all-cores ceiling"
    if ceil and gemms:
        lines.append(f"- {text}: " + "; ".join(
            f"M={r['shape'][0]} {_judge(gemm_efficiency(r, ceil), 0.8)}" for r in gemms))
    else:
        lines.append(f"- {text}: not measured in this run")
    checks = [("xnor_matmul", (64, 4096, 4096), 5.0, "matmul K=N=4096 M=64 >= 5x f32"),
              ("xnor_matmul", (256, 4096, 4096), 5.0, "matmul K=N=4096 M=256 >= 5x f32"),
              ("xnor_matmul", (1, 4096, 4096), 30.0, "matmul K=N=4096 M=1 >= 30x f32"),
              ("conv_stack4", (1, 28, 28, 256), 4.0, "4-conv stack 28x28x256 >= 4x f32"),
              ("w158a32_gemv", (1, 4096, 4096), 1.0, "W1.58 GEMV 4096x4096 faster than f32"),
              ("w158a32_gemv", (1, 4096, 11008), 1.0, "W1.58 GEMV 4096x11008 faster than f32")]
    for op, shape, need, text in checks:
        hits = _find(records, op, shape)
        lines.append(f"- {text}: " + (_judge(ratios(hits[0]), need) if hits
                                      else "not measured in this run"))
    lines.append("- 4-conv stack >= 2x faster than the larq compute engine's best: not measured "
                 "in this run (the engine is not part of this benchmark)")
    return lines


def _fmt_shape(shape):
    return "x".join(map(str, shape))


def markdown(data) -> str:
    """The results block of experiments/kernels.md, from the records alone."""
    meta, records = data["meta"], data["records"]
    mc = meta["machine"]
    load = meta["load_1min"]
    out = [f"Machine: {mc['cpu']} (family {mc.get('cpu_family', '?')}, model "
           f"{mc.get('model', '?')}), {mc['usable_cpus']} usable of {mc['logical_cpus']} logical "
           f"CPUs; flags: {', '.join(mc['flags']) or 'none'}; native kernels: "
           f"{mc.get('native_isa', 'unavailable')}, {mc.get('native_threads', '-')} threads; "
           f"jax {mc['jax']} ({mc['platform']}).", "",
           f"Run: {meta['date']}, {meta['rounds']} interleaved rounds, wall time "
           f"{meta['wall_s']:.0f} s; 1-minute load average during the run {min(load):.2f}-"
           f"{max(load):.2f} (sampled every second).", ""]
    ceil = ceiling_record(records)
    if ceil:
        out += [f"XNOR-popcount ceiling ({ceil['isa']} register tile, L1-resident operands), "
                f"Gbit-MAC/s, median (min-max) over the rounds: " + "; ".join(
                    f"{t} thread(s) {_med_range(v, '{:.0f}')}"
                    for t, v in ceil["gbit_macs"].items()) + ".", ""]
    out += ["Times in ms, median (min-max) over the rounds; ratios per round against f32 of the "
            "same round; cores = CPU time / wall time while the candidate ran.", "",
            "| op | shape | packed (auto) ms | f32 ms | f32 / packed | XLA packed ms | "
            "XLA / native | cores packed / f32 | Gbit-MAC/s packed |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r["op"] == "ceiling":
            continue
        p = primary(r)
        t = r["times_s"]
        xla_col = _ms(t["xla"]) if p != "xla" else ""
        xla_ratio = _med_range(ratios(r, "xla"), "{:.1f}") + "x" if p != "xla" else ""
        rate = (_med_range([r["bit_macs"] / v * 1e-9 for v in t[p]], "{:.0f}")
                if r.get("bit_macs") else "")
        out.append(f"| {r['op']} | {_fmt_shape(r['shape'])} | {_ms(t[p])} | {_ms(t['f32'])} | "
                   f"{_med_range(ratios(r), '{:.1f}')}x | {xla_col} | {xla_ratio} | "
                   f"{statistics.median(r['cores'][p]):.2f} / "
                   f"{statistics.median(r['cores']['f32']):.2f} | {rate} |")
    gemvs = [r for r in records if r["op"].endswith("_gemv") and "native_lut" in r["times_s"]]
    if gemvs:
        names = [n for n in gemvs[0]["times_s"] if n.startswith("native_")]
        out += ["", "GEMV bodies of the native library (f32 / variant, median (min-max)); "
                f"`packed_weight_matmul` uses `{native.GEMV_AUTO}` (`int8` is the W1.58A8 "
                "variant, `act_quant=\"int8\"`, which rounds the activations first):", "",
                "| op | shape | " + " | ".join(n.removeprefix("native_") for n in names) + " |",
                "|---|---|" + "---|" * len(names)]
        for r in gemvs:
            out.append(f"| {r['op']} | {_fmt_shape(r['shape'])} | " + " | ".join(
                _med_range(ratios(r, "f32", n), "{:.2f}") + "x" for n in names) + " |")
    out += ["", "Targets (computed from the records above):", *targets(records)]
    return "\n".join(out)


def readme_claim(data) -> str:
    """The measured ratios that README's deploy section states, from the records alone."""
    records, mc = data["records"], data["meta"]["machine"]
    parts = []
    for m in (1, 64, 256):
        hits = _find(records, "xnor_matmul", (m, 4096, 4096))
        if hits:
            parts.append(f"M={m} {_med_range(ratios(hits[0]))}x")
    text = (f"on {mc['cpu']} ({mc['usable_cpus']} cores, {mc.get('native_isa', 'XLA')}; "
            f"{data['meta']['date']}), the packed ±1 matmul at K=N=4096 is "
            + ", ".join(parts) + " faster than the f32 dot")
    stack = _find(records, "conv_stack4", (1, 28, 28, 256))
    if stack:
        text += f", the 4-conv binary stack {_med_range(ratios(stack[0]))}x"
    gemv = _find(records, "w158a32_gemv", (1, 4096, 4096))
    if gemv:
        text += f", the W1.58 GEMV 4096x4096 {_med_range(ratios(gemv[0]), '{:.2f}')}x"
    ceil = ceiling_record(records)
    gemm = _find(records, "xnor_matmul", (256, 4096, 4096))
    if ceil and gemm and "cpu_native" in gemm[0]["times_s"]:
        eff = [100 * e for e in gemm_efficiency(gemm[0], ceil)]
        text += f"; the M=256 XNOR GEMM runs at {_med_range(eff, '{:.0f}')} % of the all-cores " \
                "popcount ceiling"
    return text + " (median (min-max) over interleaved rounds)"


MARKS = {"bench": ("<!-- bench:start -->", "<!-- bench:end -->"),
         "kernels-claim": ("<!-- kernels-claim:start -->", "<!-- kernels-claim:end -->"),
         "llm-decode": ("<!-- llm-decode:start -->", "<!-- llm-decode:end -->")}
MARK_START, MARK_END = MARKS["bench"]


def write_block(path: pathlib.Path, block: str, marker: str = "bench", inline: bool = False):
    """Replace the text between ``marker``'s start and end comments of an existing file."""
    start, end = MARKS[marker]
    text = path.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{path} has no {start} ... {end} block to fill")
    head, rest = text.split(start, 1)
    sep = "" if inline else "\n"
    text = head + start + sep + block + sep + end + rest.split(end, 1)[1]
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _summary(rec) -> str:
    p = primary(rec)
    return (f"{rec['op']:<16} {_fmt_shape(rec['shape']):<16} {p} {_ms(rec['times_s'][p])} ms  "
            f"f32 {_ms(rec['times_s']['f32'])} ms  f32/packed {_med_range(ratios(rec))}x")


def main(argv=None):
    """Measure (``--out``: write the records) or render (``--render``: fill the reports)."""
    parser = argparse.ArgumentParser(prog="python -m bnn_jax.kernels.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="directory for kernels.json (default: print only)")
    parser.add_argument("--quick", action="store_true", help="smoke run: small shapes")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default "
                        "7, quick 2)")
    parser.add_argument("--isa", choices=list(native.ISAS), help="cap the native kernels' "
                        "instruction set (default: the best this CPU has)")
    parser.add_argument("--threads", type=int, help="native thread pool size (default: every "
                        "usable CPU)")
    parser.add_argument("--render", metavar="JSON", help="render these records instead of "
                        "measuring")
    parser.add_argument("--md", help="with --render: the file whose bench block is replaced")
    parser.add_argument("--readme", help="with --render: the README whose kernels-claim block "
                        "is replaced")
    args = parser.parse_args(argv)
    if args.render:
        data = json.loads(pathlib.Path(args.render).read_text())
        if data.get("meta", {}).get("format") != FORMAT:
            raise SystemExit(f"{args.render}: not a records file of this benchmark (format "
                             f"{FORMAT}); produce one with --out DIR")
        block = markdown(data)
        print(block)
        if args.md:
            write_block(pathlib.Path(args.md), block)
        if args.readme:
            write_block(pathlib.Path(args.readme), readme_claim(data), "kernels-claim",
                        inline=True)
        return
    if args.md or args.readme:
        parser.error("--md and --readme go with --render")
    rounds = args.rounds or (2 if args.quick else 7)
    if rounds < 1:
        parser.error("--rounds must be >= 1")
    out = pathlib.Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        parser.error(f"--out {out} exists and is not a directory")
    if args.isa:
        native.set_isa(args.isa)
    if args.threads is not None:
        native.set_num_threads(args.threads)
    data = run(args.quick, rounds)
    data["meta"]["command"] = " ".join(["python -m bnn_jax.kernels.bench",
                                        *(sys.argv[1:] if argv is None else argv)])
    print(markdown(data))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        path = out / "kernels.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

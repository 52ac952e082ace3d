"""Benchmark of the packed operations against the float XLA operation of the same shape, one run.

``python -m bnn_jax.kernels.bench [--quick] [--backend xla] [--json PATH --md PATH]``

Each record times the packed op (operands already packed: weights are packed once at export),
the packing of its activations separately, and the f32 and bf16 ``dot``/``conv`` of the same
shape, as medians over repeated calls after a warm-up call (which also compiles). Ratios are
float time / packed time, so > 1 means the packed op is faster. The full run writes
experiments/kernels.json (raw records) and the results block of experiments/kernels.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform as py_platform
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bnn_jax.kernels import ops
from bnn_jax.kernels.backend import BACKENDS
from bnn_jax.kernels.packing import pack, storage_bits

REPO = pathlib.Path(__file__).resolve().parent.parent
MARK_START, MARK_END = "<!-- bench:start -->", "<!-- bench:end -->"

# Published larq compute engine (LCE) reference points (ms), quoted for context only: they were
# measured on other hardware (see experiments/kernels.md), not in this run.
LCE_MS = {"conv_stack4": {"lce": 22.5, "tflite_xnnpack_f32": 39.0},
          "fc_4096_b1": {"lce": 0.24}, "fc_4096_b64": {"lce": 11.6}}


def median_time(fn, *args, budget_s: float = 1.0, min_runs: int = 10,
                max_runs: int = 100) -> float:
    """Median seconds of ``fn(*args)`` after one warm-up call; repeats fill ``budget_s``."""
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    runs = int(min(max_runs, max(min_runs, budget_s / max(first, 1e-6))))
    times = [first]
    for _ in range(runs - 1):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _pm1(rng, shape, dtype=np.float32):
    # A device array: passing numpy to a jitted function would time a host copy every call.
    return jnp.asarray(np.where(rng.random(shape, dtype=np.float32) < 0.5, -1, 1).astype(dtype))


def _record(op, shape, dtype, packed_s, f32_s, bf16_s, pack_s=None, **extra):
    rec = dict(op=op, shape=list(shape), dtype=dtype, packed_s=packed_s, pack_s=pack_s,
               f32_s=f32_s, bf16_s=bf16_s, ratio_f32=f32_s / packed_s, ratio_bf16=bf16_s / packed_s)
    if pack_s is not None:
        rec["ratio_f32_with_packing"] = f32_s / (packed_s + pack_s)
    rec.update(extra)
    return rec


def _log(rec):
    pk = "" if rec["pack_s"] is None else f" pack {rec['pack_s'] * 1e3:8.3f} ms"
    print(f"{rec['op']:<14} {str(rec['shape']):<22} packed {rec['packed_s'] * 1e3:8.3f} ms"
          f"{pk}  f32 {rec['f32_s'] * 1e3:8.3f} ms ({rec['ratio_f32']:5.1f}x)"
          f"  bf16 {rec['bf16_s'] * 1e3:8.3f} ms ({rec['ratio_bf16']:5.1f}x)", flush=True)


def bench_matmul(rng, m, k, n, backend, budget):
    """Binary x binary matmul (M, K) @ (K, N) -> int32, against f32/bf16 dot."""
    a, w = _pm1(rng, (m, k)), _pm1(rng, (k, n))
    pa, pw = pack(a, -1), pack(w, 0)
    packed = jax.jit(lambda x, y: ops.packed_matmul(x, y, backend=backend))
    pack_fn = jax.jit(lambda x: pack(x, -1))
    dot = jax.jit(lambda x, y: jnp.dot(x, y))
    a16, w16 = jnp.asarray(a, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
    return _record("xnor_matmul", (m, k, n), "binary",
                   median_time(packed, pa, pw, budget_s=budget),
                   median_time(dot, a, w, budget_s=budget),
                   median_time(dot, a16, w16, budget_s=budget),
                   pack_s=median_time(pack_fn, a, budget_s=budget),
                   weight_bits_per_weight=storage_bits(pw) / (k * n))


def bench_conv(rng, batch, hw, c, backend, budget, pad_value=0.0):
    """Binary 3x3 SAME conv C->C on packed NHWC activations, against f32/bf16 lax.conv."""
    x, w = _pm1(rng, (batch, hw, hw, c)), _pm1(rng, (3, 3, c, c))
    px, pw = pack(x, 3), pack(w, 2)
    packed = jax.jit(lambda x, y: ops.packed_conv2d(x, y, padding="SAME", pad_value=pad_value,
                                                    backend=backend))
    pack_fn = jax.jit(lambda x: pack(x, 3))
    conv = jax.jit(lambda x, y: lax.conv_general_dilated(
        x, y, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    x16, w16 = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
    return _record("xnor_conv3x3", (batch, hw, hw, c), "binary",
                   median_time(packed, px, pw, budget_s=budget),
                   median_time(conv, x, w, budget_s=budget),
                   median_time(conv, x16, w16, budget_s=budget),
                   pack_s=median_time(pack_fn, x, budget_s=budget), pad_value=pad_value)


def bench_gemv(rng, k, n, encoding, backend, budget):
    """Packed ±1/ternary weights times one bf16 activation row (W1A16 decoding step)."""
    x = jnp.asarray(rng.normal(size=(1, k)), jnp.bfloat16)
    if encoding == "binary":
        w = _pm1(rng, (k, n))
    else:
        w = jnp.asarray(rng.integers(-1, 2, (k, n)).astype(np.float32))
    pw = pack(w, 0, encoding)
    packed = jax.jit(lambda x, y: ops.packed_weight_matmul(x, y, backend=backend))
    dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    return _record("w1a16_gemv" if encoding == "binary" else "w158a16_gemv", (1, k, n), "bf16",
                   median_time(packed, x, pw, budget_s=budget),
                   median_time(dot, x.astype(jnp.float32), w, budget_s=budget),
                   median_time(dot, x, jnp.asarray(w, jnp.bfloat16), budget_s=budget),
                   weight_bits_per_weight=storage_bits(pw) / (k * n))


def bench_conv_stack(rng, backend, budget):
    """Four binary 3x3 convs at 28x28x256, batch 1, re-binarizing (sign + pack) between them."""
    x = _pm1(rng, (1, 28, 28, 256))
    ws = [_pm1(rng, (3, 3, 256, 256)) for _ in range(4)]
    pws = [pack(w, 2) for w in ws]

    @jax.jit
    def packed(x, pws):
        p = pack(x, 3)
        for pw in pws:  # each layer's int32 output is binarized (sign) and packed for the next
            y = ops.packed_conv2d(p, pw, padding="SAME", backend=backend)
            p = pack(y, 3)
        return y

    @jax.jit
    def float_stack(x, ws):
        for w in ws:
            x = lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return x

    ws16 = [jnp.asarray(w, jnp.bfloat16) for w in ws]
    return _record("conv_stack4", (1, 28, 28, 256), "binary",
                   median_time(packed, x, pws, budget_s=budget),
                   median_time(float_stack, x, ws, budget_s=budget),
                   median_time(float_stack, jnp.asarray(x, jnp.bfloat16), ws16, budget_s=budget),
                   lce_ms=LCE_MS["conv_stack4"])


def bench_fc(rng, m, backend, budget):
    """Binary 4096x4096 fully connected layer including the packing of its input (LCE points)."""
    a, w = _pm1(rng, (m, 4096)), _pm1(rng, (4096, 4096))
    pw = pack(w, 0)
    packed = jax.jit(lambda x, y: ops.packed_matmul(pack(x, -1), y, backend=backend))
    dot = jax.jit(lambda x, y: jnp.dot(x, y))
    return _record("fc4096_packing", (m, 4096, 4096), "binary",
                   median_time(packed, a, pw, budget_s=budget),
                   median_time(dot, a, w, budget_s=budget),
                   median_time(dot, jnp.asarray(a, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16),
                               budget_s=budget),
                   lce_ms=LCE_MS[f"fc_4096_b{m}"])


# ----------------------------------------------------------------------------- report

TARGETS = [
    ("xnor_matmul", lambda r: r["shape"][0] in (64, 256) and r["shape"][1] == 4096, 5.0,
     "matmul >= 5x f32 at M=64-256, K=N=4096"),
    ("xnor_matmul", lambda r: r["shape"][0] == 1 and r["shape"][1] == 4096, 12.0,
     "matmul >= 12x f32 at M=1, K=N=4096"),
    ("xnor_conv3x3", lambda r: r["shape"] == [1, 28, 28, 256], 2.0,
     "conv 3x3 28x28x256->256 batch 1 >= 2x f32"),
]


def targets(records) -> list[str]:
    """One line per performance target: met or not, with the measured ratios."""
    lines = []
    for op, sel, need, text in TARGETS:
        hits = [r for r in records if r["op"] == op and sel(r)]
        if not hits:
            lines.append(f"- {text}: not measured in this run")
            continue
        ratios = ", ".join(f"{r['ratio_f32']:.1f}x" for r in hits)
        met = all(r["ratio_f32"] >= need for r in hits)
        lines.append(f"- {text}: **{'met' if met else 'NOT met'}** (measured {ratios})")
    return lines


def _fmt_ms(s):
    return "" if s is None else f"{s * 1e3:.3f}"


def markdown(records, meta) -> str:
    """The results block of experiments/kernels.md."""
    out = [f"Machine: {meta['machine']}; jax {meta['jax']} ({meta['platform']}), backend "
           f"`{meta['backend']}`; load average before/after: {meta['load_before']} / "
           f"{meta['load_after']}; {meta['date']}.", "",
           f"Command: `{meta['command']}` (wall time {meta['wall_s']:.0f} s).", "",
           "| op | shape | packed ms | pack ms | f32 ms | bf16 ms | f32/packed | bf16/packed "
           "| f32/(packed+pack) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        wp = r.get("ratio_f32_with_packing")
        out.append(f"| {r['op']} | {'x'.join(map(str, r['shape']))} | {_fmt_ms(r['packed_s'])} | "
                   f"{_fmt_ms(r['pack_s'])} | {_fmt_ms(r['f32_s'])} | {_fmt_ms(r['bf16_s'])} | "
                   f"{r['ratio_f32']:.1f}x | {r['ratio_bf16']:.1f}x | "
                   f"{'' if wp is None else f'{wp:.1f}x'} |")
    out += ["", "Targets (ratios against f32 in this run):", *targets(records), ""]
    refs = [r for r in records if "lce_ms" in r]
    if refs:
        out += ["Reference points (published larq compute engine numbers, other hardware):", ""]
        for r in refs:
            quoted = ", ".join(f"{k} {v} ms" for k, v in r["lce_ms"].items())
            shape = "x".join(map(str, r["shape"]))
            out.append(f"- {r['op']} {shape}: here {_fmt_ms(r['packed_s'])} ms packed, "
                       f"{_fmt_ms(r['f32_s'])} ms f32; quoted: {quoted}")
        out.append("")
    return "\n".join(out)


def write_markdown(path: pathlib.Path, block: str):
    """Replace the results block between the bench markers (create the file if needed)."""
    text = path.read_text() if path.exists() else "# Packed-bit kernels\n\n"
    body = f"{MARK_START}\n{block}\n{MARK_END}"
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        text = head + body + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + body + "\n"
    _atomic_write(path, text)


def _atomic_write(path: pathlib.Path, text: str):
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _machine() -> str:
    cpu = py_platform.processor() or py_platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = jax.devices()[0]
    kind = dev.device_kind if dev.platform != "cpu" else f"{cpu}, {os.cpu_count()} cores"
    return f"{dev.platform}: {kind}"


def _load() -> str:
    try:
        return " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run(quick: bool, backend: str):
    """All records of one benchmark run (``quick``: one shape per op, short timing budgets)."""
    rng = np.random.default_rng(0)
    budget = 0.2 if quick else 1.0  # seconds of repeats per measurement
    mats = [(64, 1024)] if quick else [(m, k) for k in (1024, 4096) for m in (1, 8, 64, 256)]
    convs = [(1, 14, 512)] if quick else [(b, hw, c) for hw, c in ((56, 64), (28, 256), (14, 512))
                                          for b in (1, 8)]
    gemvs = [(4096, 4096, "binary")] if quick else [
        (4096, 4096, "binary"), (4096, 11008, "binary"), (4096, 4096, "ternary"),
        (4096, 11008, "ternary")]
    jobs = [lambda m=m, k=k: bench_matmul(rng, m, k, k, backend, budget) for m, k in mats]
    jobs += [lambda b=b, hw=hw, c=c: bench_conv(rng, b, hw, c, backend, budget)
             for b, hw, c in convs]
    jobs += [lambda k=k, n=n, e=e: bench_gemv(rng, k, n, e, backend, budget) for k, n, e in gemvs]
    if not quick:
        jobs += [lambda: bench_conv_stack(rng, backend, budget)]
        jobs += [lambda m=m: bench_fc(rng, m, backend, budget) for m in (1, 64)]
    records = []
    for job in jobs:
        records.append(job())
        _log(records[-1])
    return records


def main(argv=None):
    """Run the command line: time every operation, print the report, write it for a full run."""
    parser = argparse.ArgumentParser(prog="python -m bnn_jax.kernels.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run: one shape per op")
    parser.add_argument("--backend", default="xla", choices=list(BACKENDS))
    parser.add_argument("--json", default=None, help="raw records (default: experiments/kernels."
                        "json for a full run, nothing for --quick)")
    parser.add_argument("--md", default=None, help="markdown report whose bench block is replaced "
                        "(default: experiments/kernels.md for a full run, nothing for --quick)")
    args = parser.parse_args(argv)
    if not args.quick:
        args.json = args.json or str(REPO / "experiments" / "kernels.json")
        args.md = args.md or str(REPO / "experiments" / "kernels.md")
    meta = dict(machine=_machine(), jax=jax.__version__, platform=jax.devices()[0].platform,
                backend=args.backend, load_before=_load(),
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                command=" ".join(["python -m bnn_jax.kernels.bench",
                                  *(sys.argv[1:] if argv is None else argv)]))
    t0 = time.perf_counter()
    records = run(args.quick, args.backend)
    meta.update(wall_s=time.perf_counter() - t0, load_after=_load())
    block = markdown(records, meta)
    print(block)
    if args.json:
        _atomic_write(pathlib.Path(args.json),
                      json.dumps(dict(meta=meta, records=records), indent=1))
    if args.md:
        write_markdown(pathlib.Path(args.md), block)


if __name__ == "__main__":
    main()

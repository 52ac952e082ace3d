"""Decoding speed and weight memory of LLaMA-7B-shaped decoder layers: float vs packed low-bit.

  PYTHONPATH=. nice -n 10 python experiments/llm_decode.py --out experiments/results
  PYTHONPATH=. python experiments/llm_decode.py --render experiments/results/llm_decode.json \\
      --md experiments/kernels.md
  PYTHONPATH=. python experiments/llm_decode.py --quick      # tiny shapes, prints only

A stack of ``--layers`` decoder blocks of LLaMA-7B's shape (hidden 4096, SwiGLU 11008, 32
heads; :mod:`bnn_jax.models.llama`) with random weights (no checkpoint: speed and memory do not
depend on the values) and a 256-token vocabulary, so that the decoder layers are nearly all of
the weights. Variants: the float model in f32 and in bf16, and ``bnn_jax.export.freeze`` of the
BitNet b1.58 model (``bitnet_weight`` + ``bitnet_act``, SubLN) with its levels packed as base-3
digits (W1.58A8, 1.6 bits/weight) or 2-bit digits, the same kernel with float activations
(W1.58A16, the packed-plane LUT kernel), PB-LLM (10 % salient, binary plane + sparse 8-bit part)
and DB-LLM (two {0,1} planes). Each is timed as one jitted KV-cache decode step
(``Model.decode``: one new token per sequence, a cache of 64 slots with 32 filled) at batch 1
and 8, in interleaved rounds (``bnn_jax.kernels.bench.measure``: every variant once per round,
in a rotating order); tokens/s = batch / step time, and ratios are taken within a round. A second
table times the single matrix-vector products of those layers (every form of the kernel,
against XLA's f32 and bf16 ``dot``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bnn_jax import export
from bnn_jax.kernels import bench, ops, trits
from bnn_jax.kernels.packing import pack
from bnn_jax.models import llama
from bnn_jax.nn import QuantLinear
from bnn_jax.quant.pbllm import asym_fake_quant

FORMAT = 1
NAME = "llm_decode.json"
SHAPES = {
    "full": dict(hidden=4096, intermediate=11008, num_heads=32, vocab=256, slots=64, filled=32),
    "quick": dict(hidden=256, intermediate=688, num_heads=4, vocab=64, slots=16, filled=8),
}
BITNET = dict(subln="rms", input_quantizer="bitnet_act", kernel_quantizer="bitnet_weight")
VARIANTS = {
    # name: (model quantizers, freeze options, description)
    "f32": (None, None, "float32"),
    "bf16": (None, None, "bfloat16"),
    "w158a8_base3": (BITNET, dict(trit_format="base3"), "BitNet b1.58 W1.58A8, base-3 digits"),
    "w158a8_2bit": (BITNET, dict(trit_format="2bit"), "BitNet b1.58 W1.58A8, 2-bit digits"),
    "w158a16": (None, {}, "the BitNet kernels with float activations, W1.58A16 (planes, LUT)"),
    "pbllm": (dict(kernel_quantizer=dict(name="pbllm_weight", salient_fraction=0.1)), {},
              "PB-LLM 10 % salient (binary + sparse 8-bit)"),
    "dbllm": (dict(kernel_quantizer="dbllm_fdb"), {}, "DB-LLM (two {0,1} planes)"),
}
BATCHES = (1, 8)


# ----------------------------------------------------------------------------- building

def _layers_bytes(model) -> int:
    return sum(int(np.prod(v[...].shape)) * np.dtype(v[...].dtype).itemsize
               for _, v in nnx.iter_graph(model.layers) if isinstance(v, nnx.Variable))


def _linear_weights(shape: dict, layers: int) -> int:
    h, f = shape["hidden"], shape["intermediate"]
    return layers * (4 * h * h + 3 * h * f)


def _model(shape: dict, layers: int, quant: dict | None, seed: int = 0):
    return llama.Model(vocab_size=shape["vocab"], max_len=shape["slots"], rngs=nnx.Rngs(seed),
                       hidden=shape["hidden"], intermediate=shape["intermediate"],
                       num_layers=layers, num_heads=shape["num_heads"], **(quant or {}))


def build_all(shape: dict, layers: int, log=print) -> dict:
    """variant -> (decode-ready model, freeze records). Variants that share a model are made
    from one: bf16 is the f32 model cast, and the BitNet model is frozen in both digit formats
    and, with its input quantizer removed, as W1.58A16 (the same ternary kernels)."""
    out = {}

    def done(v, model, recs, t0):
        out[v] = (model, recs)
        log(f"built {v} in {time.time() - t0:.1f} s")

    t0 = time.time()
    f32 = _model(shape, layers, None)
    done("f32", f32, [], t0)
    t0 = time.time()
    bf16 = nnx.clone(f32)
    nnx.update(bf16, jax.tree.map(lambda a: a.astype(jnp.bfloat16)
                                  if jnp.issubdtype(a.dtype, jnp.floating) else a,
                                  nnx.state(bf16)))
    done("bf16", bf16, [], t0)
    t0 = time.time()
    bitnet = _model(shape, layers, VARIANTS["w158a8_base3"][0])
    for v in ("w158a8_base3", "w158a8_2bit"):
        done(v, *export.freeze(bitnet, strict=True, **VARIANTS[v][1]), t0)
        t0 = time.time()
    for _, m in nnx.iter_graph(bitnet):
        if isinstance(m, QuantLinear):
            m.input_quantizer = None
    done("w158a16", *export.freeze(bitnet, strict=True), t0)
    del bitnet
    for v in ("pbllm", "dbllm"):
        t0 = time.time()
        model = _model(shape, layers, VARIANTS[v][0])
        for _, m in nnx.iter_graph(model):
            if isinstance(m, QuantLinear) and m.kernel_quantizer.name == "pbllm_weight":
                # PB-LLM's QAT start: the latent kernel on its per-channel 8-bit grid (the
                # salient mask, chosen at init from the same tails, is unchanged by a monotone
                # rounding).
                m.kernel[...] = asym_fake_quant(m.kernel[...], channel_axis=-1)
        done(v, *export.freeze(model, strict=True), t0)
        del model
    return out


def decode_step(model, batch: int, shape: dict):
    """(jitted step, its arguments): one token per sequence at cache slot ``filled``."""
    graphdef, state = nnx.split(model)
    dtype = jnp.bfloat16 if model.embed_tokens.embedding[...].dtype == jnp.bfloat16 \
        else jnp.float32
    cache = model.init_cache(batch, shape["slots"], dtype)
    key = jax.random.key(1)
    cache = [{k: jax.random.normal(jax.random.fold_in(key, i), v.shape, dtype)
              for k, v in c.items()} for i, c in enumerate(cache)]
    index = shape["filled"]
    kv_mask = jnp.broadcast_to(jnp.arange(shape["slots"]) <= index, (batch, shape["slots"]))
    ids = jnp.zeros((batch, 1), jnp.int32)

    @jax.jit
    def step(state, ids, cache, kv_mask):
        m = nnx.merge(graphdef, state)
        return m.decode(ids, cache, index=jnp.asarray(index),
                        positions=jnp.full(ids.shape, index), kv_mask=kv_mask)

    return step, (state, ids, cache, kv_mask)


# ----------------------------------------------------------------------------- GEMV forms

def gemv_candidates(m: int, k: int, n: int, seed: int = 0) -> dict:
    """Every form of one (m, k) x (k, n) product: float dots and the packed kernels."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-1, 2, (k, n)).astype(np.int8)
    x = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
    wf = jnp.asarray(rng.standard_normal((k, n)), jnp.float32)
    planes = pack(jnp.asarray(w, jnp.int32), axis=0, encoding="ternary")
    dot = jax.jit(jnp.dot)

    def a8(fmt):
        p = trits.pack_trits(w, fmt)

        @jax.jit
        def f(x, p):
            codes, s = trits.absmax_codes(x)
            return trits.trit_matmul(codes, p).astype(jnp.float32) / s
        return f, (x, p)

    return {
        "f32": (dot, (x, wf)),
        "bf16": (dot, (x.astype(jnp.bfloat16), wf.astype(jnp.bfloat16))),
        "a8_base3": a8("base3"),
        "a8_2bit": a8("2bit"),
        "a8_lut": (jax.jit(lambda x, p: ops.packed_weight_matmul(x, p, act_quant="int8")),
                   (x, planes)),
        "a16_lut": (jax.jit(lambda x, p: ops.packed_weight_matmul(x, p)), (x, planes)),
    }


GEMV_FORMS = {
    "a8_base3": "W1.58A8 base-3 digits (VNNI dot)", "a8_2bit": "W1.58A8 2-bit digits (VNNI dot)",
    "a8_lut": "W1.58A8 planes, int32 LUT", "a16_lut": "W1.58A16 planes, f32 LUT",
}


# ----------------------------------------------------------------------------- run

def run(quick: bool, layers: int, rounds: int, log=print) -> dict:
    shape = SHAPES["quick" if quick else "full"]
    t0 = time.time()
    records, memory, built = [], {}, {}
    check = {}
    with bench.LoadSampler() as load:
        for v, (model, recs) in build_all(shape, layers, log).items():
            built[v] = model
            memory[v] = dict(layers_bytes=_layers_bytes(model),
                             linear_plane_bytes=sum(r.plane_bytes for r in recs) or None,
                             encodings=sorted({r.encoding for r in recs}))
        for batch in BATCHES:
            cands = {v: decode_step(built[v], batch, shape) for v in VARIANTS}
            outs = {v: fn(*args)[0] for v, (fn, args) in cands.items()}
            # Same levels, exact integer sums: the two digit formats give identical logits.
            check[f"base3_equals_2bit_b{batch}"] = bool(jnp.array_equal(outs["w158a8_base3"],
                                                                        outs["w158a8_2bit"]))
            check[f"finite_b{batch}"] = all(bool(jnp.all(jnp.isfinite(o))) for o in outs.values())
            res = bench.measure(cands, rounds, budget_s=0.3)
            records.append(dict(op="decode_step", batch=batch, **res))
            log(f"batch {batch}: " + ", ".join(
                f"{v} {statistics.median(res['times_s'][v]) * 1e3:.1f} ms" for v in VARIANTS))
        del built
        h, f = shape["hidden"], shape["intermediate"]
        for m in BATCHES:
            for k, n in ((h, h), (h, f)):
                res = bench.measure(gemv_candidates(m, k, n), rounds, budget_s=0.15)
                records.append(dict(op="gemv", shape=[m, k, n], **res))
                log(f"gemv {m}x{k}x{n}: " + ", ".join(
                    f"{c} {statistics.median(t) * 1e3:.3f} ms" for c, t in res["times_s"].items()))
    meta = dict(format=FORMAT, quick=quick, layers=layers, rounds=rounds, shape=shape,
                machine=bench.machine(), load_1min=load.samples, wall_s=time.time() - t0,
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                linear_weights=_linear_weights(shape, layers), checks=check)
    return dict(meta=meta, memory=memory, records=records)


# ----------------------------------------------------------------------------- report

def _range(values, fmt="{:.2f}") -> str:
    return bench._med_range(values, fmt)


def _ratios(rec, num, den):
    return [a / b for a, b in zip(rec["times_s"][num], rec["times_s"][den])]


def _judge(values, need=1.0) -> str:
    med = statistics.median(values)
    ok = sum(v > need for v in values)
    verdict = "**met**" if med > need else "**NOT met**"
    return f"{verdict} (median {med:.2f}x; {ok} of {len(values)} rounds > {need:g}x)"


def targets(data) -> list[str]:
    """The issue's targets, judged from the records."""
    decode = {r["batch"]: r for r in data["records"] if r["op"] == "decode_step"}
    mem = data["memory"]
    one = decode[1]
    lines = []
    for base in ("f32", "bf16"):
        lines.append(f"- W1.58A8 (base-3) decode faster than {base} at batch 1: "
                     + _judge(_ratios(one, base, "w158a8_base3")))
    planes = mem["w158a8_base3"]["linear_plane_bytes"]
    bf16_linear = 2 * data["meta"]["linear_weights"]
    x_planes = bf16_linear / planes
    x_layers = mem["bf16"]["layers_bytes"] / mem["w158a8_base3"]["layers_bytes"]
    met = "**met**" if x_layers >= 10 else "**NOT met**"
    lines.append(f"- weights >= 10x smaller than bf16: {met} for the packed linear weights "
                 f"alone ({x_planes:.2f}x, {8 * planes / data['meta']['linear_weights']:.3f} "
                 f"bits/weight); {x_layers:.2f}x for all the decoder layers' state (RMSNorm "
                 "weights and per-channel scales stay float32)")
    lines.append("- GPU GEMV >= 70 % of HBM bandwidth: not measured (no GPU on the machine "
                 "these numbers come from)")
    return lines


def markdown(data) -> str:
    """The llm-decode block of experiments/kernels.md."""
    meta, mem = data["meta"], data["memory"]
    mc = meta["machine"]
    shape = meta["shape"]
    out = [f"Machine: {mc['cpu']}, {mc['usable_cpus']} usable CPUs; flags: "
           f"{', '.join(mc['flags'])}; native kernels: {mc.get('native_isa')}, "
           f"{mc.get('native_threads')} threads; jax {mc['jax']}.", "",
           f"Run: {meta['date']}, {meta['layers']} decoder layers of hidden {shape['hidden']}, "
           f"MLP {shape['intermediate']}, {shape['num_heads']} heads, vocabulary "
           f"{shape['vocab']}; KV cache {shape['slots']} slots ({shape['filled']} filled); "
           f"{meta['rounds']} interleaved rounds; wall time {meta['wall_s']:.0f} s; 1-minute "
           f"load average {min(meta['load_1min']):.2f}-{max(meta['load_1min']):.2f}."
           + (" **Quick run (tiny shapes).**" if meta["quick"] else ""), ""]
    decode = {r["batch"]: r for r in data["records"] if r["op"] == "decode_step"}
    head = ["variant", "decoder-layer state (MB)", "bf16 / variant", "linear bits/weight"]
    for b in BATCHES:
        head += [f"batch {b} tokens/s", f"b{b} vs f32", f"b{b} vs bf16"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v, (_, _, desc) in VARIANTS.items():
        planes = mem[v]["linear_plane_bytes"]
        bits = (8 * planes / meta["linear_weights"] if planes
                else {"f32": 32.0, "bf16": 16.0}[v])
        row = [f"{v} ({desc})", f"{mem[v]['layers_bytes'] / 1e6:,.1f}",
               f"{mem['bf16']['layers_bytes'] / mem[v]['layers_bytes']:.2f}x", f"{bits:.3f}"]
        for b in BATCHES:
            rec = decode[b]
            tps = [b / t for t in rec["times_s"][v]]
            row += [_range(tps, "{:.1f}"),
                    f"{_range(_ratios(rec, 'f32', v))}x", f"{_range(_ratios(rec, 'bf16', v))}x"]
        out.append("| " + " | ".join(row) + " |")
    out += ["", "Linear bits/weight: the packed weight planes or digits of the 7 linears per layer "
            "alone (PB-LLM: the binary plane; its sparse 8-bit part — a uint16 row and a uint8 "
            "code per entry, padded per output channel to the largest count, and an int32 count "
            "per channel — is in the state column). Ratios are per round (f32 or bf16 step time "
            "/ variant step time), median (min-max). The wall time includes building and "
            "freezing every variant at full size.", "",
            "Single products of these layers (ms, median (min-max); ratio = f32 time / form time "
            "in the same round):", ""]
    gemv = [r for r in data["records"] if r["op"] == "gemv"]
    forms = ["f32", "bf16", *GEMV_FORMS]
    head = ["shape (M x K x N)", *[f"{f} ms" for f in forms], *[f"f32 / {f}" for f in GEMV_FORMS]]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in gemv:
        row = ["x".join(map(str, r["shape"]))]
        row += [bench._ms(r["times_s"][f]) for f in forms]
        row += [f"{_range(_ratios(r, 'f32', f), '{:.1f}')}x" for f in GEMV_FORMS]
        out.append("| " + " | ".join(row) + " |")
    out += ["", "Forms: " + "; ".join(f"`{k}` {v}" for k, v in GEMV_FORMS.items()) + ". The "
            "W1.58A8 forms include the per-token int8 quantization of the activations.", "",
            "Checks in the run: " + ", ".join(f"{k} {v}" for k, v in meta["checks"].items()),
            "", "Targets (computed from the records above):", *targets(data)]
    return "\n".join(out)


def main(argv=None):
    """Measure (``--out``) or render (``--render``)."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help=f"directory for {NAME} (default: print only)")
    p.add_argument("--quick", action="store_true", help="tiny shapes (smoke run)")
    p.add_argument("--layers", type=int, default=2, help="decoder layers (default 2)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 5, quick 2)")
    p.add_argument("--render", metavar="JSON", help="render these records instead of measuring")
    p.add_argument("--md", help="with --render: the file whose llm-decode block is replaced")
    args = p.parse_args(argv)
    if args.render:
        data = json.loads(pathlib.Path(args.render).read_text())
        if data.get("meta", {}).get("format") != FORMAT:
            raise SystemExit(f"{args.render}: not a records file of this benchmark (format "
                             f"{FORMAT})")
        block = markdown(data)
        print(block)
        if args.md:
            bench.write_block(pathlib.Path(args.md), block, "llm-decode")
        return
    if args.md:
        p.error("--md goes with --render")
    if args.layers < 1:
        p.error("--layers must be >= 1")
    rounds = args.rounds or (2 if args.quick else 5)
    if rounds < 1:
        p.error("--rounds must be >= 1")
    path = pathlib.Path(args.out) / NAME if args.out else None
    if path is not None and path.exists():
        p.error(f"{path} exists: records of an earlier run are never overwritten; move it away "
                "or pass another --out")
    data = run(args.quick, args.layers, rounds)
    data["meta"]["command"] = " ".join(["python experiments/llm_decode.py",
                                        *(sys.argv[1:] if argv is None else argv)])
    print(markdown(data))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

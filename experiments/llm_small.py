"""The LLM zoo at small scale: BitNet b1.58 from scratch vs post-training compression.

Trains the ``tiny`` decoder of ``configs/bitnet.py`` on the offline Python-documentation corpus
(byte tokens) three times with the same data, steps and schedule: float, BitNet b1.58
(ternary absmean weights, 8-bit activations, SubLN) and b1.58 Reloaded's median variant. The
float model is then compressed by ``bnn_jax.compress`` (RTN and GPTQ at 2 bits, PB-LLM GPTQ-PB
with 10 % and 30 % salient weights, PB-LLM QAT 10 %, DB-LLM) on calibration windows of the
training documents. Every model is scored with ``bnn_jax.lm_eval.perplexity`` on the same
validation stream (disjoint windows of the training length). Raw numbers go to
``experiments/results/llm_small.json``; ``experiments/llm_small.md`` is rendered from it.

  nice -n 10 python experiments/llm_small.py                 # train, compress, write, render
  python experiments/llm_small.py --render-only              # re-render the md from the json
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's bnn_jax, not an installed one
RESULTS = ROOT / "experiments" / "results" / "llm_small.json"
REPORT = ROOT / "experiments" / "llm_small.md"
TRAINED = (("float", "float"), ("BitNet b1.58", ""), ("BitNet b1.58 Reloaded (median)", "median"))
COMPRESSED = (("RTN 2-bit", "rtn", {"bits": 2}), ("GPTQ 2-bit", "gptq", {"bits": 2}),
              ("PB-LLM GPTQ-PB 10 %", "pbllm_gptq", {"salient": 0.1}),
              ("PB-LLM GPTQ-PB 30 %", "pbllm_gptq", {"salient": 0.3}),
              ("PB-LLM QAT 10 %", "pbllm_qat", {"salient": 0.1, "steps": 200}),
              ("DB-LLM (FDB + DAD)", "dbllm", {"steps": 200}))
CALIB_SAMPLES = 64


def load_config(arg):
    spec = importlib.util.spec_from_file_location("bitnet", ROOT / "configs" / "bitnet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def block_bits(spec) -> float:
    """Bits per block-linear weight of a kernel quantizer spec (32 for float)."""
    from bnn_jax import quant

    return 32.0 if spec is None else float(quant.get(spec).bits)


def run_all(workroot: str, quick: bool = False) -> dict:
    from flax import nnx

    from bnn_jax import compress, lm_eval, models
    from bnn_jax.data.text import ByteTokenizer
    from bnn_jax.export.__main__ import restore_model
    from bnn_jax.train import run

    tok = ByteTokenizer()
    rows, fp = [], None
    for label, arg in TRAINED:
        c = load_config(",".join(filter(None, ["size=tiny", arg, "steps=10" if quick else ""])))
        c.tensorboard, c.async_checkpoint = False, False
        c.checkpoint_every = c.total_steps
        workdir = os.path.join(workroot, arg or "bitnet")
        t0 = time.perf_counter()
        run(c, workdir)
        model, _, step = restore_model(workdir)
        seconds = time.perf_counter() - t0
        window = model.max_len
        stream = lm_eval.eval_stream("pydoc", tok, window=window)
        ppl = lm_eval.perplexity(model, stream, window=window, batch_size=32)
        rows.append({"model": label, "kind": "trained", "config": f"configs/bitnet.py:size=tiny"
                     f"{',' + arg if arg else ''}", "steps": step,
                     "weight_bits": block_bits(c.model.get("kernel_quantizer")),
                     "eval": ppl, "seconds": round(seconds, 1)})
        print(rows[-1])
        if arg == "float":
            fp, fields = model, {k: v for k, v in c.model.to_dict().items() if k != "name"}
    make = functools.partial(models.get("llama"), rngs=nnx.Rngs(0), vocab_size=fp.vocab_size,
                             max_len=fp.max_len, **fields)
    calib = lm_eval.calibration("pydoc", tok, n=CALIB_SAMPLES, seq_len=fp.max_len, seed=0)
    for label, method, opts in COMPRESSED:
        if quick and "steps" in opts:
            opts = {**opts, "steps": 3}
        t0 = time.perf_counter()
        q, report = compress.compress(fp, make, calib, method=method, log=lambda _: None,
                                      **opts)
        seconds = time.perf_counter() - t0
        ppl = lm_eval.perplexity(q, stream, window=window, batch_size=32)
        errors = [r["relative_error"] for r in report["layers"]]
        rows.append({"model": label, "kind": "compressed from float", "method": method,
                     "options": opts, "quantizer": report["quantizer"],
                     "weight_bits": block_bits(report["quantizer"]), "eval": ppl,
                     "mean_relative_error": sum(errors) / len(errors),
                     "seconds": round(seconds, 1)})
        print(rows[-1])
    import jax

    return {"rows": rows, "calibration": {"corpus": "pydoc train", "samples": CALIB_SAMPLES,
                                          "seq_len": fp.max_len, "seed": 0},
            "jax": jax.__version__, "platform": platform.platform(),
            "load_average": os.getloadavg()[0]}


def table(data: dict) -> str:
    """The markdown table of the json's rows."""
    lines = ["| model | how | block-linear weight bits | validation ppl (per byte) | "
             "mean layer rel. error | seconds |", "| --- | --- | --- | --- | --- | --- |"]
    for r in data["rows"]:
        how = (f"trained {r['steps']} steps" if r["kind"] == "trained"
               else f"`{r['method']}` on the float model")
        err = f"{r['mean_relative_error']:.3f}" if "mean_relative_error" in r else "–"
        lines.append(f"| {r['model']} | {how} | {r['weight_bits']:.2f} | "
                     f"{r['eval']['perplexity']:.3f} | {err} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def render(data: dict) -> str:
    cal = data["calibration"]
    return f"""# LLM zoo at small scale: BitNet b1.58 from scratch vs compressing a float model

Written by `python experiments/llm_small.py` from `experiments/results/llm_small.json`.
The `tiny` decoder of `configs/bitnet.py` (hidden 64, SwiGLU 172, 2 layers, 4 heads,
byte tokens, 64-token windows) trained on the Python-documentation corpus with the same data,
steps and two-stage schedule; the float run is then compressed ({cal['samples']} calibration
windows of {cal['seq_len']} tokens from the training documents, seed {cal['seed']}). All
perplexities are `bnn_jax.lm_eval.perplexity` on the same validation stream (disjoint
windows). One seed, CPU; "mean layer rel. error" is `‖X(Ŵ − W)‖²/‖XW‖²` averaged over the
block linears, X the calibration inputs of each linear (block by block for the PTQ methods,
the float model's for QAT and DB-LLM, whose training minimizes the LM or distillation loss,
not this error). Weight bits count only the block linears (embeddings and head stay float);
PB-LLM's count is 1 + 7·salient fraction (the mask's storage not included). The table shows a
model this small, not the papers' 7B results: read the ordering, not the gaps.

{table(data)}

jax {data['jax']}, {data['platform']}, load average {data['load_average']:.1f}.
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few steps "
                        "(writes --out, never the committed results)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    if args.quick and out == RESULTS:
        parser.error("--quick needs --out elsewhere than the committed results")
    if not args.render_only:
        with tempfile.TemporaryDirectory() as workroot:
            data = run_all(workroot, quick=args.quick)
        out.write_text(json.dumps(data, indent=1) + "\n")
    data = json.loads(out.read_text())
    if out == RESULTS:
        REPORT.write_text(render(data))
    print(table(data))


if __name__ == "__main__":
    main()

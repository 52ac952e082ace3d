"""``python -m bnn_jax.compress --model DIR --method pbllm_gptq --salient 0.1 --calib wikitext
--out OUT``: compress a local Hugging Face LLaMA/OPT directory and write a new directory that
``bnn_jax.compress.load`` and ``python -m bnn_jax.lm_eval --model OUT`` read."""

from __future__ import annotations

import argparse
import functools
import json
from typing import Sequence

from bnn_jax.compress.io import check_new, save
from bnn_jax.compress.methods import METHODS, compress, quantizer_spec

CALIB = {"wikitext": "wikitext2", "wikitext2": "wikitext2", "c4": "c4", "pydoc": "pydoc"}


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="local Hugging Face model directory")
    p.add_argument("--method", required=True, help=f"one of {list(METHODS)}")
    p.add_argument("--out", required=True, help="new output directory (never overwritten)")
    p.add_argument("--calib", default="wikitext", help=f"one of {sorted(CALIB)}")
    p.add_argument("--data_dir", default=".", help="where the calibration corpus files are")
    p.add_argument("--nsamples", type=int, default=128, help="calibration sequences")
    p.add_argument("--seq_len", type=int, default=2048)
    p.add_argument("--bits", type=int, default=2, help="rtn/gptq grid bits")
    p.add_argument("--salient", type=float, default=0.1, help="PB-LLM salient fraction")
    p.add_argument("--saliency", default="magnitude", choices=("magnitude", "hessian"))
    p.add_argument("--blocksize", type=int, default=128)
    p.add_argument("--percdamp", type=float, default=0.01)
    p.add_argument("--steps", type=int, default=100, help="pbllm_qat / dbllm training steps")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    # Every argument is checked before anything is loaded, compiled or written.
    if args.method not in METHODS:
        p.error(f"unknown --method {args.method!r}; valid methods: {list(METHODS)}")
    if args.calib not in CALIB:
        p.error(f"unknown --calib {args.calib!r}; valid: {sorted(CALIB)}")
    quantizer_spec(args.method, bits=args.bits, salient=args.salient)
    check_new(args.out)

    from bnn_jax import lm_eval
    from bnn_jax.models import hub

    cfg = hub.read_config(args.model)
    model, tok = lm_eval.load_model(args.model)
    seq_len = min(args.seq_len, model.max_len)
    calib = lm_eval.calibration(CALIB[args.calib], tok, n=args.nsamples, seq_len=seq_len,
                                seed=args.seed, data_dir=args.data_dir)
    from flax import nnx

    from bnn_jax import models

    family = hub.family_of(cfg)
    # Built concretely (weights copied from the float model): some quantizers' init rules
    # (the PB-LLM QAT mask) run in numpy and cannot be traced abstractly.
    make = functools.partial(models.get(family.model), rngs=nnx.Rngs(0),
                             **hub.model_fields(cfg, family))
    q, report = compress(model, make, calib,
                         method=args.method, bits=args.bits, salient=args.salient,
                         saliency=args.saliency, blocksize=args.blocksize,
                         percdamp=args.percdamp, steps=args.steps, lr=args.lr,
                         batch_size=args.batch_size, seed=args.seed)
    report["calibration"] = {"corpus": CALIB[args.calib], "nsamples": args.nsamples,
                             "seq_len": seq_len, "seed": args.seed}
    report["model_type"] = cfg.get("model_type")
    out = save(q, report, args.out, source=args.model)
    errors = [r["relative_error"] for r in report["layers"]]
    print(json.dumps({"out": str(out), "layers": len(errors),
                      "mean_relative_error": sum(errors) / len(errors)}))
    return report


if __name__ == "__main__":
    main()

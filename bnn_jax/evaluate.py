"""Command line: ``python -m bnn_jax.evaluate --workdir DIR [--max_examples N]``.

Evaluates a run's newest checkpoint with the run's own config (``DIR/config.json``): the
task's eval metrics on the dataset's eval split and the metrics of the final model
(:meth:`bnn_jax.tasks.Task.model_metrics`): for seq2seq the decoded eval sources scored with
ROUGE-1/2/L or BLEU under ``config.task.generate`` (beams, lengths, length penalty); for a GLUE
task its metric (Matthews for CoLA, F1 for MRPC/QQP, Pearson/Spearman for STS-B, accuracy).
The result is appended to ``metrics.jsonl`` as a ``split="evaluate"`` line and written into
``summary.md`` as its "Evaluation" section (replaced on a rerun); nothing else in the run
changes. The weights are those evaluation uses in training (the EMA when the run keeps one for
eval).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

SECTION = "## Evaluation (python -m bnn_jax.evaluate)"


class EvaluateError(ValueError):
    """The workdir cannot be evaluated (message says what is missing and what to do)."""


def _check_workdir(workdir: str) -> None:
    if not os.path.isdir(workdir):
        raise EvaluateError(f"--workdir {workdir!r} is not a directory; give the workdir of a "
                            "training run (python -m bnn_jax.main ... --workdir DIR)")
    if not os.path.exists(os.path.join(workdir, "config.json")):
        raise EvaluateError(f"{workdir!r} has no config.json: it is not a bnn_jax run (start "
                            "one with python -m bnn_jax.main --config ... --workdir DIR)")
    from bnn_jax.train.workdir import checkpoint_steps

    if not checkpoint_steps(workdir):
        raise EvaluateError(f"{workdir!r} has no checkpoint under checkpoints/ yet; train (or "
                            "resume) the run until it writes one, then evaluate")


def load_run(workdir: str):
    """``(config, dataset, task, model, step)``: the run's model with its newest weights."""
    import jax
    import ml_collections
    from flax import nnx

    from bnn_jax import data as data_lib
    from bnn_jax import models
    from bnn_jax import tasks as tasks_lib
    from bnn_jax.nn import initialize, pending_learned
    from bnn_jax.nn.policy import quantize_config
    from bnn_jax.train import checkpoint as ckpt_lib
    from bnn_jax.train.loop import _sample_inputs
    from bnn_jax.train.workdir import checkpoint_steps

    _check_workdir(workdir)
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
        config = ml_collections.ConfigDict(json.load(f))
    ds = data_lib.build(config.data, seed=config.seed)
    task = tasks_lib.build(config.task, spec=ds.spec, config=config)
    model = models.build(config.model, rngs=nnx.Rngs(config.seed), **ds.spec)
    quantize_config(model, config.quant)
    if pending_learned(model):  # their arrays must exist for the checkpoint to fill them
        args, kwargs = _sample_inputs(task, ds, config.seed)
        initialize(model, *args, **kwargs)
    model.eval()
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    like = {"params": nnx.to_pure_dict(params), "rest": nnx.to_pure_dict(rest)}
    ema = float(config.ema.decay) > 0 and bool(config.ema.eval)
    saved = ckpt_lib.restore_params(workdir, like, ema=ema)
    saved = jax.tree.map(jax.numpy.asarray, saved)
    return config, ds, task, nnx.merge(graph, saved["params"], saved["rest"]), \
        checkpoint_steps(workdir)[-1]


def eval_metrics(task, model, ds) -> dict[str, float]:
    """The task's eval metrics of ``model`` over the dataset's eval split (as training's)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from bnn_jax.train import metrics as metrics_lib

    graph, state = nnx.split(model)

    @jax.jit
    def step(state, batch, index):
        batch = task.prepare(batch, jax.random.fold_in(jax.random.key(1), index))
        args, kwargs = task.inputs(batch)
        out = nnx.merge(graph, state)(*args, **kwargs)
        return metrics_lib.average(task.eval_metrics(out, batch), mask=batch["mask"])

    acc = None
    for i, batch in enumerate(ds.eval_batches()):
        batch = jax.tree.map(jnp.asarray, batch)
        acc = metrics_lib.merge(acc, step(state, batch, jnp.int32(i)))
    sums = {k: float(v.total) for k, v in acc.items()}
    return task.final(metrics_lib.compute(acc), sums, ds)


def evaluate(workdir: str, *, max_examples: int | None = None) -> dict[str, Any]:
    """Evaluate the run in ``workdir``, record the result there, and return it."""
    config, ds, task, model, step = load_run(workdir)
    if max_examples is not None and task.name == "seq2seq" and dict(config.task.generate):
        task.cfg = {**task.cfg, "generate": {**dict(task.cfg["generate"]),
                                             "max_examples": int(max_examples)}}
    metrics = {**eval_metrics(task, model, ds), **task.model_metrics(model, ds)}
    with open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": int(step), "split": "evaluate",
                            **{k: float(v) for k, v in metrics.items()}}) + "\n")
    write_summary(workdir, step, metrics, dict(config.task.get("generate", {}) or {}),
                  max_examples)
    return {"step": step, **metrics}


def summary_section(step: int, metrics: dict[str, float], generate: dict,
                    max_examples: int | None) -> str:
    """The markdown "Evaluation" section of ``summary.md``."""
    lines = [SECTION, "", f"Checkpoint of step {step}, eval split"
             + (f", first {max_examples} examples decoded" if max_examples else "") + "."]
    if generate:
        lines.append("Decoding: " + ", ".join(f"{k}={v}" for k, v in sorted(generate.items()))
                     + ".")
    lines += ["", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items()]
    return "\n".join(lines) + "\n"


def write_summary(workdir: str, step: int, metrics: dict[str, float], generate: dict,
                  max_examples: int | None) -> None:
    """Put the section into ``summary.md``: replace an earlier one, keep everything else."""
    path = os.path.join(workdir, "summary.md")
    text = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    section = summary_section(step, metrics, generate, max_examples)
    if SECTION in text:
        head, _, tail = text.partition(SECTION)
        # The section ends where the next "## " heading starts.
        nxt = tail.find("\n## ")
        text = head + section + ("" if nxt < 0 else tail[nxt + 1:])
    else:
        text = text + ("\n" if text and not text.endswith("\n") else "") + \
            ("\n" if text else "") + section
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; errors are one line on stderr and exit status 1."""
    parser = argparse.ArgumentParser(prog="python -m bnn_jax.evaluate",
                                     description=__doc__.split("\n\n")[1])
    parser.add_argument("--workdir", required=True, help="the training run's directory")
    parser.add_argument("--max_examples", type=int, default=None,
                        help="decode only the first N eval examples (seq2seq)")
    args = parser.parse_args(argv)
    if args.max_examples is not None and args.max_examples < 1:
        print("error: --max_examples must be a positive integer", file=sys.stderr)
        return 1
    try:
        result = evaluate(args.workdir, max_examples=args.max_examples)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(" | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

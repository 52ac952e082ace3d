"""Tasks by name: what a run trains for, ``build(config.task, spec=ds.spec, config=config)``.

A task says which batch fields it reads, how the model is called on a batch, the training loss
(and the logits that distillation compares), the eval step's per-example metrics and the final
metrics. ``bnn_jax.train.loop`` calls these methods and knows no task by name. Tasks:

* ``classification`` — images to classes: softmax cross-entropy (``config.loss``), top-1/top-5;
* ``sequence_classification`` — GLUE-style: one label per sequence, or a regression score
  (``num_labels == 1``, e.g. STS-B) with a mean-squared-error loss;
* ``causal_lm`` — next-token prediction with padding/packing masks: perplexity, bits per byte;
* ``seq2seq`` — teacher-forced cross-entropy with label smoothing; token accuracy and
  perplexity of the references (generation metrics come from :mod:`bnn_jax.generate`);
* ``denoising`` — DDPM noise prediction over uniformly sampled timesteps;
* ``masked_lm`` — BERT pretraining: masked-token plus next-sentence cross-entropy; MLM
  accuracy and perplexity, NSP accuracy.
"""

from __future__ import annotations

import importlib
from typing import Any

from bnn_jax.tasks.base import Task

# name -> module under bnn_jax.tasks that exports `Task`.
TASKS = {
    "classification": "classification",
    "sequence_classification": "sequence_classification",
    "causal_lm": "causal_lm",
    "seq2seq": "seq2seq",
    "denoising": "denoising",
    "masked_lm": "masked_lm",
}

__all__ = ["TASKS", "Task", "build", "get", "names", "validate"]


def names() -> list[str]:
    """All task names, sorted."""
    return sorted(TASKS)


def get(name: str) -> type[Task]:
    """The ``Task`` class of ``name`` (ValueError listing the valid tasks if unknown)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r} in config.task.name; valid tasks: "
                         f"{', '.join(names())}")
    return importlib.import_module(f"bnn_jax.tasks.{TASKS[name]}").Task


def _dict(cfg: Any) -> dict:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


def validate(cfg: Any) -> None:
    """Reject an unknown task or field (before anything is built or compiled)."""
    cfg = _dict(cfg)
    task = get(cfg.pop("name", None))
    unknown = sorted(set(cfg) - set(task.fields))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in config.task for task {task.name!r}; "
                         f"valid fields: {sorted(task.fields)}")
    task.check_fields({**task.fields, **cfg})


def build(cfg: Any, *, spec: dict[str, Any], config: Any = None) -> Task:
    """The task named by ``cfg.name``, its fields filled with defaults, for data ``spec``."""
    validate(cfg)
    cfg = _dict(cfg)
    task = get(cfg.pop("name"))
    return task({**task.fields, **cfg}, spec=dict(spec), config=config)

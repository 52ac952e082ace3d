"""The interface every task implements (the loop calls only these methods)."""

from __future__ import annotations

import abc
from typing import Any

import jax
import numpy as np


class Task(abc.ABC):
    """A training objective: batch fields, model call, loss, eval metrics, final metrics.

    ``prepare`` may add derived arrays to the batch from a PRNG key (e.g. noised images);
    ``inputs`` gives the model's ``(args, kwargs)``; ``loss`` returns the scalar training loss
    and per-step scalars; ``eval_metrics`` returns per-example arrays ``[B]`` that the loop
    averages under the padding mask; ``final`` turns those means (and sums) into the reported
    metrics. ``distill_logits`` says which outputs logit distillation compares, and where.
    """

    name = ""
    fields: dict[str, Any] = {}        # config.task fields and their defaults
    batch_fields: tuple[str, ...] = ()  # training batch fields the task reads
    train_metrics: tuple[str, ...] = ("loss",)  # scalars of each training step
    headline: tuple[str, ...] = ("loss",)       # eval metrics on the console line

    def __init__(self, cfg: dict[str, Any], *, spec: dict[str, Any], config: Any = None):
        self.cfg, self.spec, self.config = cfg, spec, config

    @classmethod
    def check_fields(cls, cfg: dict[str, Any]) -> None:
        """Reject field values that cannot work (ValueError)."""

    def check_batch(self, batch: dict[str, Any], model: Any = None) -> None:
        """Reject a batch this task (or ``model``) cannot take, before anything is compiled."""
        missing = [k for k in self.batch_fields if k not in batch]
        if missing:
            raise ValueError(f"task {self.name!r} needs batch field(s) {missing}; the dataset "
                             f"gives {sorted(batch)}")

    def prepare(self, batch: dict[str, Any], rng: jax.Array) -> dict[str, Any]:
        """The batch with any randomly derived arrays the loss needs (default: unchanged)."""
        return batch

    @abc.abstractmethod
    def inputs(self, batch: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        """``(args, kwargs)`` of the model call on ``batch``."""

    @abc.abstractmethod
    def loss(self, out: Any, batch: dict[str, Any]) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Training loss and the step's other scalars (named in ``train_metrics``)."""

    def distill_logits(self, out: Any, batch: dict[str, Any]) -> tuple[jax.Array, Any]:
        """The logits logit distillation compares and the mask of positions that count."""
        return out, None

    @abc.abstractmethod
    def eval_metrics(self, out: Any, batch: dict[str, Any]) -> dict[str, jax.Array]:
        """Per-example metrics ``[B]`` of one eval batch."""

    def final(self, means: dict[str, float], sums: dict[str, float],
              ds: Any = None) -> dict[str, float]:
        """The reported eval metrics from the masked means and sums over the eval set."""
        return dict(means)

    def model_metrics(self, model: Any, ds: Any) -> dict[str, float]:
        """Metrics computed once, after training, from the final model (e.g. of generated
        text); default none."""
        return {}

    def describe(self, metrics: dict[str, float]) -> str:
        """The console summary of eval metrics."""
        return " | ".join(f"{k} {metrics[k]:.4f}" for k in self.headline if k in metrics)


def sequence_length(batch: dict[str, Any], key: str) -> int:
    """The length axis of ``batch[key]``."""
    return int(np.shape(batch[key])[1])


def check_max_len(task: str, batch: dict[str, Any], keys: tuple[str, ...], model: Any) -> None:
    """A sequence longer than the model's maximum (``model.max_len``) is an error."""
    limit = getattr(model, "max_len", None)
    for k in keys:
        if k in batch and limit is not None and sequence_length(batch, k) > int(limit):
            raise ValueError(f"task {task!r}: batch field {k!r} has sequences of length "
                             f"{sequence_length(batch, k)}, longer than the model's maximum "
                             f"max_len={int(limit)}; shorten data.max_len or use a model with "
                             "more positions")

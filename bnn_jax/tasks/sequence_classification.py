"""Sequence classification (GLUE-style): one label per sequence, or a regression score.

``model(input_ids, attention_mask=..., token_type_ids=...) -> [B, num_labels]``. With
``num_labels == 1`` in the data spec (STS-B) the task is regression: mean squared error to the
float ``label``, as Hugging Face's ``BertForSequenceClassification`` does for one label.
"""

from __future__ import annotations

import jax.numpy as jnp

from bnn_jax.tasks.base import Task as BaseTask, check_max_len
from bnn_jax.tasks.classification import cross_entropy


class Task(BaseTask):
    """Cross-entropy and accuracy, or (one label) MSE with the prediction kept for metrics."""

    name = "sequence_classification"
    fields = {"label_smoothing": 0.0}
    batch_fields = ("input_ids", "attention_mask", "token_type_ids", "label")

    @classmethod
    def check_fields(cls, cfg):
        if not 0.0 <= float(cfg["label_smoothing"]) < 1.0:
            raise ValueError(f"config.task.label_smoothing must be in [0, 1), got "
                             f"{cfg['label_smoothing']!r}")

    @property
    def regression(self) -> bool:
        return int(self.spec.get("num_labels", 2)) == 1

    @property
    def train_metrics(self):
        return ("loss",) if self.regression else ("loss", "accuracy")

    @property
    def headline(self):
        return ("loss",) if self.regression else ("loss", "accuracy")

    def check_batch(self, batch, model=None):
        super().check_batch(batch, model)
        check_max_len(self.name, batch, ("input_ids",), model)

    def inputs(self, batch):
        return (batch["input_ids"],), {"attention_mask": batch["attention_mask"],
                                       "token_type_ids": batch["token_type_ids"]}

    def _per_example(self, out, batch):
        if self.regression:
            return jnp.square(out[:, 0] - batch["label"].astype(out.dtype))
        return cross_entropy(out, batch["label"], float(self.cfg["label_smoothing"]))

    def loss(self, out, batch):
        loss = jnp.mean(self._per_example(out, batch))
        if self.regression:
            return loss, {}
        return loss, {"accuracy": jnp.mean((jnp.argmax(out, -1) == batch["label"])
                                           .astype(jnp.float32))}

    def eval_metrics(self, out, batch):
        m = {"loss": self._per_example(out, batch)}
        if not self.regression:
            m["accuracy"] = (jnp.argmax(out, -1) == batch["label"]).astype(jnp.float32)
        return m

"""Sequence classification (GLUE-style): one label per sequence, or a regression score.

``model(input_ids, attention_mask=..., token_type_ids=...) -> [B, num_labels]``. With
``num_labels == 1`` in the data spec (STS-B) the task is regression: mean squared error to the
float ``label``, as Hugging Face's ``BertForSequenceClassification`` does for one label.
On a GLUE dataset (``ds.name`` ``glue/<task>``) the final model's eval predictions are also
scored with that task's GLUE metrics (``glue_matthews`` for CoLA, ``glue_f1`` for MRPC/QQP,
``glue_pearson``/``glue_spearman`` for STS-B, ..., in percent).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

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

    def predictions(self, model, arrays, batch_size: int) -> np.ndarray:
        """Class ids (or regression scores) of the model on every row of ``arrays``."""
        graph, state = nnx.split(model)

        @jax.jit
        def predict(state, batch):
            args, kwargs = self.inputs(batch)
            out = nnx.merge(graph, state)(*args, **kwargs)
            return out[:, 0] if self.regression else jnp.argmax(out, -1)

        n = len(arrays["input_ids"])
        fields = ("input_ids", "attention_mask", "token_type_ids")
        out = []
        for lo in range(0, n, batch_size):
            rows = np.minimum(np.arange(lo, lo + batch_size), n - 1)  # one shape: one compile
            out.append(np.asarray(predict(state, {k: arrays[k][rows] for k in fields})))
        return np.concatenate(out)[:n]

    def model_metrics(self, model, ds):
        name = getattr(ds, "name", "")
        if not name.startswith("glue/"):
            return {}
        from bnn_jax.analysis import text_metrics

        preds = self.predictions(model, ds.eval, ds.eval_batch_size)
        scores = text_metrics.glue(name.split("/", 1)[1], preds, ds.eval["label"])
        return {f"glue_{k}": v for k, v in scores.items()}

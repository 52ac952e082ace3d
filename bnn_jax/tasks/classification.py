"""Image classification: softmax cross-entropy (``config.loss``), top-1 and top-5 accuracy.

``model_regularizer=True`` calls the model as ``model(image, regularizer=True)`` and adds the
second output (a weight regularizer the model computes, e.g. BiPer's) to the training loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from bnn_jax.tasks.base import Task as BaseTask


def top_k_correct(logits, labels, k):
    """1.0 where ``labels`` is among the ``k`` largest logits."""
    k = min(k, logits.shape[-1])
    top = jax.lax.top_k(logits, k)[1]
    return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
    """Per-example softmax cross-entropy to (optionally smoothed) one-hot labels."""
    onehot = jax.nn.one_hot(labels, logits.shape[-1])
    if label_smoothing:
        onehot = optax.smooth_labels(onehot, label_smoothing)
    return optax.softmax_cross_entropy(logits, onehot)


class Task(BaseTask):
    """``model(image) -> logits [B, C]``; ``label`` [B] int32."""

    name = "classification"
    fields = {"model_regularizer": False}
    batch_fields = ("image", "label")
    train_metrics = ("loss", "accuracy")
    headline = ("loss", "top1", "top5")

    def _smoothing(self) -> float:
        return float(self.config.loss.label_smoothing) if self.config is not None else 0.0

    @classmethod
    def check_fields(cls, cfg):
        if not isinstance(cfg.get("model_regularizer", False), bool):
            raise ValueError(f"config.task.model_regularizer must be True or False, got "
                             f"{cfg['model_regularizer']!r}")

    def _regularized(self) -> bool:
        return bool(self.cfg.get("model_regularizer", False))

    def inputs(self, batch):
        return (batch["image"],), ({"regularizer": True} if self._regularized() else {})

    def _split(self, out):
        """``(logits, regularizer)`` of the model's output."""
        if self._regularized():
            return out[0], out[1]
        return out, None

    def loss(self, out, batch):
        out, reg = self._split(out)
        loss = jnp.mean(cross_entropy(out, batch["label"], self._smoothing()))
        acc = jnp.mean((jnp.argmax(out, -1) == batch["label"]).astype(jnp.float32))
        if reg is None:
            return loss, {"accuracy": acc}
        return loss + reg, {"accuracy": acc, "regularizer": reg}

    def distill_logits(self, out, batch):
        return self._split(out)[0], None

    def eval_metrics(self, out, batch):
        out = self._split(out)[0]
        return {"loss": cross_entropy(out, batch["label"], self._smoothing()),
                "top1": top_k_correct(out, batch["label"], 1),
                "top5": top_k_correct(out, batch["label"], 5)}

    def describe(self, metrics):
        return (f"loss {metrics['loss']:.4f} | top-1 {metrics['top1']:.4f} | top-5 "
                f"{metrics['top5']:.4f}")

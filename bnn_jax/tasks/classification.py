"""Image classification: softmax cross-entropy (``config.loss``), top-1 and top-5 accuracy."""

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
    fields = {}
    batch_fields = ("image", "label")
    train_metrics = ("loss", "accuracy")
    headline = ("loss", "top1", "top5")

    def _smoothing(self) -> float:
        return float(self.config.loss.label_smoothing) if self.config is not None else 0.0

    def inputs(self, batch):
        return (batch["image"],), {}

    def loss(self, out, batch):
        loss = jnp.mean(cross_entropy(out, batch["label"], self._smoothing()))
        acc = jnp.mean((jnp.argmax(out, -1) == batch["label"]).astype(jnp.float32))
        return loss, {"accuracy": acc}

    def eval_metrics(self, out, batch):
        return {"loss": cross_entropy(out, batch["label"], self._smoothing()),
                "top1": top_k_correct(out, batch["label"], 1),
                "top5": top_k_correct(out, batch["label"], 5)}

    def describe(self, metrics):
        return (f"loss {metrics['loss']:.4f} | top-1 {metrics['top1']:.4f} | top-5 "
                f"{metrics['top5']:.4f}")

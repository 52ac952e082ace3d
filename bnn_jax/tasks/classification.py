"""Image classification: softmax cross-entropy (``config.loss``), top-1 and top-5 accuracy.

``model_regularizer=True`` calls the model as ``model(image, regularizer=True)`` and adds the
second output (a weight regularizer the model computes, e.g. BiPer's) to the training loss.

A distilled ViT with ``distilled_training`` returns both heads in training
(:class:`bnn_jax.models.vit.HeadLogits`); then each head has its own loss, as DeiT's
``DistillationLoss`` (facebookresearch/deit ``losses.py`` lines 38-69): the task loss is the
cross-entropy of the class-token head to the labels, and logit distillation
(``config.kd.terms``, e.g. ``hard`` with weight alpha and ``task_weight`` 1 - alpha) compares
the distillation-token head with the teacher. The training accuracy and evaluation use the
mean of the two heads, DeiT's prediction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from bnn_jax.models.vit import HeadLogits
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


def _prediction(out):
    """The logits a prediction is read from (a distilled model's head mean)."""
    return out.average() if isinstance(out, HeadLogits) else out


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

    def check_batch(self, batch, model=None):
        super().check_batch(batch, model)
        kd = getattr(self.config, "kd", None)
        if getattr(model, "distilled_training", False) and not (kd is not None and kd.enabled):
            raise ValueError("config.model.distilled_training=True trains the distillation "
                             "head from a teacher only; enable config.kd (e.g. terms="
                             "[dict(name='hard', weight=0.5)], task_weight=0.5, DeiT's hard "
                             "distillation) or set distilled_training=False")

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
        # DeiT: the labels train the class-token head alone (the other head is distilled).
        supervised = out.cls if isinstance(out, HeadLogits) else out
        out = _prediction(out)
        loss = jnp.mean(cross_entropy(supervised, batch["label"], self._smoothing()))
        acc = jnp.mean((jnp.argmax(out, -1) == batch["label"]).astype(jnp.float32))
        if reg is None:
            return loss, {"accuracy": acc}
        return loss + reg, {"accuracy": acc, "regularizer": reg}

    def distill_logits(self, out, batch):
        out = self._split(out)[0]
        return (out.dist if isinstance(out, HeadLogits) else out), None

    def eval_metrics(self, out, batch):
        out = _prediction(self._split(out)[0])
        return {"loss": cross_entropy(out, batch["label"], self._smoothing()),
                "top1": top_k_correct(out, batch["label"], 1),
                "top5": top_k_correct(out, batch["label"], 5)}

    def describe(self, metrics):
        return (f"loss {metrics['loss']:.4f} | top-1 {metrics['top1']:.4f} | top-5 "
                f"{metrics['top5']:.4f}")

"""Causal language modelling: next-token cross-entropy over the tokens ``loss_mask`` keeps.

``model(input_ids, positions=..., segment_ids=...) -> logits [B, L, V]``; packed batches carry
``positions`` and ``segment_ids`` (tokens attend within their segment), padding has
``loss_mask == 0``. The loss is the mean over counted tokens of the whole batch; evaluation
reports the token-weighted loss, its perplexity ``exp(loss)`` and, when the dataset knows the
UTF-8 size of its raw eval text (``ds.eval_num_bytes``), bits per byte
``Σ nll / (ln 2 · bytes)``, which does not depend on the tokenizer.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from bnn_jax.tasks.base import Task as BaseTask, check_max_len


def token_nll(logits, targets):
    """``−log softmax(logits)[target]`` per token."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


class Task(BaseTask):
    """Token-level cross-entropy with padding/packing masks."""

    name = "causal_lm"
    fields = {"label_smoothing": 0.0}
    batch_fields = ("input_ids", "target_ids", "loss_mask")
    train_metrics = ("loss", "accuracy")
    headline = ("loss", "perplexity", "bits_per_byte")

    @classmethod
    def check_fields(cls, cfg):
        if not 0.0 <= float(cfg["label_smoothing"]) < 1.0:
            raise ValueError(f"config.task.label_smoothing must be in [0, 1), got "
                             f"{cfg['label_smoothing']!r}")

    def check_batch(self, batch, model=None):
        super().check_batch(batch, model)
        check_max_len(self.name, batch, ("input_ids",), model)

    def inputs(self, batch):
        kwargs = {k: batch[k] for k in ("positions", "segment_ids") if k in batch}
        return (batch["input_ids"],), kwargs

    def _smoothed_nll(self, out, targets):
        nll = token_nll(out, targets)
        eps = float(self.cfg["label_smoothing"])
        if eps:  # (1-ε)·nll + ε·mean over the vocabulary of −log p
            uniform = -jnp.mean(jax.nn.log_softmax(out.astype(jnp.float32), -1), -1)
            nll = (1 - eps) * nll + eps * uniform
        return nll

    def loss(self, out, batch):
        mask = batch["loss_mask"].astype(jnp.float32)
        n = jnp.maximum(jnp.sum(mask), 1.0)
        loss = jnp.sum(self._smoothed_nll(out, batch["target_ids"]) * mask) / n
        hit = (jnp.argmax(out, -1) == batch["target_ids"]).astype(jnp.float32)
        return loss, {"accuracy": jnp.sum(hit * mask) / n}

    def distill_logits(self, out, batch):
        return out, batch["loss_mask"]

    def eval_metrics(self, out, batch):
        mask = batch["loss_mask"].astype(jnp.float32)
        hit = (jnp.argmax(out, -1) == batch["target_ids"]).astype(jnp.float32)
        return {"nll_sum": jnp.sum(token_nll(out, batch["target_ids"]) * mask, -1),
                "tokens": jnp.sum(mask, -1), "correct": jnp.sum(hit * mask, -1)}

    def final(self, means, sums, ds=None):
        tokens = max(sums["tokens"], 1.0)
        loss = sums["nll_sum"] / tokens
        out = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
               "accuracy": sums["correct"] / tokens, "tokens": sums["tokens"]}
        num_bytes = getattr(ds, "eval_num_bytes", None)
        if num_bytes:
            out["bits_per_byte"] = sums["nll_sum"] / (math.log(2) * float(num_bytes))
        return out

"""BERT pretraining: masked language modelling plus next-sentence prediction.

``model(input_ids, attention_mask=..., token_type_ids=...) -> (mlm_logits [B, L, V],
nsp_logits [B, 2])`` (:class:`bnn_jax.models.bert.Model` with ``head="pretraining"``). The loss
is Hugging Face ``BertForPreTraining``'s: the cross-entropy of the masked positions
(``mlm_labels != -100``, mean over every masked token of the batch) plus ``nsp_weight`` times
the next-sentence cross-entropy (label 0: B follows A). Distillation compares the NSP logits,
as BiPFT's ``binary_pretraining/learner.py`` (l. 37) does. Eval: MLM accuracy and perplexity
over the masked tokens, NSP accuracy.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from bnn_jax.tasks.base import Task as BaseTask, check_max_len
from bnn_jax.tasks.causal_lm import token_nll

IGNORE = -100


class Task(BaseTask):
    """Masked-token cross-entropy + next-sentence cross-entropy."""

    name = "masked_lm"
    fields = {"nsp_weight": 1.0}
    batch_fields = ("input_ids", "token_type_ids", "attention_mask", "mlm_labels",
                    "next_sentence_label")
    train_metrics = ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy")
    headline = ("loss", "mlm_accuracy", "nsp_accuracy")

    @classmethod
    def check_fields(cls, cfg):
        w = cfg["nsp_weight"]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
            raise ValueError(f"config.task.nsp_weight must be a number >= 0, got {w!r}")

    def check_batch(self, batch, model=None):
        super().check_batch(batch, model)
        check_max_len(self.name, batch, ("input_ids",), model)
        head = getattr(model, "head", "pretraining")
        if head != "pretraining":
            raise ValueError(f"task 'masked_lm' needs MLM and NSP logits: the model has "
                             f"head={head!r}; set config.model.head='pretraining'")

    def inputs(self, batch):
        return (batch["input_ids"],), {"attention_mask": batch["attention_mask"],
                                       "token_type_ids": batch["token_type_ids"]}

    def _parts(self, out, batch):
        """Per-token masked NLL and hits, the token mask, per-example NSP NLL and hits."""
        mlm, nsp = out
        labels = batch["mlm_labels"]
        mask = (labels != IGNORE).astype(jnp.float32)
        safe = jnp.where(labels == IGNORE, 0, labels)
        nll = token_nll(mlm, safe) * mask
        hit = (jnp.argmax(mlm, -1) == safe).astype(jnp.float32) * mask
        nsp_nll = token_nll(nsp, batch["next_sentence_label"])
        nsp_hit = (jnp.argmax(nsp, -1) == batch["next_sentence_label"]).astype(jnp.float32)
        return nll, hit, mask, nsp_nll, nsp_hit

    def loss(self, out, batch):
        nll, hit, mask, nsp_nll, nsp_hit = self._parts(out, batch)
        n = jnp.maximum(jnp.sum(mask), 1.0)
        mlm_loss, nsp_loss = jnp.sum(nll) / n, jnp.mean(nsp_nll)
        loss = mlm_loss + float(self.cfg["nsp_weight"]) * nsp_loss
        return loss, {"mlm_loss": mlm_loss, "nsp_loss": nsp_loss,
                      "mlm_accuracy": jnp.sum(hit) / n, "nsp_accuracy": jnp.mean(nsp_hit)}

    def distill_logits(self, out, batch):
        return out[1], None

    def eval_metrics(self, out, batch):
        nll, hit, mask, nsp_nll, nsp_hit = self._parts(out, batch)
        return {"mlm_nll_sum": jnp.sum(nll, -1), "mlm_correct": jnp.sum(hit, -1),
                "mlm_tokens": jnp.sum(mask, -1), "nsp_loss": nsp_nll, "nsp_accuracy": nsp_hit}

    def final(self, means, sums, ds=None):
        tokens = max(sums["mlm_tokens"], 1.0)
        mlm_loss = sums["mlm_nll_sum"] / tokens
        return {"loss": mlm_loss + float(self.cfg["nsp_weight"]) * means["nsp_loss"],
                "mlm_loss": mlm_loss, "mlm_perplexity": math.exp(min(mlm_loss, 700.0)),
                "mlm_accuracy": sums["mlm_correct"] / tokens, "mlm_tokens": sums["mlm_tokens"],
                "nsp_loss": means["nsp_loss"], "nsp_accuracy": means["nsp_accuracy"]}

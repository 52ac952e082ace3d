"""Sequence to sequence (summarization, translation): teacher-forced cross-entropy.

``model(input_ids, decoder_input_ids, attention_mask=...) -> logits [B, T, V]``. Training uses
label smoothing ``ε`` as fairseq/Hugging Face do for BART and mBART: ``(1−ε)·nll + ε·mean_v(−log
p_v)``. Evaluation reports the teacher-forced loss (unsmoothed), perplexity and token accuracy;
metrics of generated text (ROUGE, BLEU) need decoding, which ``generate`` turns on:
the loop then hands the final model to :meth:`Task.model_metrics`.
"""

from __future__ import annotations

import math

from bnn_jax.tasks.base import Task as BaseTask, check_max_len
from bnn_jax.tasks.causal_lm import Task as CausalLM


class Task(BaseTask):
    """Teacher-forced seq2seq loss; decoding metrics when ``generate`` is set."""

    name = "seq2seq"
    fields = {"label_smoothing": 0.1, "generate": {}}
    batch_fields = ("input_ids", "attention_mask", "decoder_input_ids", "target_ids",
                    "loss_mask")
    train_metrics = ("loss", "accuracy")
    headline = ("loss", "perplexity", "accuracy")

    @classmethod
    def check_fields(cls, cfg):
        CausalLM.check_fields(cfg)
        gen = dict(cfg["generate"])
        if gen:
            try:
                from bnn_jax import generate  # noqa: F401
            except ImportError as e:
                raise ValueError("config.task.generate needs bnn_jax.generate, which is not "
                                 f"importable here ({e}); leave config.task.generate empty "
                                 "for teacher-forced metrics only") from e

    def check_batch(self, batch, model=None):
        super().check_batch(batch, model)
        check_max_len(self.name, batch, ("input_ids", "decoder_input_ids"), model)

    def inputs(self, batch):
        return ((batch["input_ids"], batch["decoder_input_ids"]),
                {"attention_mask": batch["attention_mask"]})

    # Same token-level loss and metrics as causal LM; only the model call differs.
    loss = CausalLM.loss
    _smoothed_nll = CausalLM._smoothed_nll
    distill_logits = CausalLM.distill_logits
    eval_metrics = CausalLM.eval_metrics

    def final(self, means, sums, ds=None):
        tokens = max(sums["tokens"], 1.0)
        loss = sums["nll_sum"] / tokens
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
                "accuracy": sums["correct"] / tokens, "tokens": sums["tokens"]}

    def model_metrics(self, model, ds) -> dict[str, float]:
        """ROUGE or BLEU of the decoded eval sources, when ``config.task.generate`` is set.

        ``generate`` holds :func:`bnn_jax.generate.evaluate_seq2seq` settings (``metric``
        "rouge"/"bleu", ``max_new_tokens``, ``strategy``, ``num_beams``,
        ``length_penalty``, ...); references are the dataset's ``eval_texts``.
        """
        gen = dict(self.cfg["generate"])
        if not gen:
            return {}
        from bnn_jax import generate

        return generate.evaluate_seq2seq(model, ds, **gen)

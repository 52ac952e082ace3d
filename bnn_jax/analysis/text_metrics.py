"""Text metrics: perplexity, bits per byte, ROUGE, BLEU and the GLUE metrics, as papers report them.

Scores are percentages (0-100) like the tables of the papers (ROUGE-1/2/L F1 as TBT reports
them, via Google's ``rouge-score`` package with the Porter stemmer; corpus BLEU via
``sacrebleu`` with its default 13a tokenizer; GLUE's accuracy, F1 of the positive class,
Matthews correlation, Pearson and Spearman correlations) except perplexity and bits per byte.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def perplexity(total_nll: float, num_tokens: float) -> float:
    """``exp(sum of token negative log-likelihoods (nats) / number of tokens)``."""
    return math.exp(total_nll / num_tokens)


def bits_per_byte(total_nll: float, num_bytes: int) -> float:
    """Total negative log-likelihood (nats) in bits per UTF-8 byte of the raw text: comparable
    across tokenizers, since every tokenizer encodes the same bytes."""
    return total_nll / (num_bytes * math.log(2))


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(predictions: Sequence[str], references: Sequence[str],
          types: Sequence[str] = ROUGE_TYPES, use_stemmer: bool = True) -> dict[str, float]:
    """Mean ROUGE F1 over the pairs, in percent (``rougeLsum`` splits summaries on newlines)."""
    from rouge_score import rouge_scorer

    _same_length(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=use_stemmer)
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    return {t: 100.0 * float(np.mean([s[t].fmeasure for s in scores])) for t in types}


def bleu(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]
         ) -> float:
    """Corpus BLEU (sacrebleu, 13a tokenization); ``references`` one string per prediction or,
    for several references, one list per prediction."""
    import sacrebleu

    _same_length(predictions, references)
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    width = max(len(r) for r in refs)
    if any(len(r) != width for r in refs):
        raise ValueError("bleu: every prediction needs the same number of references")
    streams = [[r[i] for r in refs] for i in range(width)]
    return float(sacrebleu.corpus_bleu(list(predictions), streams).score)


def accuracy(predictions, labels) -> float:
    p, y = _arrays(predictions, labels)
    return 100.0 * float(np.mean(p == y))


def f1(predictions, labels, positive: int = 1) -> float:
    """F1 of the positive class (MRPC, QQP)."""
    p, y = _arrays(predictions, labels)
    tp = np.sum((p == positive) & (y == positive))
    fp, fn = np.sum((p == positive) & (y != positive)), np.sum((p != positive) & (y == positive))
    return 100.0 * float(2 * tp / (2 * tp + fp + fn)) if tp else 0.0


def matthews(predictions, labels) -> float:
    """Matthews correlation of binary predictions (CoLA); 0 when a marginal is constant."""
    p, y = _arrays(predictions, labels)
    tp, tn = np.sum((p == 1) & (y == 1)), np.sum((p == 0) & (y == 0))
    fp, fn = np.sum((p == 1) & (y == 0)), np.sum((p == 0) & (y == 1))
    den = math.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    return 100.0 * float(tp * tn - fp * fn) / den if den else 0.0


def pearson(predictions, labels) -> float:
    p, y = (np.asarray(a, np.float64) for a in _arrays(predictions, labels))
    return 100.0 * float(np.corrcoef(p, y)[0, 1])


def spearman(predictions, labels) -> float:
    """Pearson correlation of the ranks (ties get their average rank)."""
    from scipy.stats import rankdata

    p, y = _arrays(predictions, labels)
    return pearson(rankdata(p), rankdata(y))


GLUE_METRICS = {
    "cola": ("matthews",), "sst2": ("accuracy",), "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"), "stsb": ("pearson", "spearman"), "mnli": ("accuracy",),
    "qnli": ("accuracy",), "rte": ("accuracy",), "wnli": ("accuracy",),
}
_METRIC_FNS = {"accuracy": accuracy, "f1": f1, "matthews": matthews, "pearson": pearson,
               "spearman": spearman}


def glue(task: str, predictions, labels) -> dict[str, float]:
    """The GLUE metrics of ``task`` (class ids, or scores for STS-B), in percent."""
    if task not in GLUE_METRICS:
        raise ValueError(f"unknown GLUE task {task!r}; valid: {', '.join(GLUE_METRICS)}")
    return {m: _METRIC_FNS[m](predictions, labels) for m in GLUE_METRICS[task]}


def _arrays(predictions, labels):
    p, y = np.asarray(predictions), np.asarray(labels)
    if p.shape != y.shape or p.ndim != 1 or not len(p):
        raise ValueError(f"predictions {p.shape} and labels {y.shape} must be the same "
                         "non-empty 1-D shape")
    return p, y


def _same_length(predictions, references):
    if len(predictions) != len(references) or not len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references; "
                         "they must pair up (and not be empty)")

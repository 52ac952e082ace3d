"""Text metrics against values computed by hand."""

import math

import numpy as np
import pytest

from bnn_jax.analysis import text_metrics as tm


def test_perplexity_and_bits_per_byte():
    assert tm.perplexity(4 * math.log(8.0), 4) == pytest.approx(8.0)
    # 3 nats over 2 bytes = 1.5 nats/byte = 1.5 / ln 2 bits.
    assert tm.bits_per_byte(3.0, 2) == pytest.approx(1.5 / math.log(2))


def test_rouge_by_hand():
    out = tm.rouge(["the cat sat"], ["the cat sat on the mat"])
    # unigrams: P 3/3, R 3/6 -> F 2/3; bigrams: P 2/2, R 2/5 -> F 4/7; LCS 3 -> as unigrams.
    assert out["rouge1"] == pytest.approx(100 * 2 / 3)
    assert out["rouge2"] == pytest.approx(100 * 4 / 7)
    assert out["rougeL"] == pytest.approx(100 * 2 / 3)
    # Stemming: "cats" matches "cat"; the mean is over pairs.
    two = tm.rouge(["cats", "dog"], ["cat", "bird"], types=("rouge1",))
    assert two["rouge1"] == pytest.approx(50.0)


def test_bleu_by_hand():
    pred, ref = "the cat sat on the mat", "the cat sat on a mat"
    # clipped n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths: no brevity penalty.
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert tm.bleu([pred], [ref]) == pytest.approx(expected, abs=1e-6)
    assert tm.bleu([ref], [[pred, ref]]) == pytest.approx(100.0)


def test_glue_metrics_by_hand():
    p, y = np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1])
    # tp 2, fp 1, tn 1, fn 1
    assert tm.accuracy(p, y) == pytest.approx(60.0)
    assert tm.f1(p, y) == pytest.approx(100 * 4 / 6)
    assert tm.matthews(p, y) == pytest.approx(100 * (2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2))
    assert tm.matthews(np.ones(4, int), np.array([1, 0, 1, 0])) == 0.0
    s, t = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 4.0, 5.0, 4.0])
    # Pearson: deviations (-1.5,-.5,.5,1.5) and (-1.75,.25,1.25,.25): 3.5/sqrt(5·4.75)
    assert tm.pearson(s, t) == pytest.approx(100 * 3.5 / math.sqrt(5 * 4.75))
    # Spearman: ranks of t with ties (1, 2.5, 4, 2.5) against (1, 2, 3, 4).
    r = np.array([1, 2.5, 4, 2.5])
    dev = r - r.mean()
    assert tm.spearman(s, t) == pytest.approx(
        100 * (np.array([-1.5, -.5, .5, 1.5]) @ dev) / math.sqrt(5 * (dev @ dev)))
    assert set(tm.glue("mrpc", p, y)) == {"accuracy", "f1"}
    assert set(tm.glue("stsb", s, t)) == {"pearson", "spearman"}
    # The 8 tasks BERT-style papers report, plus WNLI.
    assert set(tm.GLUE_METRICS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli",
                                    "rte", "wnli"}


def test_bad_metric_input():
    with pytest.raises(ValueError, match="unknown GLUE task 'sst'; valid: cola, sst2"):
        tm.glue("sst", [1], [1])
    with pytest.raises(ValueError, match="same non-empty 1-D shape"):
        tm.accuracy([1, 0], [1])
    with pytest.raises(ValueError, match="must pair up"):
        tm.rouge(["a"], [])

"""LM evaluation: windowed perplexity against a hand computation, zero-shot prompts of the
standard formats (3-item fixtures) and their log-likelihood scoring re-stated here."""

import math
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import lm_eval
from bnn_jax.data.text import load_tokenizer
from bnn_jax.models import hub, llama

FIX = pathlib.Path(__file__).resolve().parents[1] / "fixtures"


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


_forward = nnx.jit(lambda m, x: m(x))


def token_nll(model, row, width=16):
    """-log p(row[t] | row[:t]) for t = 1..len-1, from one forward pass of the model (causal:
    zeros appended up to a fixed width change nothing before them)."""
    padded = np.zeros((1, max(width, len(row) - 1)), np.int64)
    padded[0, :len(row) - 1] = row[:-1]
    logits = np.asarray(_forward(model, jnp.asarray(padded)), np.float64)[0, :len(row) - 1]
    return -log_softmax(logits)[np.arange(len(row) - 1), row[1:]]


@pytest.fixture(scope="module")
def tiny():
    return llama.Model(vocab_size=11, max_len=16, hidden=16, intermediate=24, num_layers=1,
                       num_heads=2, rngs=nnx.Rngs(3))


def test_perplexity_is_exp_mean_nll_of_disjoint_windows(tiny):
    ids = np.random.default_rng(0).integers(0, 11, 50)
    got = lm_eval.perplexity(tiny, ids, window=8, batch_size=4)
    # 6 full windows of 8 tokens, the last 2 tokens dropped; 7 predictions per window.
    per_window = [token_nll(tiny, ids[8 * i:8 * i + 8]).mean() for i in range(6)]
    assert got["windows"] == 6 and got["tokens"] == 42
    np.testing.assert_allclose(got["perplexity"], math.exp(np.mean(per_window)), rtol=1e-5)


def test_perplexity_with_stride_scores_each_token_once(tiny):
    ids = np.random.default_rng(1).integers(0, 11, 21)
    got = lm_eval.perplexity(tiny, ids, window=8, stride=4)
    scored = {}
    for start in (0, 4, 8, 12):  # windows [0,8) [4,12) [8,16) [12,20); token 20 unscored
        nll = token_nll(tiny, ids[start:start + 8])
        for t in range(start + 1, start + 8):
            scored.setdefault(t, nll[t - start - 1])  # the first window to score t counts
    assert sorted(scored) == list(range(1, 20)) and got["tokens"] == 19
    np.testing.assert_allclose(got["loss"], np.mean(list(scored.values())), rtol=1e-5)
    with pytest.raises(ValueError, match="fewer than one window"):
        lm_eval.perplexity(tiny, ids[:5], window=8)


def test_zero_shot_fixtures_parse_into_the_harness_prompts():
    d = FIX / "zeroshot"
    arc = lm_eval.load_task("arc_easy", d)
    assert arc[0].contexts[0] == "Question: Which keyword defines a function in Python?\nAnswer:"
    assert arc[0].continuations == (" class", " def", " import", " with")
    assert [it.label for it in arc] == [1, 0, 2]
    wino = lm_eval.load_task("winogrande", d)[1]
    assert wino.contexts == ("The trophy does not fit in the suitcase because the trophy",
                             "The trophy does not fit in the suitcase because the suitcase")
    assert wino.continuations == (" is too small.",) * 2 and wino.label == 1
    hs = lm_eval.load_task("hellaswag", d)[2]
    assert hs.contexts[0] == "Baking cookies: How to bake cookies. Preheat the oven. Then"
    assert hs.continuations[0] == " mix the dough in a bowl."
    boolq = lm_eval.load_task("boolq", d)
    assert boolq[0].continuations == (" no", " yes") and [b.label for b in boolq] == [1, 0, 0]
    assert [p.label for p in lm_eval.load_task("piqa", d)] == [0, 1, 0]
    assert lm_eval.load_task("openbookqa", d)[1].contexts[0] == "When water freezes it becomes"
    with pytest.raises(ValueError, match="place WinoGrande 1.1 dev.jsonl"):
        lm_eval.load_task("winogrande", FIX)
    with pytest.raises(ValueError, match="valid tasks"):
        lm_eval.load_task("mmlu", d)


def test_zero_shot_accuracy_is_the_argmax_of_continuation_loglikelihoods():
    model, tok = hub.load(FIX / "hf_llama"), load_tokenizer(FIX / "hf_llama")
    items = lm_eval.load_task("arc_challenge", FIX / "zeroshot")
    hit = hit_norm = 0
    for it in items:
        scores = []
        for ctx, cont in zip(it.contexts, it.continuations):
            c, x = tok.encode(ctx), tok.encode(cont)
            row = np.array(c + x)
            scores.append(-token_nll(model, row, 64)[len(c) - 1:].sum())
        per_byte = np.array(scores) / [len(x.encode()) for x in it.continuations]
        hit += np.argmax(scores) == it.label
        hit_norm += np.argmax(per_byte) == it.label
    got = lm_eval.zero_shot(model, tok, items, max_len=64)
    assert got["acc"] == hit / 3 and got["acc_norm"] == hit_norm / 3 and got["items"] == 3
    ll = lm_eval.loglikelihood(model, tok, [(items[0].contexts[0], items[0].continuations[0])],
                               max_len=64)
    c, x = tok.encode(items[0].contexts[0]), tok.encode(items[0].continuations[0])
    np.testing.assert_allclose(ll[0], -token_nll(model, np.array(c + x), 64)[len(c) - 1:].sum(),
                               rtol=1e-5)


def test_wikitext_files_give_the_protocol_streams_and_calibration_windows(tmp_path):
    from bnn_jax.data.text import ByteTokenizer

    tok = ByteTokenizer()
    folder = tmp_path / "wikitext-2-raw"
    folder.mkdir()
    (folder / "wiki.test.raw").write_text(" = A = \n\n b c \n")
    (folder / "wiki.train.raw").write_text("".join(f" line {i} \n" for i in range(40)))
    stream = lm_eval.eval_stream("wikitext2", tok, window=8, data_dir=tmp_path)
    assert stream.tolist() == [tok.bos_id] + tok.encode(" = A = \n\n\n\n\n\n b c \n")
    calib = lm_eval.calibration("wikitext2", tok, n=3, seq_len=10, seed=4, data_dir=tmp_path)
    import random

    ids = [tok.bos_id] + tok.encode(" ".join(f" line {i} \n" for i in range(40)))
    rng = random.Random(4)
    starts = [rng.randint(0, len(ids) - 10 - 1) for _ in range(3)]
    assert calib.tolist() == [ids[s:s + 10] for s in starts]
    with pytest.raises(ValueError, match="c4-validation.00000-of-00008.json.gz"):
        lm_eval.eval_stream("c4", tok, window=8, data_dir=tmp_path)
    with pytest.raises(ValueError, match="valid corpora"):
        lm_eval.eval_stream("ptb", tok, window=8, data_dir=tmp_path)

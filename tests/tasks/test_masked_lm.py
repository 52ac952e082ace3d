"""BERT pretraining data and the masked_lm task: the masking rule's statistics and ignore
positions, sentence pairs, and the loss / eval metrics against numpy on a tiny BERT."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import data, models, tasks
from bnn_jax.data import pretraining, text

SEQ = 32
TOK = text.ByteTokenizer()
MASK = TOK.vocab_size  # the byte tokenizer's [MASK]: the id after its vocabulary


@pytest.fixture(scope="module")
def ds():
    return data.build(dict(name="pydoc_pretraining", batch_size=16, eval_batch_size=64,
                           seq_len=SEQ, tokenizer="byte"), seed=3)


def originals(arrays):
    """The unmasked ids: the label where a position is predicted, else the input."""
    labels = arrays["mlm_labels"]
    return np.where(labels != pretraining.IGNORE, labels, arrays["input_ids"])


def test_masking_follows_berts_rule(ds):
    a = ds.train
    labels, ids, att = a["mlm_labels"], a["input_ids"], a["attention_mask"]
    orig = originals(a)
    predicted = labels != pretraining.IGNORE
    lengths = att.sum(1)
    # Devlin et al.: round(15 % of the sequence's tokens) predictions, at least one.
    want = np.maximum(1, np.round(0.15 * lengths).astype(int))
    np.testing.assert_array_equal(predicted.sum(1), want)
    # Never [CLS] (position 0), [SEP] (BOS/EOS ids of the byte tokenizer) or padding.
    assert not predicted[:, 0].any() and (orig[:, 0] == TOK.bos_id).all()
    assert not predicted[orig == TOK.eos_id].any()
    assert not predicted[att == 0].any() and (ids[att == 0] == TOK.pad_id).all()
    assert ((orig == TOK.eos_id).sum(1) == 2).all()  # [CLS] A [SEP] B [SEP]
    # Of the predicted tokens: 80 % [MASK], 10 % kept, 10 % a random id (which equals the
    # original about once in 259 draws).
    n = predicted.sum()
    assert n > 30_000
    shown, truth = ids[predicted], labels[predicted]
    p_mask, p_kept = np.mean(shown == MASK), np.mean(shown == truth)
    p_rand = 1 - p_mask - p_kept
    assert abs(p_mask - 0.8) < 0.01 and abs(p_kept - 0.1) < 0.01 and abs(p_rand - 0.1) < 0.01
    rand = shown[(shown != MASK) & (shown != truth)]
    assert rand.min() >= 0 and rand.max() < TOK.vocab_size  # any id of the vocabulary
    assert abs(rand.mean() - (TOK.vocab_size - 1) / 2) < 6  # uniform over it
    # No [MASK] outside the predicted positions: the unpredicted inputs are the text itself.
    assert not (ids[~predicted] == MASK).any()
    assert ds.spec["vocab_size"] == TOK.vocab_size + 1


def test_the_cap_on_predictions_and_the_seed():
    rows = pretraining.pretraining_arrays(text.pydoc_corpus()[1][:20], TOK, 64,
                                          np.random.default_rng(0), max_predictions=3)
    assert (((rows["mlm_labels"] != -100).sum(1)) == 3).all()  # round(0.15·64)=10 capped
    again = pretraining.pretraining_arrays(text.pydoc_corpus()[1][:20], TOK, 64,
                                           np.random.default_rng(0), max_predictions=3)
    other = pretraining.pretraining_arrays(text.pydoc_corpus()[1][:20], TOK, 64,
                                           np.random.default_rng(1), max_predictions=3)
    for k in rows:
        np.testing.assert_array_equal(rows[k], again[k])
    assert not np.array_equal(rows["mlm_labels"], other["mlm_labels"])


def test_sentence_pairs_are_next_or_random_half_and_half(ds):
    a = ds.eval
    orig, types = originals(a), a["token_type_ids"]
    labels = a["next_sentence_label"]
    assert abs(labels.mean() - 0.5) < 0.05
    # Each document's text as the pairs are cut from it (sentences joined without spaces).
    docs = [b"".join(bytes(i - 3 for i in TOK.encode(s)) for s in pretraining.sentences(d))
            for d in text.pydoc_corpus()[1]]

    def segments(r):
        seps = np.flatnonzero(orig[r] == TOK.eos_id)
        a_, b_ = orig[r, 1:seps[0]], orig[r, seps[0] + 1:seps[1]]
        # token types: 0 for [CLS] A [SEP], 1 for B [SEP], 0 on padding
        np.testing.assert_array_equal(types[r, :seps[0] + 1], 0)
        np.testing.assert_array_equal(types[r, seps[0] + 1:seps[1] + 1], 1)
        assert not types[r, seps[1] + 1:].any()
        return bytes(int(i) - 3 for i in a_), bytes(int(i) - 3 for i in b_)

    def follows(sa, sb, d):
        # B starts soon after A ends (A's tail may have been cut off to fit the pair).
        p = d.find(sa)
        while p >= 0:
            end = p + len(sa)
            if d.find(sb, end, end + 2 * SEQ + len(sb)) >= 0:
                return True
            p = d.find(sa, p + 1)
        return False

    after = []
    for r in range(len(labels)):
        sa, sb = segments(r)
        assert sa and sb
        after.append(any(follows(sa, sb, d) for d in docs))
    after = np.asarray(after)
    assert after[labels == 0].all()  # label 0: B continues A in its document
    assert after[labels == 1].mean() < 0.05  # label 1: B is from another document


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_and_eval_metrics_match_numpy_on_a_tiny_bert(ds):
    task = tasks.build({"name": "masked_lm", "nsp_weight": 0.5}, spec=ds.spec)
    model = models.build(dict(name="bert", head="pretraining", hidden=16, intermediate=32,
                              num_layers=1, num_heads=2), rngs=nnx.Rngs(0), **ds.spec)
    b = {k: jnp.asarray(v) for k, v in ds.train_batch(0).items()}
    task.check_batch(b, model)
    args, kwargs = task.inputs(b)
    out = nnx.jit(lambda m, a, kw: m(*a, **kw))(model, args, kwargs)
    loss, aux = task.loss(out, b)
    mlm, nsp = (np.asarray(o, np.float64) for o in out)
    labels, nsl = np.asarray(b["mlm_labels"]), np.asarray(b["next_sentence_label"])
    rows, cols = np.nonzero(labels != -100)
    lp = log_softmax(mlm)[rows, cols]
    mlm_ce = -np.mean(lp[np.arange(len(rows)), labels[rows, cols]])
    nsp_ce = -np.mean(log_softmax(nsp)[np.arange(len(nsl)), nsl])
    np.testing.assert_allclose(float(loss), mlm_ce + 0.5 * nsp_ce, rtol=1e-5)
    np.testing.assert_allclose(float(aux["mlm_loss"]), mlm_ce, rtol=1e-5)
    acc = np.mean(lp.argmax(-1) == labels[rows, cols])
    np.testing.assert_allclose(float(aux["mlm_accuracy"]), acc, rtol=1e-6)
    # Eval: per-example sums, the means/sums the loop forms, then the final metrics.
    m = {k: np.asarray(v, np.float64) for k, v in task.eval_metrics(out, b).items()}
    sums = {k: v.sum() for k, v in m.items()}
    final = task.final({k: v.mean() for k, v in m.items()}, sums)
    np.testing.assert_allclose(final["mlm_perplexity"], np.exp(mlm_ce), rtol=1e-5)
    np.testing.assert_allclose(final["mlm_accuracy"], acc, rtol=1e-6)
    np.testing.assert_allclose(final["nsp_accuracy"], np.mean(nsp.argmax(-1) == nsl))
    np.testing.assert_allclose(final["loss"], mlm_ce + 0.5 * nsp_ce, rtol=1e-5)
    # Distillation compares the NSP logits (BiPFT's learner.py).
    np.testing.assert_array_equal(np.asarray(task.distill_logits(out, b)[0]), out[1])


def test_bad_configs_and_models_are_refused(ds):
    with pytest.raises(ValueError, match=r"nsp_weight must be a number >= 0"):
        tasks.validate({"name": "masked_lm", "nsp_weight": -1})
    with pytest.raises(ValueError, match=r"valid fields: \['nsp_weight'\]"):
        tasks.validate({"name": "masked_lm", "mlm_probability": 0.2})
    task = tasks.build({"name": "masked_lm"}, spec=ds.spec)
    mlm_only = models.build(dict(name="bert", hidden=16, intermediate=32, num_layers=1,
                                 num_heads=2), rngs=nnx.Rngs(0), **ds.spec)
    with pytest.raises(ValueError, match=r"head='mlm'; set config.model.head='pretraining'"):
        task.check_batch(ds.train_batch(0), mlm_only)
    with pytest.raises(ValueError, match=r"needs batch field\(s\) \['next_sentence_label'\]"):
        task.check_batch({k: v for k, v in ds.train_batch(0).items()
                          if k != "next_sentence_label"})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['packing'\].*pydoc_pretraining"):
        data.validate(dict(name="pydoc_pretraining", batch_size=8, eval_batch_size=8,
                           packing="stream"))
    with pytest.raises(ValueError, match=r"no mask token"):
        pretraining.mask_id(type("T", (), {"token_id": lambda self, t: None,
                                          "vocab_size": 10})())

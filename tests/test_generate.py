"""Decoding: cache == full forward, HF greedy and beam parity, hand-checked beams, sampling."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import generate as gen
from bnn_jax.models import hub, llama

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "hf_llama"
REF = dict(np.load(FIXTURE / "reference.npz"))


@pytest.fixture(scope="module")
def hf_model():
    return hub.load(FIXTURE)


@nnx.jit
def _decode(model, ids, cache, index, positions, kv_mask):
    return model.decode(ids, cache, index=index, positions=positions, kv_mask=kv_mask)


def test_cached_decode_equals_the_uncached_forward():
    model = llama.Model(vocab_size=40, max_len=12, hidden=32, intermediate=48, num_layers=2,
                        num_heads=4, num_kv_heads=2, rngs=nnx.Rngs(1))
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 40, (2, 9)), jnp.int32)
    full = nnx.jit(lambda m, x: m(x))(model, ids)
    cache = model.init_cache(2, 12)
    kv = jnp.zeros((2, 12), bool).at[:, :4].set(True)
    pos = jnp.broadcast_to(jnp.arange(9), (2, 9))
    # A 4-token prefill, then one token at a time.
    out, cache = _decode(model, ids[:, :4], cache, jnp.int32(0), pos[:, :4], kv)
    steps = [out]
    for t in range(4, 9):
        kv = kv.at[:, t].set(True)
        out, cache = _decode(model, ids[:, t:t + 1], cache, jnp.int32(t), pos[:, t:t + 1], kv)
        steps.append(out)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5)


def test_greedy_matches_hugging_face_on_left_padded_prompts(hf_model):
    out = gen.generate(hf_model, REF["prompt_ids"], REF["prompt_mask"], max_new_tokens=6)
    np.testing.assert_array_equal(out["tokens"], REF["greedy"])


def _until_eos(row, eos):
    row = list(row)
    return row[:row.index(eos) + 1] if eos in row else row


@pytest.mark.parametrize("case", [0, pytest.param(1, marks=pytest.mark.slow),
                                  pytest.param(2, marks=pytest.mark.slow)])
def test_beam_search_matches_hugging_face(hf_model, case):
    k, eos, lp, early = REF["beam_settings"][case]
    out = gen.generate(hf_model, REF["prompt_ids"], REF["prompt_mask"], max_new_tokens=6,
                       strategy="beam", num_beams=int(k), eos_id=int(eos), length_penalty=lp,
                       early_stopping=bool(early))
    np.testing.assert_allclose(out["scores"], REF[f"beam{case}_scores"], atol=1e-5)
    for ours, theirs in zip(np.asarray(out["tokens"]), REF[f"beam{case}_tokens"]):
        # Hugging Face fills after EOS with its own filler; ours is pad_id (0).
        head = _until_eos(theirs, int(eos))
        assert ours[:len(head)].tolist() == head and not ours[len(head):].any()


def test_beam_one_equals_greedy(hf_model):
    greedy = gen.generate(hf_model, REF["prompt_ids"], REF["prompt_mask"], max_new_tokens=6,
                          eos_id=196)
    beam = gen.generate(hf_model, REF["prompt_ids"], REF["prompt_mask"], max_new_tokens=6,
                        strategy="beam", num_beams=1, eos_id=196)
    np.testing.assert_array_equal(beam["tokens"], greedy["tokens"])
    assert greedy["tokens"][0].tolist() == [196, 0, 0, 0, 0, 0]  # EOS ends the row, then pad


@pytest.mark.slow
def test_beam_scores_are_the_full_forward_log_probs(hf_model):
    out = gen.generate(hf_model, REF["prompt_ids"][1:], REF["prompt_mask"][1:],
                       max_new_tokens=5, strategy="beam", num_beams=3, eos_id=2,
                       length_penalty=1.0)
    prompt = REF["prompt_ids"][1][REF["prompt_mask"][1] > 0]
    seq = np.concatenate([prompt, np.asarray(out["tokens"][0])])
    logp = jax.nn.log_softmax(hf_model(jnp.asarray(seq)[None])[0])
    n = len(prompt)
    total = sum(float(logp[n - 1 + j, seq[n + j]]) for j in range(5))
    np.testing.assert_allclose(out["scores"][0], total / 5, atol=1e-5)


class TableLM(nnx.Module):
    """A fake decoder whose next-token log-probs depend on the last token only."""

    max_len = 16

    def __init__(self, table):
        self.table = nnx.Variable(jnp.log(jnp.asarray(table, jnp.float32) + 1e-30))

    def init_cache(self, batch_size, max_len):
        return {"unused": jnp.zeros((batch_size, 1))}

    def decode(self, ids, cache, *, index, positions, kv_mask):
        return self.table[...][ids], cache


# Tokens: 0 pad, 1 eos, 2 a, 3 b, 4 start. Rows: P(next | last).
TABLE = np.zeros((5, 5))
TABLE[4, [2, 3]] = 0.6, 0.4
TABLE[2, [2, 3, 1]] = 0.4, 0.35, 0.25
TABLE[3, [1, 2, 3]] = 0.9, 0.05, 0.05
TABLE[1, 1] = TABLE[0, 0] = 1.0


def test_hand_checked_beam_search():
    model, start = TableLM(TABLE), np.array([[4]])
    # Greedy: a, a, a (0.6 * 0.4 * 0.4).
    greedy = gen.generate(model, start, max_new_tokens=3, eos_id=1)
    assert greedy["tokens"].tolist() == [[2, 2, 2]]
    # Beam 2, no length penalty: step 2 closes "b eos" (0.36); step 3 closes "a b eos"
    # (0.6 * 0.35 * 0.9 = 0.189); two hypotheses end the row; "b eos" wins.
    out = gen.generate(model, start, max_new_tokens=3, strategy="beam", num_beams=2,
                       eos_id=1, length_penalty=0.0)
    assert out["tokens"].tolist() == [[3, 1, 0]]
    np.testing.assert_allclose(out["scores"], [np.log(0.36)], rtol=1e-6)
    # Length penalty 2: log(0.36)/2² = -0.255 < log(0.189)/3² = -0.185: the longer one wins.
    out = gen.generate(model, start, max_new_tokens=3, strategy="beam", num_beams=2,
                       eos_id=1, length_penalty=2.0)
    assert out["tokens"].tolist() == [[2, 3, 1]]
    np.testing.assert_allclose(out["scores"], [np.log(0.189) / 9], rtol=1e-6)
    # Only an EOS among the first num_beams candidates closes a hypothesis. From the start,
    # P(a) = .55 and P(eos) = .45, then P(a | a) = .6: one beam keeps "a" (rank 0) and drops
    # "eos" (rank 1), ending with "a a" (.33) although "eos" alone (.45) scores higher.
    rank = np.zeros((5, 5))
    rank[4, [2, 1]] = 0.55, 0.45
    rank[2, [2, 3]] = 0.6, 0.4
    rank[1, 1] = rank[3, 3] = rank[0, 0] = 1.0
    out = gen.generate(TableLM(rank), start, max_new_tokens=2, strategy="beam", num_beams=1,
                       eos_id=1, length_penalty=0.0)
    assert out["tokens"].tolist() == [[2, 2]]
    np.testing.assert_allclose(out["scores"], [np.log(0.33)], rtol=1e-6)
    # With two beams "eos" is rank 1 < 2: a hypothesis, and the best.
    out = gen.generate(TableLM(rank), start, max_new_tokens=2, strategy="beam", num_beams=2,
                       eos_id=1, length_penalty=0.0)
    assert out["tokens"].tolist() == [[1, 0]]


class TableSeq2Seq(TableLM):
    """A fake encoder-decoder: the source's first token shifts the decoder's table."""

    is_encoder_decoder = True

    def encode(self, input_ids, attention_mask):
        return input_ids[:, :1]

    def decode(self, ids, cache, *, index, positions, kv_mask, encoded, encoder_mask):
        shift = encoded[:, :1] * encoder_mask[:, :1]
        return self.table[...][(ids + shift) % 5], cache


def test_encoder_decoder_generation_uses_the_source():
    model = TableSeq2Seq(TABLE)
    src = np.array([[0, 9, 9], [3, 9, 0]])
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    out = gen.generate(model, src, mask, max_new_tokens=3, eos_id=1, decoder_start_id=4)
    # Row 0: no shift: a a a. Row 1 (shift 3): start 4 -> row 2: a; a -> row 0: pad;
    # pad -> row 3: eos.
    assert out["tokens"].tolist() == [[2, 2, 2], [2, 0, 1]]
    beam = gen.generate(model, src, mask, max_new_tokens=3, strategy="beam", num_beams=2,
                        eos_id=1, length_penalty=0.0, decoder_start_id=4)
    assert beam["tokens"][0].tolist() == [3, 1, 0]


def test_sampling_follows_top_k_and_top_p():
    probs = np.zeros((5, 5))
    probs[:, [2, 3, 4]] = 0.5, 0.3, 0.2
    model = TableLM(probs)
    start = np.full((4000, 1), 4)
    first = lambda **kw: np.asarray(gen.generate(model, start, max_new_tokens=1,  # noqa: E731
                                                 strategy="sample", rng=jax.random.key(0),
                                                 **kw)["tokens"][:, 0])
    freq = np.bincount(first(), minlength=5) / 4000
    np.testing.assert_allclose(freq[2:], [0.5, 0.3, 0.2], atol=0.03)
    freq = np.bincount(first(top_k=2), minlength=5) / 4000
    np.testing.assert_allclose(freq[2:], [0.625, 0.375, 0.0], atol=0.03)
    freq = np.bincount(first(top_p=0.75), minlength=5) / 4000  # nucleus {0.5, 0.3}
    np.testing.assert_allclose(freq[2:], [0.625, 0.375, 0.0], atol=0.03)
    freq = np.bincount(first(temperature=0.5), minlength=5) / 4000
    sharp = np.array([0.5, 0.3, 0.2]) ** 2
    np.testing.assert_allclose(freq[2:], sharp / sharp.sum(), atol=0.03)
    assert (first(top_k=1) == 2).all()


def test_bad_input_is_rejected_before_compiling(hf_model):
    with pytest.raises(ValueError, match="longer than the model's max_len=64"):
        gen.generate(hf_model, np.ones((1, 60), np.int32), max_new_tokens=5)
    with pytest.raises(ValueError, match="left-padded"):
        gen.generate(hf_model, np.ones((1, 3), np.int32), np.array([[1, 1, 0]]),
                     max_new_tokens=2)
    with pytest.raises(ValueError, match="unknown strategy 'topk'; valid: greedy, sample, beam"):
        gen.generate(hf_model, np.ones((1, 3), np.int32), max_new_tokens=2, strategy="topk")
    with pytest.raises(ValueError, match="needs rng"):
        gen.generate(hf_model, np.ones((1, 3), np.int32), max_new_tokens=2, strategy="sample")
    with pytest.raises(ValueError, match="beam search needs eos_id"):
        gen.generate(hf_model, np.ones((1, 3), np.int32), max_new_tokens=2, strategy="beam")
    with pytest.raises(ValueError, match="top_k=9 exceeds the vocabulary of 5"):
        gen.generate(TableLM(TABLE), [[4]], max_new_tokens=2, strategy="sample", top_k=9,
                     rng=jax.random.key(0))
    with pytest.raises(ValueError, match="at least 2 tokens, got 1"):
        gen.generate(TableLM(np.ones((1, 1))), [[0]], max_new_tokens=2, strategy="beam",
                     num_beams=3, eos_id=0)


class NoCacheLM(nnx.Module):
    """Only the ordinary call of a decoder LM: generate must fall back to full forwards."""

    def __init__(self, lm):
        self.lm, self.max_len = lm, lm.max_len

    def __call__(self, input_ids, positions=None, segment_ids=None):
        return self.lm(input_ids, positions=positions, segment_ids=segment_ids)


def test_models_without_a_cache_decode_by_full_forward(hf_model):
    out = gen.generate(NoCacheLM(hf_model), REF["prompt_ids"], REF["prompt_mask"],
                       max_new_tokens=6)
    np.testing.assert_array_equal(out["tokens"], REF["greedy"])


class CopySeq2Seq(nnx.Module):
    """Encoder-decoder by its ordinary call only: decoder position t predicts source token t."""

    max_len = 32

    def __init__(self, vocab, shift=0):
        self.vocab, self.shift = vocab, shift

    def __call__(self, input_ids, decoder_input_ids, attention_mask=None):
        t = decoder_input_ids.shape[1]
        src = jnp.pad(input_ids, ((0, 0), (0, max(0, t - input_ids.shape[1]))))[:, :t]
        return 10.0 * jax.nn.one_hot((src + self.shift) % self.vocab, self.vocab)


def test_evaluate_seq2seq_scores_decoded_text():
    from bnn_jax.data import text, text_sources

    tok = text.ByteTokenizer()
    pairs = [("the cat sat", "the cat sat"), ("a dog ran far", "a dog ran far"),
             ("ok", "ok")]
    arrays = text_sources.seq2seq_arrays(pairs, tok, max_source_len=16, max_target_len=16,
                                         decoder_start_id=tok.eos_id)
    ds = text.TextDataset("xsum", arrays, arrays, {"vocab_size": 259, "max_len": 16}, tok,
                          global_batch_size=2, eval_batch_size=2,
                          eval_texts={"references": [p[1] for p in pairs]},
                          decoder_start_id=tok.eos_id)
    scores = gen.evaluate_seq2seq(CopySeq2Seq(259), ds)
    # Exact copies; "ok" has no bigram, so its ROUGE-2 is 0: (100 + 100 + 0) / 3.
    assert scores == pytest.approx({"rouge1": 100.0, "rouge2": 200 / 3, "rougeL": 100.0})
    assert gen.evaluate_seq2seq(CopySeq2Seq(259), ds, metric="bleu",
                                strategy="beam", num_beams=2) == pytest.approx({"bleu": 100.0})
    worse = gen.evaluate_seq2seq(CopySeq2Seq(259, shift=1), ds)
    assert worse["rouge1"] < 50


def test_min_new_tokens_keeps_eos_out_of_the_first_tokens():
    model, start = TableLM(TABLE), np.array([[4]])
    # Beam 2, no length penalty, EOS barred from tokens 0 and 1: step 1 keeps "a a" (.24) and
    # "a b" (.21); step 2 closes "a b eos" (.21 * .9 = .189), better than the open "a a a"
    # (.096). Without the bar "b eos" (.36) wins (test_hand_checked_beam_search).
    out = gen.generate(model, start, max_new_tokens=3, strategy="beam", num_beams=2,
                       eos_id=1, length_penalty=0.0, min_new_tokens=2)
    assert out["tokens"].tolist() == [[2, 3, 1]]
    np.testing.assert_allclose(out["scores"], [np.log(0.189)], rtol=1e-6)
    eos_first = np.zeros((5, 5))
    eos_first[4, [1, 2]] = 0.7, 0.3
    eos_first[2, 2] = eos_first[1, 1] = eos_first[0, 0] = 1.0
    assert gen.generate(TableLM(eos_first), start, max_new_tokens=2,
                        eos_id=1)["tokens"].tolist() == [[1, 0]]
    assert gen.generate(TableLM(eos_first), start, max_new_tokens=2, eos_id=1,
                        min_new_tokens=1)["tokens"].tolist() == [[2, 2]]
    with pytest.raises(ValueError, match="min_new_tokens must be an integer in 0..max_new"):
        gen.generate(model, start, max_new_tokens=2, eos_id=1, min_new_tokens=3)

"""Text data: tokenizers from local files, the pydoc corpus, packing, resumable sharded batches."""

import json

import numpy as np
import pytest

from bnn_jax import data
from bnn_jax.data import text

WORDS = ("the cat sat on the mat . a dog ran in the park . the dog sat . "
         "binary networks use one bit per weight . ") * 8


def _wordlevel_dir(path):
    """A tiny tokenizer.json (word level) and its tokenizer_config.json, as HF saves them."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([WORDS], trainers.WordLevelTrainer(
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "pad_token": "<pad>"}))
    return tok


def _spm_model(path, name):
    import sentencepiece as spm

    corpus = path / "corpus.txt"
    corpus.write_text(WORDS.replace(" . ", " .\n"))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(path / "m"),
                                   vocab_size=30, model_type="unigram", minloglevel=2)
    (path / "m.model").rename(path / name)
    return spm.SentencePieceProcessor(model_file=str(path / name))


def test_byte_tokenizer_ids_are_utf8_bytes_shifted_past_the_specials():
    tok = text.ByteTokenizer()
    assert tok.encode("Az") == [65 + 3, 122 + 3]
    assert tok.encode("é") == [0xC3 + 3, 0xA9 + 3]
    assert tok.vocab_size == 259 and (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.decode([1, 68, 69, 2, 0]) == "AB"
    assert tok.decode(tok.encode("naïve — ok")) == "naïve — ok"


def test_tokenizer_json_directory_loads_with_its_special_ids(tmp_path):
    ref = _wordlevel_dir(tmp_path)
    tok = text.load_tokenizer(tmp_path)
    assert isinstance(tok, text.HFTokenizer)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == ref.get_vocab_size()
    ids = tok.encode("the dog sat")
    assert ids == [ref.token_to_id(w) for w in ("the", "dog", "sat")]
    assert tok.decode([1, *ids, 2]) == "the dog sat"
    assert tok.encode_batch(["the cat", "a dog"]) == [tok.encode("the cat"), tok.encode("a dog")]


def test_sentencepiece_llama_ids_are_spm_ids(tmp_path):
    sp = _spm_model(tmp_path, "tokenizer.model")
    tok = text.load_tokenizer(tmp_path)
    assert isinstance(tok, text.SentencePieceTokenizer)
    assert tok.encode("the dog sat") == sp.encode("the dog sat")
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, 30)
    assert tok.decode(tok.encode("the dog sat")) == "the dog sat"


def test_sentencepiece_fairseq_offset_for_mbart_files(tmp_path):
    sp = _spm_model(tmp_path, "sentencepiece.bpe.model")
    tok = text.load_tokenizer(tmp_path)
    raw = sp.encode("the dog sat")
    # fairseq dictionary: <s> 0, <pad> 1, </s> 2, <unk> 3, then SentencePiece pieces + 1.
    assert tok.encode("the dog sat") == [i + 1 for i in raw]
    assert tok.encode("the qqq") == [i + 1 if i else 3 for i in sp.encode("the qqq")]
    assert (tok.bos_id, tok.pad_id, tok.eos_id) == (0, 1, 2)
    assert tok.decode([0, *tok.encode("the dog sat"), 2, 1]) == "the dog sat"


def test_tokenizer_directory_without_files_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="place the model's tokenizer.json"):
        text.load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        text.load_tokenizer(tmp_path / "missing")


def test_pack_stream_by_hand():
    out = text.pack_stream([[5, 6, 7], [8, 9]], 3, eos_id=2, drop_remainder=False)
    # stream 5 6 7 2 8 9 2: windows [5 6 7 | 2] and [2 8 9 | 2]
    assert out["input_ids"].tolist() == [[5, 6, 7], [2, 8, 9]]
    assert out["target_ids"].tolist() == [[6, 7, 2], [8, 9, 2]]
    assert out["loss_mask"].tolist() == [[1, 1, 1], [1, 1, 1]]
    out = text.pack_stream([[5, 6, 7], [8]], 3, eos_id=2, pad_id=0, drop_remainder=False)
    # stream 5 6 7 2 8 2 (5 predictions): the second window has 2 real targets, then padding
    # (its last input is the stream's last token, which predicts nothing).
    assert out["input_ids"].tolist() == [[5, 6, 7], [2, 8, 2]]
    assert out["target_ids"].tolist() == [[6, 7, 2], [8, 2, 0]]
    assert out["loss_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert text.pack_stream([[5, 6, 7], [8]], 3, eos_id=2)["input_ids"].shape == (1, 3)


def test_pack_documents_by_hand():
    out = text.pack_documents([[5, 6], [7], [8, 9, 10, 11, 12]], 4, eos_id=2, bos_id=1)
    # (input | target) pairs: [1 5 6 | 5 6 2], [1 7 | 7 2], [1 8 9 10 11 12 | 8 9 10 11 12 2]
    # (6 pairs, cut into 4 + 2). Next fit: 3, then 2 (3+2 > 4: new row), 4 (new row), 2 (new).
    assert out["input_ids"].tolist() == [[1, 5, 6, 0], [1, 7, 0, 0], [1, 8, 9, 10],
                                         [11, 12, 0, 0]]
    assert out["target_ids"].tolist() == [[5, 6, 2, 0], [7, 2, 0, 0], [8, 9, 10, 11],
                                          [12, 2, 0, 0]]
    assert out["segment_ids"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1],
                                           [1, 1, 0, 0]]
    assert out["positions"].tolist() == [[0, 1, 2, 0], [0, 1, 0, 0], [0, 1, 2, 3],
                                         [0, 1, 0, 0]]
    # Without BOS: pairs [5 | 2], [6 | 2], [7 8 | 8 2] fit one row of 5.
    out = text.pack_documents([[5], [6], [7, 8]], 5, eos_id=2)
    assert out["input_ids"].tolist() == [[5, 6, 7, 8, 0]]
    assert out["target_ids"].tolist() == [[2, 2, 8, 2, 0]]
    assert out["segment_ids"].tolist() == [[1, 2, 3, 3, 0]]
    assert out["positions"].tolist() == [[0, 0, 0, 1, 0]]
    assert out["loss_mask"].tolist() == [[1, 1, 1, 1, 0]]


def test_pydoc_corpus_is_real_english_split_disjointly_and_deterministically():
    from pydoc_data.topics import topics

    train, val = text.pydoc_corpus()
    assert len(train) + len(val) == len(topics) and len(val) == round(0.1 * len(topics))
    assert not set(train) & set(val)
    assert (train, val) == text.pydoc_corpus()
    assert sum(len(d) for d in train) > 300_000 and " the " in val[0]


def _pydoc(**kw):
    kw = {"seq_len": 64, "global_batch_size": 8, "eval_batch_size": 16, **kw}
    return text.pydoc(**kw)


def test_pydoc_dataset_spec_batches_and_bytes():
    ds = _pydoc()
    assert ds.spec == {"vocab_size": 259, "max_len": 64}
    b = ds.train_batch(0)
    assert {k: v.shape for k, v in b.items()} == {k: (8, 64) for k in
                                                  ("input_ids", "target_ids", "loss_mask")}
    np.testing.assert_array_equal(b["input_ids"][:, 1:], b["target_ids"][:, :-1])
    _, val = text.pydoc_corpus()
    assert ds.eval_num_bytes == sum(len(d.encode()) for d in val)
    batches = list(ds.eval_batches())
    # Every eval byte and separator is predicted once: bytes + one EOS per document - 1.
    predicted = sum((bt["loss_mask"] * bt["mask"][:, None]).sum() for bt in batches)
    assert predicted == ds.eval_num_bytes + len(val) - 1
    assert batches[-1]["mask"].sum() < 16 and (batches[-1]["loss_mask"][batches[-1]["mask"] == 0]
                                              == 0).all()


def test_pydoc_resumes_by_step_and_shards_by_process():
    it = _pydoc().train_batches(0)
    first = [next(it) for _ in range(4)]
    np.testing.assert_array_equal(next(_pydoc().train_batches(3))["input_ids"],
                                  first[3]["input_ids"])
    shares = [_pydoc(process_index=p, process_count=4).train_batch(3) for p in range(4)]
    np.testing.assert_array_equal(np.concatenate([s["input_ids"] for s in shares]),
                                  first[3]["input_ids"])
    evals = [list(_pydoc(process_index=p, process_count=2).eval_batches()) for p in range(2)]
    assert len(evals[0]) == len(evals[1])
    whole = list(_pydoc().eval_batches())
    np.testing.assert_array_equal(
        np.concatenate([evals[0][0]["input_ids"], evals[1][0]["input_ids"]]),
        whole[0]["input_ids"])


def test_pydoc_documents_packing_has_segments(tmp_path):
    ds = _pydoc(packing="documents")
    b = ds.train_batch(0)
    assert set(b) == {"input_ids", "target_ids", "loss_mask", "positions", "segment_ids"}
    # positions restart at 0 where a new segment begins
    starts = np.diff(b["segment_ids"], axis=1, prepend=0) != 0
    assert (b["positions"][starts & (b["segment_ids"] > 0)] == 0).all()


def test_data_build_and_validation_of_text_fields(tmp_path):
    ds = data.build(dict(name="pydoc", batch_size=4, eval_batch_size=4, seq_len=32))
    assert ds.spec["max_len"] == 32
    with pytest.raises(ValueError, match="seq_len must be a positive integer"):
        data.validate(dict(name="pydoc", batch_size=4, eval_batch_size=4, seq_len=0))
    with pytest.raises(ValueError, match="packing must be one of"):
        data.validate(dict(name="pydoc", batch_size=4, eval_batch_size=4, packing="zip"))
    with pytest.raises(ValueError, match="valid fields"):
        data.validate(dict(name="pydoc", batch_size=4, eval_batch_size=4, vocab=3))
    with pytest.raises(ValueError, match="place the model's tokenizer.json"):
        data.build(dict(name="pydoc", batch_size=4, eval_batch_size=4, tokenizer=str(tmp_path)))


def test_pydoc_with_a_hugging_face_tokenizer_directory():
    import pathlib

    fixture = pathlib.Path(__file__).parents[1] / "fixtures" / "hf_llama"
    ds = _pydoc(tokenizer=str(fixture), seq_len=32)
    assert ds.spec == {"vocab_size": 384, "max_len": 32}
    tok = text.load_tokenizer(fixture)
    _, val = text.pydoc_corpus()
    first = next(ds.eval_batches())["input_ids"][0]
    assert first.tolist() == tok.encode(val[0])[:32]


def test_encode_pair_uses_the_tokenizers_own_template(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4, "b": 5, "c": 6}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(tmp_path / "tokenizer.json"))
    bert = text.load_tokenizer(tmp_path)
    assert (bert.pad_id, bert.bos_id, bert.eos_id) == (0, 2, 3)
    assert text.encode_pair(bert, "a b", "c", 16) == ([2, 4, 5, 3, 6, 3], [0, 0, 0, 0, 1, 1])
    assert text.encode_pair(bert, "a b", None, 16) == ([2, 4, 5, 3], [0, 0, 0, 0])
    # Longest first: 7 - 3 specials = 4 tokens kept of (4, 2): "a b c a" -> "a b", "c c".
    assert text.encode_pair(bert, "a b c a", "c c", 7) == ([2, 4, 5, 3, 6, 6, 3],
                                                             [0, 0, 0, 0, 1, 1, 1])
    # Without a template: [bos] a [eos] b [eos] (byte tokenizer).
    assert text.encode_pair(text.ByteTokenizer(), "A", "BC", 5) == ([1, 68, 2, 69, 2],
                                                                    [0, 0, 0, 1, 1])

"""Text loaders: tfds paths on tfds mock data, Hugging Face files made here, offline errors."""

import gzip
import json

import numpy as np
import pytest

from bnn_jax import data
from bnn_jax.data import text, text_sources

tfds = pytest.importorskip("tensorflow_datasets")
BYTE = text.ByteTokenizer()


def _mock(n=12):
    return tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_CODE)


def _cfg(name, **kw):
    return {"name": name, "batch_size": 4, "eval_batch_size": 4, **kw}


def test_xsum_rows_follow_bart_layout_and_keep_the_references():
    with _mock():
        ds = data.build(_cfg("xsum", max_source_len=48, max_target_len=40))
        raw = next(iter(tfds.as_numpy(tfds.builder("xsum").as_dataset(split="validation"))))
    assert ds.spec == {"vocab_size": 259, "max_len": 48}
    b = ds.train_batch(0)
    assert b["input_ids"].shape == (4, 48) and b["target_ids"].shape == (4, 40)
    # decoder input = target shifted right behind the start id (EOS, as BART).
    np.testing.assert_array_equal(b["decoder_input_ids"][:, 0], BYTE.eos_id)
    np.testing.assert_array_equal(b["decoder_input_ids"][:, 1:][b["loss_mask"][:, 1:] > 0],
                                  b["target_ids"][:, :-1][b["loss_mask"][:, 1:] > 0])
    assert (b["input_ids"][:, 0] == BYTE.bos_id).all()
    # Eval rows line up with the reference texts; short ones fit untruncated.
    ref = raw["summary"].decode()
    assert ds.eval_texts["references"][0] == ref
    first = next(ds.eval_batches())
    row = first["target_ids"][0][first["loss_mask"][0] > 0]
    assert row[0] == BYTE.bos_id and row[-1] == BYTE.eos_id
    assert BYTE.decode(row) == ref[:40 - 2]
    assert first["attention_mask"][0].sum() == min(48, len(raw["document"]) + 2)


def test_wmt16_direction_picks_source_and_target():
    with _mock():
        en_ro = data.build(_cfg("wmt16_ro_en", max_source_len=64, max_target_len=64))
        ro_en = data.build(_cfg("wmt16_ro_en", max_source_len=64, max_target_len=64,
                                direction="ro-en"))
    assert en_ro.eval_texts["sources"] == ro_en.eval_texts["references"]
    np.testing.assert_array_equal(en_ro.eval["input_ids"][:, 1:8],
                                  ro_en.eval["target_ids"][:, 1:8])


def test_glue_pairs_types_and_labels():
    with _mock():
        mrpc = data.build(_cfg("glue", task="mrpc", max_len=32))
        stsb = data.build(_cfg("glue", task="stsb", max_len=32))
        raw = next(iter(tfds.as_numpy(tfds.builder("glue/mrpc").as_dataset(split="validation"))))
    assert mrpc.spec["num_labels"] == 2 and stsb.spec["num_labels"] == 1
    assert mrpc.eval["label"].dtype == np.int32 and stsb.eval["label"].dtype == np.float32
    a, b = raw["sentence1"].decode(), raw["sentence2"].decode()
    ids, types = mrpc.eval["input_ids"][0], mrpc.eval["token_type_ids"][0]
    n = int(mrpc.eval["attention_mask"][0].sum())
    # [bos] a [eos] b [eos], truncated longest first to 32 tokens.
    la, lb = text._longest_first(len(a.encode()), len(b.encode()), 32 - 3)
    expect = [1, *BYTE.encode(a)[:la], 2, *BYTE.encode(b)[:lb], 2]
    assert ids[:n].tolist() == expect and n == len(expect)
    assert types[:n].tolist() == [0] * (la + 2) + [1] * (lb + 1)
    assert mrpc.eval["label"][0] == raw["label"]


def test_c4_streams_resumably_and_shards_by_process():
    with _mock(40):
        ds = data.build(_cfg("c4", seq_len=16, shuffle_buffer=8))
        it = ds.train_batches(0)
        first = [next(it) for _ in range(5)]
        resumed = next(data.build(_cfg("c4", seq_len=16, shuffle_buffer=8)).train_batches(4))
        shares = [next(data.build(_cfg("c4", seq_len=16, shuffle_buffer=8), process_index=p,
                                  process_count=2).train_batches(0)) for p in range(2)]
        evals = list(ds.eval_batches())
        texts = [t.decode() for t in tfds.as_numpy(
            tfds.builder("c4/en").as_dataset(split="validation").map(lambda r: r["text"]))]
    assert ds.spec == {"vocab_size": 259, "max_len": 16}
    np.testing.assert_array_equal(resumed["input_ids"], first[4]["input_ids"])
    np.testing.assert_array_equal(first[0]["input_ids"][:, 1:], first[0]["target_ids"][:, :-1])
    assert shares[0]["input_ids"].shape == (2, 16)
    assert not np.array_equal(shares[0]["input_ids"], shares[1]["input_ids"])
    assert ds.eval_num_bytes == sum(len(t.encode()) for t in texts)
    predicted = sum(b["loss_mask"].sum() for b in evals)
    assert predicted == ds.eval_num_bytes + len(texts) - 1  # bytes and EOS separators


def _parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_hf_parquet_wikitext_lines_join_into_one_text(tmp_path):
    root = tmp_path / "wikitext"
    lines = [" = Valkyria = \n", "", " The game began in 2010 . \n"]
    _parquet(root / "wikitext-103-raw-v1" / "validation-00000-of-00001.parquet",
             [{"text": t} for t in lines])
    _parquet(root / "wikitext-103-raw-v1" / "train-00000-of-00001.parquet",
             [{"text": t} for t in lines * 20])
    _parquet(root / "wikitext-2-raw-v1" / "train-00000-of-00001.parquet", [{"text": "x"}])
    ds = data.build(_cfg("wikitext103", source="hf", data_dir=str(root), seq_len=8))
    joined = "".join(lines)
    assert ds.eval_num_bytes == len(joined.encode())
    ev = next(ds.eval_batches())
    assert ev["input_ids"][0].tolist() == BYTE.encode(joined)[:8]
    b = next(ds.train_batches(0))
    assert b["input_ids"].shape == (4, 8) and BYTE.eos_id not in b["input_ids"]
    # Two processes read alternate records: half batches, and the two halves differ.
    halves = [next(data.build(_cfg("wikitext103", source="hf", data_dir=str(root), seq_len=8),
                              process_index=p, process_count=2).train_batches(0))["input_ids"]
              for p in range(2)]
    assert halves[0].shape == (2, 8) and not np.array_equal(halves[0], halves[1])


def test_hf_glue_mnli_uses_its_folder_and_matched_split(tmp_path):
    root = tmp_path / "glue"
    row = {"premise": "a b", "hypothesis": "c", "label": 2, "idx": 0}
    _parquet(root / "mnli" / "train-00000-of-00001.parquet", [row] * 6)
    _parquet(root / "mnli" / "validation_matched-00000-of-00001.parquet", [row] * 3)
    _parquet(root / "mnli" / "validation_mismatched-00000-of-00001.parquet", [row] * 5)
    _parquet(root / "qnli" / "train-00000-of-00001.parquet", [{"question": "q"}] * 9)
    ds = data.build(_cfg("glue", task="mnli", source="hf", data_dir=str(root), max_len=16))
    assert (ds.num_train, ds.num_test) == (6, 3) and ds.spec["num_labels"] == 3
    ds = data.build(_cfg("glue", task="mnli", source="hf", data_dir=str(root), max_len=16,
                         eval_split="validation_mismatched"))
    assert ds.num_test == 5


def test_hf_jsonl_gz_translation_rows(tmp_path):
    folder = tmp_path / "wmt" / "ro-en"
    folder.mkdir(parents=True)
    rows = [{"translation": {"en": f"house {i}", "ro": f"casa {i}"}} for i in range(8)]
    for split in ("train", "validation"):
        with gzip.open(folder / f"{split}.jsonl.gz", "wt") as f:
            f.write("\n".join(json.dumps(r) for r in rows))
    ds = data.build(_cfg("wmt16_ro_en", source="hf", data_dir=str(tmp_path / "wmt"),
                         max_source_len=16, max_target_len=16))
    assert ds.eval_texts["sources"][3] == "house 3" and ds.eval_texts["references"][3] == "casa 3"


def test_offline_datasets_fail_fast_with_the_command_to_prepare_them(tmp_path):
    with pytest.raises(ValueError, match="tfds build xsum --data_dir=DIR"):
        data.build(_cfg("xsum", data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="huggingface-cli download --repo-type dataset "
                                         "Salesforce/wikitext"):
        data.build(_cfg("wikitext103", source="hf", data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="not in tfds; use source='hf'"):
        data.build(_cfg("wikitext103"))
    with pytest.raises(ValueError, match="needs config.data.task"):
        data.validate(_cfg("glue"))
    with pytest.raises(ValueError, match="task must be one of"):
        data.validate(_cfg("glue", task="sst"))
    with pytest.raises(ValueError, match="source must be one of"):
        data.validate(_cfg("c4", source="web"))
    with pytest.raises(ValueError, match="valid fields"):
        data.validate(_cfg("xsum", seq_len=8))


def test_hf_split_names_are_whole_words(tmp_path):
    for name in ("train-0.parquet", "validation_matched-0.parquet", "c4-validation.0.json.gz",
                 "pretrain.parquet", "validation.jsonl"):
        (tmp_path / name).write_text("")
    names = [p.name for p in text_sources.hf_files(tmp_path, "validation")]
    assert names == ["c4-validation.0.json.gz", "validation.jsonl"]
    assert [p.name for p in text_sources.hf_files(tmp_path, "train")] == ["train-0.parquet"]


@pytest.mark.slow
def test_every_tfds_text_dataset_builds_from_its_fields():
    with _mock(4):
        for task, corpus in text_sources.GLUE.items():
            ds = data.build(_cfg("glue", task=task, max_len=24, batch_size=2,
                                 eval_batch_size=2))
            assert ds.spec["num_labels"] == corpus.num_labels, task
            assert ds.eval["input_ids"].shape == (4, 24) and (ds.eval["input_ids"][:, 0] == 1).all()
            two = len(corpus.fields) == 2
            assert (ds.eval["token_type_ids"].max() == 1) == two, task
        ds = data.build(_cfg("cnn_dailymail", max_source_len=32, max_target_len=16,
                             batch_size=2, eval_batch_size=2))
        assert ds.eval["target_ids"].shape == (4, 16) and len(ds.eval_texts["references"]) == 4

"""Text datasets from TensorFlow Datasets or Hugging Face files: LM, summarization, translation,
GLUE.

Two local sources, never downloaded (a missing dataset fails at once with the command that
prepares it):

* ``source="tfds"``: a tfds build under ``data_dir`` (``tfds build xsum --data_dir=DIR``).
* ``source="hf"``: a directory with the dataset's files as the Hugging Face Hub stores them
  (``*.parquet``, ``*.jsonl``, ``*.json.gz``), found by split name in the file name
  (``train-00000-of-00002.parquet``, ``c4-validation.00000-of-00008.json.gz``), e.g. fetched on a
  machine with internet by ``huggingface-cli download --repo-type dataset REPO --local-dir DIR``.

Language modelling (``wikitext103``, ``c4``) streams: each process reads every
``process_count``-th record, tokenizes, packs an EOS-joined stream into windows and shuffles
them in a seeded buffer; the position is the step (resuming replays the stream from the start
and skips the windows already used: exact, and costs tokenizing the skipped text). The eval
split (at most ``max_eval_docs`` documents) is packed in memory. Summarization (``xsum``,
``cnn_dailymail``), translation (``wmt16_ro_en``) and ``glue`` are tokenized into memory and
batched by :class:`bnn_jax.data.text.TextDataset`. Sequence-to-sequence rows follow BART: source
``[bos] x [eos]``, target ``[bos] y [eos]``, decoder input = target shifted right behind
``decoder_start_id`` (default: EOS, BART's ``decoder_start_token_id``).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import pathlib
import re
from typing import Any, Iterator

import numpy as np

from bnn_jax.data import text
from bnn_jax.data.arrays import check_batch_sizes


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Where a dataset lives and which fields hold its text."""

    kind: str                        # "lm", "seq2seq" or "classification"
    tfds: str | None                 # tfds name (None: Hugging Face files only)
    hub: str                         # Hugging Face Hub repository (for the prepare command)
    fields: tuple[str, ...]          # text fields (LM: 1; seq2seq: source, target; GLUE: 1-2)
    eval_split: str = "validation"
    num_labels: int = 0
    subdir: str | None = None        # the Hub repository's folder of this configuration
    eos_between: bool = True         # LM: records are documents (False: lines of one text)


LM = {
    # wikitext records are lines (with their newlines) of one text: joined without EOS.
    "wikitext103": Corpus("lm", None, "Salesforce/wikitext (files wikitext-103-raw-v1/*)",
                          ("text",), subdir="wikitext-103-raw-v1", eos_between=False),
    "c4": Corpus("lm", "c4/en", "allenai/c4 (files en/*)", ("text",), subdir="en"),
}
SEQ2SEQ = {
    "xsum": Corpus("seq2seq", "xsum", "EdinburghNLP/xsum", ("document", "summary")),
    "cnn_dailymail": Corpus("seq2seq", "cnn_dailymail", "abisee/cnn_dailymail (files 3.0.0/*)",
                            ("article", "highlights"), subdir="3.0.0"),
    "wmt16_ro_en": Corpus("seq2seq", "wmt16_translate/ro-en", "wmt/wmt16 (files ro-en/*)",
                          ("en", "ro"), subdir="ro-en"),
}
_GLUE = {
    "cola": Corpus("classification", "glue/cola", "nyu-mll/glue", ("sentence",), num_labels=2),
    "sst2": Corpus("classification", "glue/sst2", "nyu-mll/glue", ("sentence",), num_labels=2),
    "mrpc": Corpus("classification", "glue/mrpc", "nyu-mll/glue", ("sentence1", "sentence2"),
                   num_labels=2),
    "qqp": Corpus("classification", "glue/qqp", "nyu-mll/glue", ("question1", "question2"),
                  num_labels=2),
    "stsb": Corpus("classification", "glue/stsb", "nyu-mll/glue", ("sentence1", "sentence2"),
                   num_labels=1),
    "mnli": Corpus("classification", "glue/mnli", "nyu-mll/glue", ("premise", "hypothesis"),
                   eval_split="validation_matched", num_labels=3),
    "qnli": Corpus("classification", "glue/qnli", "nyu-mll/glue", ("question", "sentence"),
                   num_labels=2),
    "rte": Corpus("classification", "glue/rte", "nyu-mll/glue", ("sentence1", "sentence2"),
                  num_labels=2),
    "wnli": Corpus("classification", "glue/wnli", "nyu-mll/glue", ("sentence1", "sentence2"),
                   num_labels=2),
}
# The Hub stores each GLUE task in its own folder.
GLUE = {t: dataclasses.replace(c, subdir=t) for t, c in _GLUE.items()}
SOURCES = ("tfds", "hf")
HF_EXTENSIONS = (".parquet", ".jsonl", ".jsonl.gz", ".json", ".json.gz")

# config.data fields of each dataset kind (besides name, batch_size, eval_batch_size).
FIELDS = {
    "lm": ("source", "data_dir", "tokenizer", "seq_len", "shuffle_buffer", "max_eval_docs"),
    "seq2seq": ("source", "data_dir", "tokenizer", "max_source_len", "max_target_len",
                "decoder_start_id", "max_train_examples", "max_eval_examples"),
    "classification": ("task", "source", "data_dir", "tokenizer", "max_len", "eval_split",
                       "max_train_examples"),
}


def fields(name: str) -> tuple[str, ...]:
    """Config fields of text dataset ``name`` (wmt16_ro_en also takes ``direction``)."""
    kind = "classification" if name == "glue" else {**LM, **SEQ2SEQ}[name].kind
    return FIELDS[kind] + (("direction",) if name == "wmt16_ro_en" else ())


NAMES = (*LM, *SEQ2SEQ, "glue")


# ---------------------------------------------------------------------------------------------
# Reading records
# ---------------------------------------------------------------------------------------------


def _prepare_hint(corpus: Corpus, source: str) -> str:
    if source == "tfds":
        return (f"prepare it once with `tfds build {corpus.tfds} --data_dir=DIR` on a machine "
                "that can download it (see the tfds catalog for manual steps) and pass "
                "--config.data.data_dir=DIR")
    return (f"place the Hugging Face files there, e.g. `huggingface-cli download --repo-type "
            f"dataset {corpus.hub.split(' ')[0]} --local-dir DIR` on a machine with internet "
            f"({corpus.hub}), and pass --config.data.data_dir=DIR")


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _tfds_records(corpus: Corpus, split: str, data_dir, process_index: int,
                  process_count: int) -> Iterator[dict]:
    from bnn_jax.data.tfds_pipeline import _import, _mocked

    tf, tfds = _import()
    builder = tfds.builder(corpus.tfds, data_dir=data_dir)
    if not tf.io.gfile.exists(builder.data_dir) and not _mocked(tfds):
        raise ValueError(f"dataset {corpus.tfds!r} is not prepared under data_dir="
                         f"{builder.data_dir!r}: {_prepare_hint(corpus, 'tfds')}")
    sub = tfds.split_for_jax_process(split, process_index=process_index,
                                     process_count=process_count)
    read = tfds.ReadConfig(interleave_cycle_length=1)  # a fixed record order
    ds = builder.as_dataset(split=sub, shuffle_files=False, read_config=read)
    return ({k: _decode(v) for k, v in example.items()} for example in tfds.as_numpy(ds))


def hf_files(data_dir, split: str) -> list[pathlib.Path]:
    """Files under ``data_dir`` whose name holds ``split`` as a word (``train-0000.parquet``,
    ``c4-validation.0.json.gz``; not ``validation_matched`` for ``validation``), sorted."""
    word = re.compile(rf"(^|[-_./]){re.escape(split)}([-.]|$)")
    root = pathlib.Path(data_dir).expanduser()
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and p.name.endswith(HF_EXTENSIONS) and word.search(p.name))


def _hf_rows(path: pathlib.Path) -> Iterator[dict]:
    if path.name.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ValueError(f"reading {path.name} needs pyarrow: pip install pyarrow (the "
                             "bnn_jax[tf] extra brings it)") from e

        for batch in pq.ParquetFile(path).iter_batches():
            yield from batch.to_pylist()
        return
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        if path.name.endswith((".json", ".json.gz")) and f.read(1) == "[":
            f.seek(0)
            yield from json.load(f)
            return
        f.seek(0)
        for line in f:
            if line.strip():
                yield json.loads(line)


def _hf_records(corpus: Corpus, split: str, data_dir, process_index: int,
                process_count: int) -> Iterator[dict]:
    if data_dir is None or not pathlib.Path(data_dir).expanduser().is_dir():
        raise ValueError(f"Hugging Face files of {corpus.hub} need data.data_dir (got "
                         f"{data_dir!r}, not a directory): {_prepare_hint(corpus, 'hf')}")
    root = pathlib.Path(data_dir).expanduser()
    if corpus.subdir and (root / corpus.subdir).is_dir():
        root = root / corpus.subdir
    files = hf_files(root, split)
    if not files:
        raise ValueError(f"no {split!r} files ({', '.join(HF_EXTENSIONS)}) under {str(root)!r}: "
                         f"{_prepare_hint(corpus, 'hf')}")
    rows = (row for path in files for row in _hf_rows(path))
    # wmt16 nests the pair under "translation"
    return (row.get("translation", row) for i, row in enumerate(rows)
            if i % process_count == process_index)


def records(corpus: Corpus, split: str, *, source: str, data_dir=None, process_index: int = 0,
            process_count: int = 1) -> Iterator[dict]:
    """The split's examples as dicts of Python values; process ``p`` of ``n`` reads its share."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; valid: {', '.join(SOURCES)}")
    if source == "tfds":
        if corpus.tfds is None:
            raise ValueError(f"{corpus.hub} is not in tfds; use source='hf' with its files")
        return _tfds_records(corpus, split, data_dir, process_index, process_count)
    return _hf_records(corpus, split, data_dir, process_index, process_count)


def _texts(corpus, split, source, data_dir, limit=None, **shard) -> list[tuple]:
    out = []
    for r in records(corpus, split, source=source, data_dir=data_dir, **shard):
        missing = [f for f in corpus.fields if f not in r]
        if missing:
            raise ValueError(f"{split} records of {corpus.hub} lack fields {missing} "
                             f"(they have {sorted(r)})")
        out.append(r)
        if limit is not None and len(out) >= limit:
            break
    return out


# ---------------------------------------------------------------------------------------------
# Language modelling (streamed)
# ---------------------------------------------------------------------------------------------


class StreamingLMDataset:
    """A causal-LM stream of ``seq_len`` windows from a large corpus, resumable by step."""

    def __init__(self, name: str, corpus: Corpus, *, global_batch_size: int,
                 eval_batch_size: int, seed: int = 0, process_index: int = 0,
                 process_count: int = 1, source: str = "tfds", data_dir=None,
                 tokenizer: str | None = None, seq_len: int = 512,
                 shuffle_buffer: int = 1024, max_eval_docs: int | None = None):
        check_batch_sizes(name, global_batch_size, eval_batch_size, process_count)
        self.name, self.corpus, self.source, self.data_dir = name, corpus, source, data_dir
        self.global_batch_size, self.eval_batch_size = global_batch_size, eval_batch_size
        self.seed, self.process_index, self.process_count = seed, process_index, process_count
        self.seq_len, self.shuffle_buffer = seq_len, shuffle_buffer
        self.tokenizer = text.load_tokenizer(tokenizer)
        self.eos_id = text._eos_id(self.tokenizer)
        self.spec = {"vocab_size": self.tokenizer.vocab_size, "max_len": seq_len}
        field = corpus.fields[0]
        docs = [r[field] for r in _texts(corpus, corpus.eval_split, source, data_dir,
                                         limit=max_eval_docs)]
        if not corpus.eos_between:
            docs = ["".join(docs)]
        self.eval_num_bytes = sum(len(d.encode("utf-8")) for d in docs)
        self.eval = text.pack(self.tokenizer.encode_batch(docs), seq_len, packing="stream",
                              tokenizer=self.tokenizer, train=False)
        self._train_stream()  # fail now, not at the first step, if the train split is missing

    def _train_stream(self) -> Iterator[dict]:
        return records(self.corpus, "train", source=self.source, data_dir=self.data_dir,
                       process_index=self.process_index, process_count=self.process_count)

    def _windows(self) -> Iterator[np.ndarray]:
        """This process's windows of L+1 tokens, through a seeded shuffle buffer, forever."""
        rng = np.random.default_rng([self.seed, self.process_index])
        buffer: list[np.ndarray] = []
        field, length = self.corpus.fields[0], self.seq_len
        epoch = 0
        while True:
            stream: list[int] = []
            for r in self._train_stream():
                stream.extend(self.tokenizer.encode(r[field]))
                if self.corpus.eos_between:
                    stream.append(self.eos_id)
                while len(stream) > length:
                    window = np.asarray(stream[:length + 1], np.int32)
                    del stream[:length]
                    if len(buffer) < self.shuffle_buffer:
                        buffer.append(window)
                        continue
                    i = rng.integers(len(buffer))
                    yield buffer[i]
                    buffer[i] = window
            epoch += 1
            if epoch == 1 and not buffer:
                raise ValueError(f"{self.name}: the train split has fewer than seq_len+1 "
                                 "tokens on this process")

    def train_batches(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """This process's batches from ``start_step`` on (earlier windows are skipped)."""
        local = self.global_batch_size // self.process_count
        windows = self._windows()
        for _ in range(start_step * local):
            next(windows)
        while True:
            w = np.stack([next(windows) for _ in range(local)])
            yield {"input_ids": w[:, :-1], "target_ids": w[:, 1:],
                   "loss_mask": np.ones(w[:, 1:].shape, np.float32)}

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        return text.eval_batches(self.eval, self.eval_batch_size, self.process_index,
                                 self.process_count)


def lm(name: str, **kw) -> StreamingLMDataset:
    """``wikitext103`` or ``c4`` as a streamed causal-LM dataset."""
    return StreamingLMDataset(name, LM[name], **kw)


# ---------------------------------------------------------------------------------------------
# Sequence to sequence and classification (in memory)
# ---------------------------------------------------------------------------------------------


def _pad(rows: list[list[int]], length: int, pad_id: int) -> np.ndarray:
    out = np.full((len(rows), length), pad_id, np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def seq2seq_arrays(pairs, tok, *, max_source_len: int, max_target_len: int,
                   decoder_start_id: int) -> dict[str, np.ndarray]:
    """BART-style rows: source ``[bos] x [eos]``, target ``[bos] y [eos]`` (both truncated,
    keeping EOS), decoder input = target shifted right behind ``decoder_start_id``."""
    bos = [] if tok.bos_id is None else [tok.bos_id]
    eos = [text._eos_id(tok)]
    pad = tok.pad_id if tok.pad_id is not None else 0
    src_ids = tok.encode_batch([p[0] for p in pairs])
    tgt_ids = tok.encode_batch([p[1] for p in pairs])
    keep_s, keep_t = max_source_len - len(bos) - 1, max_target_len - len(bos) - 1
    src = [bos + s[:keep_s] + eos for s in src_ids]
    tgt = [bos + t[:keep_t] + eos for t in tgt_ids]
    dec = [[decoder_start_id] + t[:-1] for t in tgt]
    lens = np.array([len(t) for t in tgt])
    return {"input_ids": _pad(src, max_source_len, pad),
            "attention_mask": (_pad([[1] * len(s) for s in src], max_source_len, 0)
                               .astype(np.int32)),
            "decoder_input_ids": _pad(dec, max_target_len, pad),
            "target_ids": _pad(tgt, max_target_len, pad),
            "loss_mask": (np.arange(max_target_len)[None] < lens[:, None]).astype(np.float32)}


def seq2seq(name: str, *, source: str = "tfds", data_dir=None, tokenizer: str | None = None,
            max_source_len: int = 512, max_target_len: int = 128,
            decoder_start_id: int | None = None, max_train_examples: int | None = None,
            max_eval_examples: int | None = None, direction: str = "en-ro",
            **kw) -> text.TextDataset:
    """``xsum``, ``cnn_dailymail`` or ``wmt16_ro_en`` (``direction`` "en-ro" or "ro-en")."""
    corpus = SEQ2SEQ[name]
    fields_ = corpus.fields
    if name == "wmt16_ro_en":
        if direction not in ("en-ro", "ro-en"):
            raise ValueError(f"data.direction must be 'en-ro' or 'ro-en', got {direction!r}")
        fields_ = tuple(direction.split("-"))
    tok = text.load_tokenizer(tokenizer)
    start = text._eos_id(tok) if decoder_start_id is None else decoder_start_id
    splits = {}
    for split, limit in (("train", max_train_examples), (corpus.eval_split, max_eval_examples)):
        rows = _texts(corpus, split, source, data_dir, limit=limit)
        splits[split] = [(r[fields_[0]], r[fields_[1]]) for r in rows]
    arrays = {s: seq2seq_arrays(p, tok, max_source_len=max_source_len,
                                max_target_len=max_target_len, decoder_start_id=start)
              for s, p in splits.items()}
    evals = splits[corpus.eval_split]
    return text.TextDataset(
        name, arrays["train"], arrays[corpus.eval_split],
        {"vocab_size": tok.vocab_size, "max_len": max(max_source_len, max_target_len)}, tok,
        eval_texts={"sources": [p[0] for p in evals], "references": [p[1] for p in evals]},
        decoder_start_id=start, **kw)


def glue(*, task: str, source: str = "tfds", data_dir=None, tokenizer: str | None = None,
         max_len: int = 128, eval_split: str | None = None,
         max_train_examples: int | None = None, **kw) -> text.TextDataset:
    """A GLUE task (``task`` one of :data:`GLUE`) for sequence classification; STS-B labels
    are float scores. Evaluation uses the validation split (GLUE's test labels are hidden)."""
    if task not in GLUE:
        raise ValueError(f"unknown GLUE task {task!r}; valid: {', '.join(GLUE)}")
    corpus = GLUE[task]
    tok = text.load_tokenizer(tokenizer)
    pad = tok.pad_id if tok.pad_id is not None else 0
    label_dtype = np.float32 if task == "stsb" else np.int32

    def arrays(split, limit):
        rows = _texts(corpus, split, source, data_dir, limit=limit)
        enc = [text.encode_pair(tok, r[corpus.fields[0]],
                                r[corpus.fields[1]] if len(corpus.fields) > 1 else None,
                                max_len) for r in rows]
        return {"input_ids": _pad([e[0] for e in enc], max_len, pad),
                "attention_mask": _pad([[1] * len(e[0]) for e in enc], max_len, 0),
                "token_type_ids": _pad([e[1] for e in enc], max_len, 0),
                "label": np.asarray([r["label"] for r in rows], label_dtype)}

    return text.TextDataset(
        f"glue/{task}", arrays("train", max_train_examples),
        arrays(eval_split or corpus.eval_split, None),
        {"vocab_size": tok.vocab_size, "max_len": max_len, "num_labels": corpus.num_labels},
        tok, **kw)


def build(name: str, **kw):
    """The text dataset ``name`` (one of :data:`NAMES`)."""
    if name in LM:
        return lm(name, **kw)
    if name in SEQ2SEQ:
        return seq2seq(name, **kw)
    if name == "glue":
        return glue(**kw)
    raise ValueError(f"unknown text dataset {name!r}; valid: {', '.join(NAMES)}")

"""Text data: tokenizers, the offline corpus, LM packing and in-memory text datasets.

Tokenizers (:func:`load_tokenizer`) come from a local directory in the Hugging Face formats,
never from the network: ``tokenizer.json`` (the ``tokenizers`` library; BERT, GPT-2, LLaMA,
BART all ship one) or a SentencePiece model (``tokenizer.model`` as LLaMA ships it,
``sentencepiece.bpe.model`` as mBART/XLM-R ship it, ``spiece.model`` as T5 ships it);
:class:`ByteTokenizer` needs no files. Every tokenizer has ``encode(text) -> list[int]``
(no special tokens added), ``decode(ids) -> str``, ``vocab_size`` and ``pad_id``/``bos_id``/
``eos_id`` (None where the vocabulary has no such token).

The offline corpus (:func:`pydoc_corpus`) is the Python documentation that CPython ships in
the standard library (``pydoc_data.topics``: ~490 kB of English reference text, one document per
help topic), distributed with CPython under the PSF License Agreement. Its text is that of the
running Python's release, so numbers measured on it name the Python version.

Packing for language modelling: :func:`pack_stream` concatenates documents (each closed by EOS)
into one token stream cut into windows (GPT-2/wikitext style); :func:`pack_documents` packs
whole documents into rows with ``segment_ids``/``positions`` so that tokens attend only within
their own document (T5 style). :class:`TextDataset` batches any dict of equal-length arrays
exactly as :class:`bnn_jax.data.arrays.ArrayDataset` batches images: the order is a function of
(seed, epoch), the position is the step, process ``p`` of ``n`` reads its slice of each batch.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from bnn_jax.data.arrays import check_batch_sizes, eval_rows, train_rows

# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------


class ByteTokenizer:
    """UTF-8 bytes as tokens: ids 0, 1, 2 are pad, BOS, EOS; byte ``b`` is id ``b + 3``."""

    pad_id, bos_id, eos_id = 0, 1, 2
    offset = 3
    vocab_size = 256 + offset

    def encode(self, text: str) -> list[int]:
        """The UTF-8 bytes of ``text`` shifted past the special ids."""
        return [b + self.offset for b in text.encode("utf-8")]

    def decode(self, ids: Iterable[int]) -> str:
        """Bytes of the non-special ids, decoded as UTF-8 (invalid sequences replaced)."""
        data = bytes(int(i) - self.offset for i in ids
                     if self.offset <= int(i) < self.vocab_size)
        return data.decode("utf-8", errors="replace")

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def __repr__(self) -> str:
        return "ByteTokenizer()"


def _token_content(value: Any) -> str | None:
    # tokenizer_config.json stores special tokens as strings or as AddedToken dicts.
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _special_tokens(directory: pathlib.Path) -> dict[str, str]:
    """bos/eos/pad/unk token strings named in tokenizer_config.json / special_tokens_map.json."""
    found: dict[str, str] = {}
    for fname in ("special_tokens_map.json", "tokenizer_config.json"):  # the config wins
        path = directory / fname
        if path.exists():
            cfg = json.loads(path.read_text(encoding="utf-8"))
            for role in ("bos", "eos", "pad", "unk"):
                token = _token_content(cfg.get(f"{role}_token"))
                if token is not None:
                    found[role] = token
    return found


# Token strings tried when no tokenizer config names a role (LLaMA/BART, BERT, GPT-2).
_FALLBACK = {"bos": ("<s>", "[CLS]", "<|begin_of_text|>", "<|endoftext|>"),
             "eos": ("</s>", "[SEP]", "<|end_of_text|>", "<|endoftext|>"),
             "pad": ("<pad>", "[PAD]"), "unk": ("<unk>", "[UNK]")}


class HFTokenizer:
    """A ``tokenizer.json`` (Hugging Face ``tokenizers``) with the special ids of its config."""

    def __init__(self, directory: str | pathlib.Path):
        from tokenizers import Tokenizer

        self.directory = pathlib.Path(directory)
        self._tok = Tokenizer.from_file(str(self.directory / "tokenizer.json"))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        named = _special_tokens(self.directory)
        for role in ("bos", "eos", "pad", "unk"):
            candidates = (named[role],) if role in named else _FALLBACK[role]
            ids = [self._tok.token_to_id(t) for t in candidates]
            setattr(self, f"{role}_id", next((i for i in ids if i is not None), None))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without the special tokens a post-processor would add."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def token_id(self, token: str) -> int | None:
        """The id of ``token`` (e.g. ``[MASK]``), None when the vocabulary lacks it."""
        return self._tok.token_to_id(token)

    def encode_pair(self, a: str, b: str | None, max_len: int) -> tuple[list[int], list[int]]:
        """Ids and token types of ``a`` (and ``b``) with the model's own special tokens (its
        post-processor: ``[CLS] a [SEP] b [SEP]`` for BERT), truncated longest-first."""
        post = self._tok.post_processor
        if post is None:
            return _template_pair(self, a, b, max_len)
        ea = self._tok.encode(a, add_special_tokens=False)
        eb = None if b is None else self._tok.encode(b, add_special_tokens=False)
        la, lb = _longest_first(len(ea.ids), 0 if eb is None else len(eb.ids),
                                max_len - post.num_special_tokens_to_add(eb is not None))
        ea.truncate(la)
        if eb is not None:
            eb.truncate(lb)
        enc = self._tok.post_process(ea, eb, add_special_tokens=True)
        return enc.ids, enc.type_ids

    def __repr__(self) -> str:
        return f"HFTokenizer({str(self.directory)!r}, vocab_size={self.vocab_size})"


class SentencePieceTokenizer:
    """A SentencePiece model; ``fairseq_offset`` maps ids as fairseq-trained vocabularies do.

    LLaMA's ``tokenizer.model`` uses the SentencePiece ids directly (0 unk, 1 ``<s>``,
    2 ``</s>``). mBART/XLM-R's ``sentencepiece.bpe.model`` come from fairseq, whose dictionary
    is ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3 and then the pieces shifted by one
    (transformers' ``XLMRobertaTokenizer``/``MBartTokenizer``: ``fairseq_offset = 1``); mBART's
    language-code tokens are appended after the pieces and are not handled here (use its
    ``tokenizer.json``, which has them).
    """

    def __init__(self, model_file: str | pathlib.Path, *, fairseq_offset: bool = False):
        import sentencepiece as spm

        self.model_file = pathlib.Path(model_file)
        self._sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
        self.fairseq_offset = fairseq_offset
        n = self._sp.get_piece_size()
        if fairseq_offset:
            self.bos_id, self.pad_id, self.eos_id, self.unk_id = 0, 1, 2, 3
            self.vocab_size = n + 1  # pieces 3.. shift by one; the 4 fairseq specials first
        else:
            self.vocab_size = n
            self.unk_id = self._sp.unk_id()
            self.bos_id, self.eos_id = (i if i >= 0 else None
                                        for i in (self._sp.bos_id(), self._sp.eos_id()))
            self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else None

    def _to_ids(self, sp_ids: list[int]) -> list[int]:
        if not self.fairseq_offset:
            return sp_ids
        # SentencePiece id 0 is unk; ids 1, 2 (<s>, </s>) never come out of encode.
        return [i + 1 if i > 0 else self.unk_id for i in sp_ids]

    def encode(self, text: str) -> list[int]:
        return self._to_ids(self._sp.encode(text))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self._to_ids(ids) for ids in self._sp.encode(list(texts))]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if self.fairseq_offset:
            ids = [i - 1 for i in ids if i > 3 and i - 1 < self._sp.get_piece_size()]
        else:
            special = {self.bos_id, self.eos_id, self.pad_id}
            ids = [i for i in ids if i not in special and 0 <= i < self.vocab_size]
        return self._sp.decode(ids)

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({str(self.model_file)!r}, vocab_size={self.vocab_size})"


def _longest_first(la: int, lb: int, budget: int) -> tuple[int, int]:
    """Lengths after removing tokens from the longer sequence until ``la + lb <= budget``."""
    if budget < 1 + (lb > 0):
        raise ValueError(f"max_len leaves room for {budget} tokens besides the special ones")
    while la + lb > budget:
        if la >= lb:
            la -= 1
        else:
            lb -= 1
    return la, lb


def _template_pair(tok, a: str, b: str | None, max_len: int) -> tuple[list[int], list[int]]:
    # [bos] a [eos] (b [eos]) for tokenizers without a post-processor of their own.
    ia, ib = tok.encode(a), ([] if b is None else tok.encode(b))
    bos = [] if tok.bos_id is None else [tok.bos_id]
    eos = [] if tok.eos_id is None else [tok.eos_id]
    special = len(bos) + len(eos) * (1 + (b is not None))
    la, lb = _longest_first(len(ia), len(ib), max_len - special)
    first = bos + ia[:la] + eos
    second = [] if b is None else ib[:lb] + eos
    return first + second, [0] * len(first) + [1] * len(second)


def encode_pair(tok, a: str, b: str | None, max_len: int) -> tuple[list[int], list[int]]:
    """(ids, token types) of a sentence or sentence pair for classification, at most
    ``max_len`` tokens: the tokenizer's own template where it has one, else
    ``[bos] a [eos] b [eos]``."""
    if hasattr(tok, "encode_pair"):
        return tok.encode_pair(a, b, max_len)
    return _template_pair(tok, a, b, max_len)


# SentencePiece file names in Hugging Face model directories -> uses fairseq's id offset.
SENTENCEPIECE_FILES = {"tokenizer.model": False, "spiece.model": False,
                       "sentencepiece.bpe.model": True}


def load_tokenizer(directory: str | pathlib.Path | None):
    """The tokenizer stored in ``directory`` (``None`` or ``"byte"``: :class:`ByteTokenizer`).

    ``tokenizer.json`` wins over a SentencePiece file when a directory has both (it carries
    the added tokens). Nothing is downloaded: a directory without these files is an error that
    says what to place there.
    """
    if directory is None or directory == "byte":
        return ByteTokenizer()
    path = pathlib.Path(directory).expanduser()
    if not path.is_dir():
        raise ValueError(f"tokenizer directory {str(path)!r} does not exist; give a local "
                         "directory holding tokenizer.json (or a SentencePiece model), or "
                         "'byte' for the byte tokenizer")
    if (path / "tokenizer.json").exists():
        return HFTokenizer(path)
    for fname, offset in SENTENCEPIECE_FILES.items():
        if (path / fname).exists():
            return SentencePieceTokenizer(path / fname, fairseq_offset=offset)
    raise ValueError(
        f"no tokenizer in {str(path)!r}: place the model's tokenizer.json (Hugging Face "
        f"tokenizers format) or its SentencePiece model ({', '.join(SENTENCEPIECE_FILES)}) "
        "there, e.g. copied from the model's Hugging Face repository; nothing is downloaded")


# ---------------------------------------------------------------------------------------------
# The offline corpus
# ---------------------------------------------------------------------------------------------


def pydoc_corpus(validation_fraction: float = 0.1, seed: int = 0) -> tuple[list[str],
                                                                           list[str]]:
    """(train, validation) documents of the Python help topics, split by a fixed permutation.

    One document per topic of ``pydoc_data.topics`` (the text ``help('topic')`` prints); the
    topics are sorted by name before the seeded permutation, so the split is the same on every
    machine with the same Python release.
    """
    from pydoc_data.topics import topics

    names = sorted(topics)
    order = np.random.default_rng(seed).permutation(len(names))
    n_val = max(1, round(validation_fraction * len(names)))
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return [topics[names[i]] for i in train], [topics[names[i]] for i in val]


# ---------------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------------


def pack_stream(docs: Sequence[Sequence[int]], length: int, *, eos_id: int, pad_id: int = 0,
                drop_remainder: bool = True) -> dict[str, np.ndarray]:
    """Documents joined by EOS into one stream and cut into ``length``-token windows.

    Window ``i`` holds stream tokens ``[i·L, (i+1)·L]`` (L+1 tokens): ``input_ids`` are the first
    L, ``target_ids`` the last L, so every stream token after the first is predicted exactly
    once. The last, partial window is dropped or (``drop_remainder=False``) padded with
    ``loss_mask`` 0.
    """
    _check_length(length)
    stream = np.fromiter((t for d in docs for t in (*d, eos_id)), dtype=np.int32)
    n_pred = len(stream) - 1
    if n_pred <= 0:
        raise ValueError("pack_stream: the documents hold fewer than two tokens")
    rows = n_pred // length if drop_remainder else -(-n_pred // length)
    padded = np.full(rows * length + 1, pad_id, np.int32)
    take = min(len(padded), len(stream))
    padded[:take] = stream[:take]
    index = np.arange(rows)[:, None] * length + np.arange(length)[None]
    mask = (index + 1 < len(stream)).astype(np.float32)
    return {"input_ids": padded[index], "target_ids": padded[index + 1], "loss_mask": mask}


def pack_documents(docs: Sequence[Sequence[int]], length: int, *, eos_id: int,
                   bos_id: int | None = None, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Whole documents packed into rows of ``length`` tokens, in order (next fit).

    Each document ``[bos] + ids + [eos]`` gives ``n-1`` (input, target) pairs; a document
    longer than a row is cut into row-sized pieces. Rows carry ``segment_ids`` (1, 2, ... per
    piece, 0 at padding) and ``positions`` restarting at 0 in each piece, so attention and
    position embeddings stay within a document; padding has ``loss_mask`` 0.
    """
    _check_length(length)
    rows: list[list[tuple[np.ndarray, np.ndarray]]] = [[]]
    used = 0
    for d in docs:
        toks = np.asarray([*([bos_id] if bos_id is not None else []), *d, eos_id], np.int32)
        inp, tgt = toks[:-1], toks[1:]
        for start in range(0, len(inp), length):
            piece = (inp[start:start + length], tgt[start:start + length])
            if used + len(piece[0]) > length:
                rows.append([])
                used = 0
            rows[-1].append(piece)
            used += len(piece[0])
    rows = [r for r in rows if r]
    out = {k: np.full((len(rows), length), v, dt) for k, v, dt in (
        ("input_ids", pad_id, np.int32), ("target_ids", pad_id, np.int32),
        ("loss_mask", 0, np.float32), ("positions", 0, np.int32), ("segment_ids", 0, np.int32))}
    for r, pieces in enumerate(rows):
        at = 0
        for s, (inp, tgt) in enumerate(pieces, start=1):
            span = slice(at, at + len(inp))
            out["input_ids"][r, span], out["target_ids"][r, span] = inp, tgt
            out["loss_mask"][r, span], out["segment_ids"][r, span] = 1.0, s
            out["positions"][r, span] = np.arange(len(inp))
            at += len(inp)
    return out


PACKINGS = ("stream", "documents")


def pack(docs, length, *, packing: str, tokenizer, train: bool) -> dict[str, np.ndarray]:
    """``pack_stream`` or ``pack_documents`` with the tokenizer's special ids."""
    if packing not in PACKINGS:
        raise ValueError(f"unknown packing {packing!r}; valid: {', '.join(PACKINGS)}")
    eos, pad = _eos_id(tokenizer), tokenizer.pad_id if tokenizer.pad_id is not None else 0
    if packing == "stream":
        return pack_stream(docs, length, eos_id=eos, pad_id=pad, drop_remainder=train)
    return pack_documents(docs, length, eos_id=eos, bos_id=tokenizer.bos_id, pad_id=pad)


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_id is None:
        raise ValueError(f"{tokenizer!r} has no end-of-sequence token; language-model packing "
                         "separates documents with it")
    return tokenizer.eos_id


def _check_length(length: int) -> None:
    if not (isinstance(length, int) and length > 0):
        raise ValueError(f"sequence length must be a positive integer, got {length!r}")


# ---------------------------------------------------------------------------------------------
# In-memory datasets
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TextDataset:
    """Dicts of equal-length arrays (one row per example) batched by global step.

    The same contract as :class:`bnn_jax.data.arrays.ArrayDataset`: the training order is a
    function of (seed, epoch); process ``p`` of ``n`` reads rows ``[p*b, (p+1)*b)`` of every
    global batch; ``eval_batches`` pads the last batch, ``mask`` marks real rows (padding rows
    also get ``loss_mask`` 0).
    """

    name: str
    train: dict[str, np.ndarray]
    eval: dict[str, np.ndarray]
    spec: dict[str, Any]
    tokenizer: Any
    global_batch_size: int
    eval_batch_size: int
    seed: int = 0
    process_index: int = 0
    process_count: int = 1
    eval_num_bytes: int | None = None  # UTF-8 bytes of the raw eval text (bits per byte)
    eval_texts: dict[str, list[str]] | None = None  # e.g. reference summaries, per eval row
    decoder_start_id: int | None = None  # seq2seq: the first decoder input token

    def __post_init__(self):
        for split, arrays in (("train", self.train), ("eval", self.eval)):
            sizes = {k: len(v) for k, v in arrays.items()}
            if len(set(sizes.values())) != 1:
                raise ValueError(f"{self.name} {split} arrays differ in length: {sizes}")
        check_batch_sizes(self.name, self.global_batch_size, self.eval_batch_size,
                          self.process_count, num_train=self.num_train)

    @property
    def num_train(self) -> int:
        return len(next(iter(self.train.values())))

    @property
    def num_test(self) -> int:
        return len(next(iter(self.eval.values())))

    @property
    def steps_per_epoch(self) -> int:
        return self.num_train // self.global_batch_size

    def train_batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's share of the global training batch of ``step``."""
        rows = train_rows(step, seed=self.seed, num_rows=self.num_train,
                          batch_size=self.global_batch_size, process_index=self.process_index,
                          process_count=self.process_count)
        return {k: v[rows] for k, v in self.train.items()}

    def train_batches(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Batches from ``start_step`` on, forever (the position is the step)."""
        step = start_step
        while True:
            yield self.train_batch(step)
            step += 1

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """The eval split once, in order; the last batch is padded, ``mask`` marks real rows."""
        return eval_batches(self.eval, self.eval_batch_size, self.process_index,
                            self.process_count)


def eval_batches(arrays: dict[str, np.ndarray], batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """``arrays`` once in order, in global batches of which this process reads its slice; the
    last batch is padded with row 0, ``mask`` 0 (and ``loss_mask`` 0) on the padding."""
    for rows, mask in eval_rows(len(next(iter(arrays.values()))), batch_size, process_index,
                                process_count):
        batch = {k: v[rows] for k, v in arrays.items()}
        if "loss_mask" in batch:
            batch["loss_mask"] = batch["loss_mask"] * mask[:, None]
        batch["mask"] = mask
        yield batch


def lm_dataset(name: str, train_docs: Sequence[str], eval_docs: Sequence[str], *, seq_len: int,
               tokenizer: Any = None, packing: str = "stream", **kw) -> TextDataset:
    """A causal-LM :class:`TextDataset` from raw documents (``spec``: vocab_size, max_len)."""
    tok = tokenizer if hasattr(tokenizer, "encode_batch") else load_tokenizer(tokenizer)
    train = pack(tok.encode_batch(list(train_docs)), seq_len, packing=packing, tokenizer=tok,
                 train=True)
    evaluation = pack(tok.encode_batch(list(eval_docs)), seq_len, packing=packing,
                      tokenizer=tok, train=False)
    num_bytes = sum(len(d.encode("utf-8")) for d in eval_docs)
    return TextDataset(name, train, evaluation, {"vocab_size": tok.vocab_size,
                                                  "max_len": seq_len},
                       tok, eval_num_bytes=num_bytes, **kw)


def pydoc(*, seq_len: int = 128, tokenizer: str | None = None, packing: str = "stream",
          **kw) -> TextDataset:
    """The offline default text job: LM on the Python help topics (see :func:`pydoc_corpus`)."""
    train_docs, eval_docs = pydoc_corpus()
    return lm_dataset("pydoc", train_docs, eval_docs, seq_len=seq_len, tokenizer=tokenizer,
                      packing=packing, **kw)

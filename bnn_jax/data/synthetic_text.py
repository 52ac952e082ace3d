"""Synthetic text tasks with a known answer, for sequence classification and seq2seq runs.

``synthetic_glue``: random token sequences (random lengths, padded) labelled by whether more of
their tokens fall in the lower half of the vocabulary (``num_labels = 2``), or, with
``num_labels = 1`` (regression, like STS-B), by that fraction. ``synthetic_seq2seq``: copy the
reversed source (decoder inputs start with EOS, BART's decoder start; ``eval_texts`` holds the
references as text for ROUGE/BLEU). Both are deterministic functions of the seed and learnable
by small models.
"""

from __future__ import annotations

import numpy as np

from bnn_jax.data.text import TextDataset

PAD, BOS, EOS, FIRST = 0, 1, 2, 3  # ids below FIRST are special


class IdTokenizer:
    """The synthetic vocabulary as text: ids ``FIRST..vocab_size-1`` written as numbers."""

    pad_id, bos_id, eos_id = PAD, BOS, EOS

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        return [int(w) for w in text.split()]

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        return " ".join(str(int(i)) for i in ids if FIRST <= int(i) < self.vocab_size)


def _lengths(rng, n, seq_len):
    return rng.integers(max(2, seq_len // 2), seq_len + 1, size=n)


def _glue_split(rng, n, seq_len, vocab_size, num_labels):
    ids = rng.integers(FIRST, vocab_size, size=(n, seq_len)).astype(np.int32)
    lengths = _lengths(rng, n, seq_len)
    attention = (np.arange(seq_len)[None] < lengths[:, None]).astype(np.int32)
    ids = np.where(attention == 1, ids, PAD).astype(np.int32)
    low = ((ids >= FIRST) & (ids < (FIRST + vocab_size) // 2) & (attention == 1)).sum(-1)
    frac = (low / lengths).astype(np.float32)
    label = frac if num_labels == 1 else (frac > 0.5).astype(np.int32)
    return {"input_ids": ids, "attention_mask": attention,
            "token_type_ids": np.zeros_like(ids), "label": label}


def synthetic_glue(*, vocab_size: int = 32, seq_len: int = 16, num_labels: int = 2,
                   num_train: int = 512, num_test: int = 128, **kw) -> TextDataset:
    """Sequence classification (or regression for ``num_labels=1``) with a known rule."""
    if num_labels not in (1, 2):
        raise ValueError(f"synthetic_glue: num_labels must be 1 (regression) or 2, got "
                         f"{num_labels!r}")
    rng = np.random.default_rng([kw.get("seed", 0), 7])
    train = _glue_split(rng, num_train, seq_len, vocab_size, num_labels)
    test = _glue_split(rng, num_test, seq_len, vocab_size, num_labels)
    spec = {"vocab_size": vocab_size, "max_len": seq_len, "num_labels": num_labels}
    return TextDataset("synthetic_glue", train, test, spec, IdTokenizer(vocab_size), **kw)


def _seq2seq_split(rng, n, seq_len, vocab_size):
    src = rng.integers(FIRST, vocab_size, size=(n, seq_len - 1)).astype(np.int32)
    lengths = _lengths(rng, n, seq_len - 1)
    keep = np.arange(seq_len - 1)[None] < lengths[:, None]
    src = np.where(keep, src, PAD)
    # target: the reversed source then EOS; the decoder input is the target shifted right.
    tgt = np.full((n, seq_len), PAD, np.int32)
    for i, m in enumerate(lengths):
        tgt[i, :m] = src[i, :m][::-1]
        tgt[i, m] = EOS
    dec = np.concatenate([np.full((n, 1), EOS, np.int32), tgt[:, :-1]], axis=1)
    loss_mask = (np.arange(seq_len)[None] <= lengths[:, None]).astype(np.float32)
    source = np.concatenate([src, np.full((n, 1), PAD, np.int32)], axis=1)
    return {"input_ids": source, "attention_mask": (source != PAD).astype(np.int32),
            "decoder_input_ids": dec, "target_ids": tgt, "loss_mask": loss_mask}


def synthetic_seq2seq(*, vocab_size: int = 32, seq_len: int = 12, num_train: int = 512,
                      num_test: int = 128, **kw) -> TextDataset:
    """Reverse the source sequence (then EOS): a seq2seq task with an exact answer."""
    rng = np.random.default_rng([kw.get("seed", 0), 11])
    train = _seq2seq_split(rng, num_train, seq_len, vocab_size)
    test = _seq2seq_split(rng, num_test, seq_len, vocab_size)
    tok = IdTokenizer(vocab_size)
    refs = [tok.decode(row[:list(row).index(EOS)]) for row in test["target_ids"]]
    return TextDataset("synthetic_seq2seq", train, test,
                       {"vocab_size": vocab_size, "max_len": seq_len}, tok,
                       eval_texts={"references": refs}, **kw)

"""BERT pretraining data: sentence pairs for next-sentence prediction, statically masked.

Built offline as Devlin et al. (2019) build theirs (google-research/bert at eedf571,
``create_pretraining_data.py``): each document's sentences are gathered into chunks of about
``seq_len - 3`` tokens (l. 248-258); segment A is the chunk's first ``a_end`` sentences
(``a_end`` uniform in ``1..len-1``, l. 261-263); with probability 1/2 (always for a chunk of one
sentence) segment B is text from a random other document and the pair is labelled 1
("random"), else B is the rest of the chunk, labelled 0 ("is next", l. 269-299, 130); the
pair is ``[CLS] A [SEP] B [SEP]`` with token types 0/1 (l. 301-316). Sentences longer than
half a pair are first cut into half-pair segments, so that short sequences (of bytes) still
give about 50/50 labels. Not modelled: the 10% of shorter sequences (``short_seq_prob``),
putting unused sentences back, random-side truncation (here longest-first from the end).

Masking (:func:`mask_tokens`, l. 342-415): ``round(0.15 · len(tokens))`` positions (at least 1,
at most ``max_predictions``; ``[CLS]``/``[SEP]`` never), chosen uniformly; of those 80% become
``[MASK]``, 10% keep their token, 10% become a uniformly random vocabulary id. The labels are
the original ids at those positions and ``IGNORE`` (-100, as Hugging Face) elsewhere. BiPFT
(Xingrun-Xing/BiPFT ``binary_pretraining/run_pretrain_binary.py`` l. 328-334) also trains on
a statically masked dataset prepared beforehand; here the mask is drawn once per example from
the dataset seed.

The byte tokenizer has no mask token: ``[MASK]`` is then the id after its vocabulary and the
model's ``vocab_size`` is one larger; ``[CLS]``/``[SEP]`` are its BOS/EOS.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from bnn_jax.data import text

IGNORE = -100
MASK_TOKENS = ("[MASK]", "<mask>")
_SENTENCE = re.compile(r"(?<=[.!?:])\s+|\n\s*\n")


def sentences(document: str) -> list[str]:
    """The non-empty sentences (or paragraph lines) of ``document``."""
    return [s.strip() for s in _SENTENCE.split(document) if s and s.strip()]


def mask_id(tokenizer) -> tuple[int, int]:
    """``([MASK] id, vocab_size)`` of ``tokenizer``: its own mask token, or (byte tokenizer)
    the id after its vocabulary."""
    token_id = getattr(tokenizer, "token_id", None)
    if token_id is not None:
        for t in MASK_TOKENS:
            i = token_id(t)
            if i is not None:
                return int(i), int(tokenizer.vocab_size)
        raise ValueError(f"{tokenizer!r} has no mask token ({', '.join(MASK_TOKENS)}); masked "
                         "language modelling needs a BERT-style vocabulary")
    if isinstance(tokenizer, text.ByteTokenizer):
        return tokenizer.vocab_size, tokenizer.vocab_size + 1
    raise ValueError(f"{tokenizer!r}: masked language modelling needs a tokenizer.json "
                     "(Hugging Face) or the byte tokenizer")


def sentence_pairs(docs: Sequence[Sequence[Sequence[int]]], max_tokens: int,
                   rng: np.random.Generator) -> list[tuple[list[int], list[int], int]]:
    """``(A, B, next_sentence_label)`` from documents given as lists of tokenized sentences:
    label 0 when B follows A in the document, 1 when B comes from another document."""
    pairs = []
    # Sentences longer than half a pair are cut into half-pair segments, so that most chunks
    # hold two segments or more and the labels stay near 50/50 (a one-segment chunk always
    # gets a random B).
    half = max(1, max_tokens // 2)
    docs = [[s[i:i + half] for s in d for i in range(0, len(s), half)] for d in docs]
    usable = [i for i, d in enumerate(docs) if d]
    if len(usable) < 2:
        raise ValueError("sentence pairs need at least two non-empty documents")
    for di, doc in enumerate(docs):
        chunk, length = [], 0
        for si, sent in enumerate(doc):
            chunk.append(sent)
            length += len(sent)
            if si < len(doc) - 1 and length < max_tokens:
                continue
            a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
            a = [t for s in chunk[:a_end] for t in s]
            if len(chunk) == 1 or rng.random() < 0.5:
                other = di
                while other == di:
                    other = usable[int(rng.integers(len(usable)))]
                rand = docs[other]
                b = []
                for s in rand[int(rng.integers(len(rand))):]:
                    b.extend(s)
                    if len(b) >= max_tokens - len(a):
                        break
                label = 1
            else:
                b, label = [t for s in chunk[a_end:] for t in s], 0
            la, lb = text._longest_first(len(a), len(b), max_tokens)
            pairs.append((a[:la], b[:lb], label))
            chunk, length = [], 0
    return pairs


def mask_tokens(ids: np.ndarray, maskable: np.ndarray, length: int, rng: np.random.Generator,
                *, mask_token: int, vocab_size: int, probability: float = 0.15,
                max_predictions: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """BERT's masking of one sequence: ``(masked ids, labels)``; ``length`` real tokens (the
    count the masking rate applies to), ``maskable`` marks the positions that may be chosen."""
    n = max(1, int(round(length * probability)))
    if max_predictions is not None:
        n = min(n, max_predictions)
    candidates = np.flatnonzero(maskable)
    chosen = np.sort(rng.permutation(candidates)[:n])
    out, labels = ids.copy(), np.full_like(ids, IGNORE)
    labels[chosen] = ids[chosen]
    for i in chosen:
        if rng.random() < 0.8:
            out[i] = mask_token
        elif rng.random() >= 0.5:  # else (10%) the token stays
            out[i] = rng.integers(vocab_size)
    return out, labels


def pretraining_arrays(docs: Sequence[str], tokenizer, seq_len: int, rng: np.random.Generator,
                       *, max_predictions: int | None = None) -> dict[str, np.ndarray]:
    """Padded BERT pretraining rows of ``docs``: ``input_ids``, ``token_type_ids``,
    ``attention_mask``, ``mlm_labels``, ``next_sentence_label``."""
    if tokenizer.bos_id is None or tokenizer.eos_id is None:
        raise ValueError(f"{tokenizer!r} needs [CLS]/[SEP] (BOS/EOS) tokens for sentence pairs")
    if seq_len < 5:
        raise ValueError(f"sentence pairs need seq_len >= 5, got {seq_len}")
    cls, sep = tokenizer.bos_id, tokenizer.eos_id
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    mask_token, vocab = mask_id(tokenizer)
    tokenized = [tokenizer.encode_batch(sentences(d)) if sentences(d) else [] for d in docs]
    pairs = sentence_pairs(tokenized, seq_len - 3, rng)
    n = len(pairs)
    out = {"input_ids": np.full((n, seq_len), pad, np.int32),
           "token_type_ids": np.zeros((n, seq_len), np.int32),
           "attention_mask": np.zeros((n, seq_len), np.int32),
           "mlm_labels": np.full((n, seq_len), IGNORE, np.int32),
           "next_sentence_label": np.zeros((n,), np.int32)}
    for r, (a, b, label) in enumerate(pairs):
        ids = np.asarray([cls, *a, sep, *b, sep], np.int32)
        length = len(ids)
        maskable = np.ones(length, bool)
        maskable[[0, len(a) + 1, length - 1]] = False
        ids, labels = mask_tokens(ids, maskable, length, rng, mask_token=mask_token,
                                  vocab_size=tokenizer.vocab_size,
                                  max_predictions=max_predictions)
        out["input_ids"][r, :length], out["mlm_labels"][r, :length] = ids, labels
        out["token_type_ids"][r, len(a) + 2:length] = 1
        out["attention_mask"][r, :length] = 1
        out["next_sentence_label"][r] = label
    return out


def pydoc_pretraining(*, seq_len: int = 128, tokenizer: str | None = None,
                      max_predictions: int = 0, **kw: Any) -> text.TextDataset:
    """BERT pretraining (MLM + NSP) on the Python help topics (:func:`text.pydoc_corpus`);
    ``max_predictions`` caps the masked positions per sequence (0: no cap)."""
    tok = text.load_tokenizer(tokenizer)
    train_docs, eval_docs = text.pydoc_corpus()
    seed = int(kw.get("seed", 0))
    cap = max_predictions or None
    # Separate streams: the eval split does not change with the training split's size.
    train = pretraining_arrays(train_docs, tok, seq_len, np.random.default_rng([seed, 0]),
                               max_predictions=cap)
    evaluation = pretraining_arrays(eval_docs, tok, seq_len, np.random.default_rng([seed, 1]),
                                    max_predictions=cap)
    return text.TextDataset("pydoc_pretraining", train, evaluation,
                            {"vocab_size": mask_id(tok)[1], "max_len": seq_len}, tok, **kw)

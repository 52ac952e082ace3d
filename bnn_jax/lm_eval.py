"""Evaluation of causal LMs: corpus perplexity in windows and zero-shot multiple choice.

Perplexity (:func:`perplexity`) follows the protocol of the GPTQ / PB-LLM evaluation
(hahnyuan/PB-LLM ``gptq_pb/eval_ppl_utils.py`` ``llama_eval`` lines 9-85,
``gptq_pb/datautils.py`` lines 28-93): the
test text is tokenized as one stream (WikiText-2: the rows of the test split joined by
``"\\n\\n"``; C4: the first 1100 validation documents joined by ``" "`` and cut to 256 windows),
cut into ``n = len // window`` windows of ``window`` tokens (2048; the rest is dropped), each
scored on its own (``window − 1`` next-token predictions), ``ppl = exp(mean nll)`` (the
reference's ``Σ mean_loss·window / (n·window)``: every window has the same count). With
``stride < window`` windows overlap and each scores only the tokens no earlier window scored
(Hugging Face's sliding-window perplexity).

Zero-shot accuracy (:func:`zero_shot`) scores every choice by the log-likelihood of its
continuation given the context, with the prompts of EleutherAI's lm-evaluation-harness
(BoolQ, PIQA, HellaSwag, WinoGrande, ARC-Easy/Challenge, OpenBookQA); ``acc`` takes the
highest log-likelihood, ``acc_norm`` the highest per UTF-8 byte of the continuation.
Datasets are read from local files in their published formats (:data:`TASKS` lists them);
nothing is downloaded. Usage::

  python -m bnn_jax.lm_eval --model DIR --ppl wikitext2 --data_dir DATA
  python -m bnn_jax.lm_eval --model DIR --zero_shot arc_easy,piqa --data_dir DATA
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import pathlib
import random
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# ---------------------------------------------------------------------------------------------
# Corpora
# ---------------------------------------------------------------------------------------------

CORPORA = ("wikitext2", "c4", "pydoc")
_WIKITEXT_FILES = {"train": "wiki.train.raw", "test": "wiki.test.raw"}
_C4_FILES = {"train": "c4-train.00000-of-01024.json.gz",
             "validation": "c4-validation.00000-of-00008.json.gz"}


def _find(data_dir, names: Sequence[str], hint: str) -> pathlib.Path:
    root = pathlib.Path(data_dir or ".").expanduser()
    for name in names:
        hits = sorted(root.rglob(name)) if root.is_dir() else []
        if hits:
            return hits[0]
    raise ValueError(f"no {' or '.join(names)} under {str(root)!r}: {hint}; nothing is "
                     "downloaded")


def _json_rows(path: pathlib.Path) -> list[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def wikitext2_rows(split: str, data_dir) -> list[str]:
    """Lines (with their newlines) of WikiText-2 raw ``wiki.{split}.raw``."""
    path = _find(data_dir, [_WIKITEXT_FILES[split]],
                 "unzip wikitext-2-raw-v1.zip (the WikiText-2 raw release, folder "
                 "wikitext-2-raw/) there and pass --data_dir")
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def c4_docs(split: str, data_dir, limit: int | None = None) -> list[str]:
    """Documents of the first C4 ``en`` shard of ``split`` (``allenai/c4`` json.gz files)."""
    path = _find(data_dir, [_C4_FILES[split]],
                 f"place {_C4_FILES[split]} (from the allenai/c4 repository, folder en/) there "
                 "and pass --data_dir")
    rows = _json_rows(path)
    return [r["text"] for r in rows[:limit]]


def _check_corpus(name: str) -> None:
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; valid corpora: {list(CORPORA)}")


def eval_stream(name: str, tokenizer, *, window: int, data_dir=None, bos: bool = True
                ) -> np.ndarray:
    """Token ids of a corpus' test text as the protocol builds it (BOS first if ``bos``)."""
    _check_corpus(name)
    if name == "wikitext2":
        text = "\n\n".join(wikitext2_rows("test", data_dir))
    elif name == "c4":
        text = " ".join(c4_docs("validation", data_dir, limit=1100))
    else:
        from bnn_jax.data.text import pydoc_corpus

        text = "\n\n".join(pydoc_corpus()[1])
    ids = tokenizer.encode(text)
    if bos and getattr(tokenizer, "bos_id", None) is not None:
        ids = [tokenizer.bos_id, *ids]
    ids = np.asarray(ids, np.int32)
    return ids[:256 * window] if name == "c4" else ids


def calibration(name: str, tokenizer, *, n: int, seq_len: int, seed: int = 0, data_dir=None,
                bos: bool = True) -> np.ndarray:
    """``[n, seq_len]`` calibration windows drawn from a corpus' training text.

    As ``gptq_pb/datautils.py``: WikiText-2 joins the training rows by ``" "`` and takes
    windows at ``random.randint(0, len − seq_len − 1)`` (Python ``random`` seeded with
    ``seed``); C4 draws random documents longer than ``seq_len`` and a window inside each.
    ``pydoc`` samples the offline corpus' training documents like WikiText-2.
    """
    _check_corpus(name)
    rng = random.Random(seed)
    if name == "c4":
        docs = c4_docs("train", data_dir)
        out = []
        for _ in range(n):
            for _attempt in range(100 * max(n, 1)):
                ids = tokenizer.encode(docs[rng.randint(0, len(docs) - 1)])
                if len(ids) > seq_len:
                    break
            else:
                raise ValueError(f"no C4 training document is longer than {seq_len} tokens")
            i = rng.randint(0, len(ids) - seq_len - 1)
            out.append(ids[i:i + seq_len])
        return np.asarray(out, np.int32)
    if name == "wikitext2":
        text = " ".join(wikitext2_rows("train", data_dir))
    else:
        from bnn_jax.data.text import pydoc_corpus

        text = " ".join(pydoc_corpus()[0])
    ids = tokenizer.encode(text)
    if bos and getattr(tokenizer, "bos_id", None) is not None:
        ids = [tokenizer.bos_id, *ids]
    if len(ids) <= seq_len + 1:
        raise ValueError(f"the {name} training text has {len(ids)} tokens, too few for "
                         f"windows of {seq_len}")
    starts = [rng.randint(0, len(ids) - seq_len - 1) for _ in range(n)]
    return np.asarray([ids[i:i + seq_len] for i in starts], np.int32)


# ---------------------------------------------------------------------------------------------
# Perplexity
# ---------------------------------------------------------------------------------------------


def _nll_fn(model) -> Callable:
    @jax.jit
    def nll(ids):
        logits = model(ids[:, :-1]).astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]

    return nll


def window_starts(n_tokens: int, window: int, stride: int) -> list[tuple[int, int]]:
    """``(start, first scored position)`` of each window (positions within the window)."""
    if stride == window:
        return [(i * window, 1) for i in range(n_tokens // window)]
    out, scored = [], 0  # `scored`: tokens [0, scored) have been predicted or are the first
    for start in range(0, max(n_tokens - window, 0) + 1, stride):
        end = start + window
        out.append((start, max(scored - start, 1)))
        scored = end
    return out


def perplexity(model, ids: np.ndarray, *, window: int = 2048, stride: int | None = None,
               batch_size: int = 1) -> dict[str, float]:
    """``exp`` of the mean next-token NLL over the scored tokens of ``ids`` (see the module)."""
    stride = window if stride is None else stride
    if not 0 < stride <= window:
        raise ValueError(f"stride must be in (0, window={window}], got {stride}")
    ids = np.asarray(ids).reshape(-1)
    plan = window_starts(len(ids), window, stride)
    if not plan:
        raise ValueError(f"{len(ids)} tokens are fewer than one window of {window}; give a "
                         "smaller window")
    nll = _nll_fn(model)
    total, count = 0.0, 0
    for b in range(0, len(plan), batch_size):
        chunk = plan[b:b + batch_size]
        rows = np.stack([ids[s:s + window] for s, _ in chunk])
        pad = batch_size - len(chunk)  # one compiled shape for every batch
        if pad:
            rows = np.concatenate([rows, np.repeat(rows[-1:], pad, 0)])
        out = np.asarray(nll(jnp.asarray(rows)), np.float64)
        for r, (_, first) in enumerate(chunk):
            total += out[r, first - 1:].sum()  # prediction t-1 scores token t
            count += window - first
    loss = total / count
    return {"perplexity": math.exp(loss), "loss": loss, "tokens": count, "windows": len(plan)}


# ---------------------------------------------------------------------------------------------
# Zero-shot multiple choice
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Item:
    """One question: a context per choice (WinoGrande) or one shared, the continuations, the
    gold index."""

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    label: int


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _boolq(r):
    label = r["label"] if "label" in r else r["answer"]
    return Item((f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:",) * 2,
                (" no", " yes"), int(bool(label)))


def _piqa(r):
    return Item((f"Question: {r['goal']}\nAnswer:",) * 2, (" " + r["sol1"], " " + r["sol2"]),
                int(r["label"]))


def _hellaswag(r):
    ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize()
    query = _hellaswag_clean(r["activity_label"] + ": " + ctx)
    ends = tuple(" " + _hellaswag_clean(e) for e in r["endings"])
    return Item((query,) * len(ends), ends, int(r["label"]))


def _winogrande(r):
    i = r["sentence"].index("_")
    rest = " " + r["sentence"][i + 1:].strip()
    return Item((r["sentence"][:i] + r["option1"], r["sentence"][:i] + r["option2"]),
                (rest, rest), int(r["answer"]) - 1)


def _ai2(prefix: bool):
    def parse(r):
        q = r["question"]
        labels = [c["label"] for c in q["choices"]]
        ctx = f"Question: {q['stem']}\nAnswer:" if prefix else q["stem"]
        return Item((ctx,) * len(labels), tuple(" " + c["text"] for c in q["choices"]),
                    labels.index(r["answerKey"]))
    return parse


@dataclasses.dataclass(frozen=True)
class Task:
    files: tuple[str, ...]       # accepted file names (searched under data_dir/<task>/)
    parse: Callable[[dict], Item]
    source: str                  # where the files come from


TASKS = {
    "boolq": Task(("val.jsonl", "dev.jsonl"), _boolq,
                  "SuperGLUE BoolQ val.jsonl or the original BoolQ dev.jsonl"),
    "piqa": Task(("valid.jsonl",), _piqa,
                 "PIQA valid.jsonl with valid-labels.lst beside it (yonatanbisk.com/piqa)"),
    "hellaswag": Task(("hellaswag_val.jsonl",), _hellaswag,
                      "hellaswag_val.jsonl of rowanz/hellaswag data/"),
    "winogrande": Task(("dev.jsonl",), _winogrande,
                       "WinoGrande 1.1 dev.jsonl (winogrande_1.1.zip)"),
    "arc_easy": Task(("ARC-Easy-Test.jsonl",), _ai2(True),
                     "ARC-Easy-Test.jsonl of the AI2 ARC release (ARC-V1-Feb2018)"),
    "arc_challenge": Task(("ARC-Challenge-Test.jsonl",), _ai2(True),
                          "ARC-Challenge-Test.jsonl of the AI2 ARC release (ARC-V1-Feb2018)"),
    "openbookqa": Task(("test.jsonl",), _ai2(False),
                       "OpenBookQA-V1-Sep2018 Data/Main/test.jsonl"),
}


def load_task(name: str, data_dir) -> list[Item]:
    """The items of a zero-shot task read from ``data_dir/<name>/`` (its published files)."""
    if name not in TASKS:
        raise ValueError(f"unknown zero-shot task {name!r}; valid tasks: {list(TASKS)}")
    task = TASKS[name]
    folder = pathlib.Path(data_dir or ".").expanduser() / name
    path = next((folder / f for f in task.files if (folder / f).exists()), None)
    if path is None:
        raise ValueError(f"zero-shot task {name!r}: no {' or '.join(task.files)} in "
                         f"{str(folder)!r}; place {task.source} there; nothing is downloaded")
    rows = _json_rows(path)
    if name == "piqa":
        labels_path = path.with_name("valid-labels.lst")
        if not labels_path.exists():
            raise ValueError(f"piqa: {str(labels_path)!r} is missing; place PIQA's "
                             "valid-labels.lst beside valid.jsonl")
        labels = labels_path.read_text().split()
        rows = [{**r, "label": int(lab)} for r, lab in zip(rows, labels, strict=True)]
    return [task.parse(r) for r in rows]


def _split_space(context: str, continuation: str) -> tuple[str, str]:
    # lm-evaluation-harness moves a context's trailing spaces onto the continuation.
    n = len(context) - len(context.rstrip(" "))
    return (context[:-n], context[-n:] + continuation) if n else (context, continuation)


def loglikelihood(model, tokenizer, pairs: Sequence[tuple[str, str]], *, max_len: int,
                  bos: bool = False) -> list[float]:
    """``Σ log p(continuation tokens | context)`` of each ``(context, continuation)``."""
    nll = _nll_fn(model)
    out = []
    for context, cont in pairs:
        context, cont = _split_space(context, cont)
        ctx_ids, cont_ids = tokenizer.encode(context), tokenizer.encode(cont)
        if bos and getattr(tokenizer, "bos_id", None) is not None:
            ctx_ids = [tokenizer.bos_id, *ctx_ids]
        ids = (ctx_ids + cont_ids)[-(max_len + 1):]  # left truncation keeps the continuation
        n = len(ids)
        # Padded to a power of two (at most max_len): few compiled shapes.
        width = min(1 << max(n - 2, 0).bit_length(), max_len)
        row = np.zeros((1, width + 1), np.int32)
        row[0, :n] = ids
        scores = np.asarray(nll(jnp.asarray(row)), np.float64)[0]
        out.append(-float(scores[n - 1 - len(cont_ids):n - 1].sum()))
    return out


def zero_shot(model, tokenizer, items: Sequence[Item], *, max_len: int, bos: bool = False
              ) -> dict[str, float]:
    """``acc`` (highest log-likelihood) and ``acc_norm`` (highest per byte) over ``items``."""
    if not items:
        raise ValueError("zero_shot: no items")
    pairs = [(c, x) for it in items for c, x in zip(it.contexts, it.continuations)]
    ll = iter(loglikelihood(model, tokenizer, pairs, max_len=max_len, bos=bos))
    hit = hit_norm = 0
    for it in items:
        scores = np.array([next(ll) for _ in it.continuations])
        per_byte = scores / np.array([len(x.encode("utf-8")) for x in it.continuations])
        hit += int(np.argmax(scores) == it.label)
        hit_norm += int(np.argmax(per_byte) == it.label)
    return {"acc": hit / len(items), "acc_norm": hit_norm / len(items), "items": len(items)}


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def load_model(directory: str, **fields) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a local Hugging Face-format model directory."""
    from bnn_jax.compress import io
    from bnn_jax.data.text import load_tokenizer
    from bnn_jax.models import hub

    if io.is_compressed(directory):  # a bnn_jax.compress output
        return io.load(directory), load_tokenizer(directory)
    return hub.load(directory, **fields), load_tokenizer(directory)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="local model directory (config.json, "
                        "*.safetensors, tokenizer)")
    parser.add_argument("--ppl", default="", help=f"comma-separated corpora of {list(CORPORA)}")
    parser.add_argument("--zero_shot", default="", help=f"comma-separated of {list(TASKS)}")
    parser.add_argument("--data_dir", default=".")
    parser.add_argument("--window", type=int, default=2048)
    parser.add_argument("--stride", type=int, default=0, help="0: the window (no overlap)")
    parser.add_argument("--batch_size", type=int, default=1)
    args = parser.parse_args(argv)
    corpora = [c for c in args.ppl.split(",") if c]
    tasks = [t for t in args.zero_shot.split(",") if t]
    for c in corpora:
        _check_corpus(c)
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"unknown zero-shot task {t!r}; valid tasks: {list(TASKS)}")
    if not corpora and not tasks:
        parser.error("give --ppl and/or --zero_shot")
    model, tok = load_model(args.model)
    window = min(args.window, model.max_len)
    results = {}
    for c in corpora:
        ids = eval_stream(c, tok, window=window, data_dir=args.data_dir)
        results[c] = perplexity(model, ids, window=window, stride=args.stride or None,
                                batch_size=args.batch_size)
    for t in tasks:
        results[t] = zero_shot(model, tok, load_task(t, args.data_dir), max_len=window)
    print(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()

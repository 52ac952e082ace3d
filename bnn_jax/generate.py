"""Decoding with a fixed-size KV cache: greedy, sampling (temperature, top-k, top-p), beam search.

One jit-compiled loop serves decoder-only LMs and encoder-decoder models, batched, with EOS and
padding handled. Decoder-only prompts are **left-padded** (``mask`` 0 on the padding): every
row's last prompt token then sits in the same slot, and positions count real tokens only, so a
padded row decodes exactly as it would alone.

The model-side protocol (what :mod:`bnn_jax.models.llama` implements; an encoder-decoder adds
``encode`` and ``is_encoder_decoder = True``):

``model.init_cache(batch_size, max_len) -> cache``
    Any pytree of fixed-shape arrays, **batch on axis 0 of every leaf** (beam search reorders
    it by gathering rows).
``model.decode(ids [B, T], cache, *, index, positions [B, T], kv_mask [B, S], **enc) ->
(logits [B, T, V], cache)``
    Writes the T new tokens' keys/values at cache slots ``[index, index+T)`` (``index`` a
    traced int32 scalar); token ``t`` attends to slots ``s <= index + t`` where
    ``kv_mask[b, s]`` is True (generate keeps ``kv_mask`` and ``positions``).
``model.encode(input_ids, attention_mask) -> encoded`` (encoder-decoder only)
    Its result and the source mask are passed to every ``decode`` call as
    ``encoded=..., encoder_mask=...``; rows of ``encoded`` are batch rows.

A model without ``init_cache`` is decoded through :class:`FullForward`, which reruns the
model's ordinary call over a token buffer at every step (exact, O(L²) per step): decoder-only
``model(ids, positions=..., segment_ids=...)``, encoder-decoder (its ``__call__`` takes
``decoder_input_ids``) ``model(input_ids, decoder_input_ids, attention_mask=...)``.

Beam search follows the usual (Hugging Face ``BeamSearchScorer``) rules: each step keeps the
``2·num_beams`` best continuations; an EOS among the first ``num_beams`` of them closes a
hypothesis scored ``sum log p / length**length_penalty`` (length = generated tokens, EOS
included); the best non-EOS ones go on. ``early_stopping=True`` ends a row once it has
``num_beams`` finished hypotheses; ``False`` also waits until no running beam (scored at its
current length) could beat the worst finished one. Rows still open after ``max_new_tokens``
add their running beams as hypotheses.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

STRATEGIES = ("greedy", "sample", "beam")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Static decoding settings (hashable: one compile per distinct setting)."""

    max_new_tokens: int
    strategy: str = "greedy"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 4
    length_penalty: float = 1.0
    early_stopping: bool = True
    eos_id: int | None = None
    pad_id: int = 0
    min_new_tokens: int = 0


def _forbid_early_eos(scores, i, s: Settings, low):
    """EOS scored ``low`` while fewer than ``min_new_tokens`` tokens are out (Hugging Face's
    ``MinNewTokensLengthLogitsProcessor``; its ``min_length`` counts the decoder start token
    too, so ``min_length = m`` is ``min_new_tokens = m - 1`` for an encoder-decoder)."""
    if not s.min_new_tokens or s.eos_id is None:
        return scores
    blocked = scores.at[..., s.eos_id].set(low)
    return jnp.where(i < s.min_new_tokens, blocked, scores)


def top_k_top_p(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """``logits [B, V]`` with everything outside the top ``k`` / the nucleus set to -inf.

    The nucleus is the smallest set of most likely tokens whose probability reaches ``top_p``
    (Holtzman et al., 2020); the most likely token is always kept.
    """
    neg = jnp.finfo(logits.dtype).min
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the more likely tokens
        keep_sorted = before < top_p
        keep = jnp.zeros_like(keep_sorted).at[
            jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
        logits = jnp.where(keep, logits, neg)
    return logits


def _choose(logits, rng, s: Settings):
    if s.strategy == "greedy":
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = top_k_top_p(logits.astype(jnp.float32) / s.temperature, s.top_k, s.top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _validate(model, input_ids, mask, s: Settings, enc_dec: bool, decoder_start_id):
    if s.strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {s.strategy!r}; valid: {', '.join(STRATEGIES)}")
    if not (isinstance(s.max_new_tokens, int) and s.max_new_tokens > 0):
        raise ValueError(f"max_new_tokens must be a positive integer, got {s.max_new_tokens!r}")
    if not (isinstance(s.min_new_tokens, int) and 0 <= s.min_new_tokens <= s.max_new_tokens):
        raise ValueError(f"min_new_tokens must be an integer in 0..max_new_tokens="
                         f"{s.max_new_tokens}, got {s.min_new_tokens!r}")
    if s.strategy == "sample":
        if not s.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {s.temperature!r}")
        if not (isinstance(s.top_k, int) and s.top_k >= 0):
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {s.top_k!r}")
        if not 0 < s.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {s.top_p!r}")
    if s.strategy == "beam":
        if not (isinstance(s.num_beams, int) and s.num_beams >= 1):
            raise ValueError(f"num_beams must be a positive integer, got {s.num_beams!r}")
        if s.eos_id is None:
            raise ValueError("beam search needs eos_id (hypotheses end at EOS)")
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
    if mask.shape != input_ids.shape:
        raise ValueError(f"mask shape {mask.shape} differs from input_ids {input_ids.shape}")
    if enc_dec:
        if decoder_start_id is None:
            raise ValueError("an encoder-decoder model needs decoder_start_id")
        length = 1 + s.max_new_tokens
    else:
        m = mask.astype(bool)
        if not m[:, -1].all() or (np.diff(m.astype(np.int8), axis=1) < 0).any():
            raise ValueError("decoder-only prompts must be left-padded: mask 0s first, then "
                             "1s, with the last column real in every row")
        length = input_ids.shape[1] + s.max_new_tokens
    max_len = getattr(model, "max_len", None)
    if max_len is not None and length > max_len:
        raise ValueError(f"prompt ({length - s.max_new_tokens}) + max_new_tokens "
                         f"({s.max_new_tokens}) = {length} tokens is longer than the model's "
                         f"max_len={max_len}")
    from bnn_jax.nn import pending_learned

    pending = pending_learned(model)
    if pending:
        raise ValueError(f"learned input quantizers of {pending} are not initialized yet; call "
                         "bnn_jax.nn.initialize(model, batch) (or train) before generating")


def _takes_decoder_inputs(model) -> bool:
    import inspect

    try:
        return "decoder_input_ids" in inspect.signature(type(model).__call__).parameters
    except (TypeError, ValueError):
        return False


def is_encoder_decoder(model) -> bool:
    """True for a model that says so (``is_encoder_decoder``) or whose call takes
    ``decoder_input_ids``."""
    if hasattr(model, "is_encoder_decoder"):
        return bool(model.is_encoder_decoder)
    return _takes_decoder_inputs(model)


class FullForward:
    """The cache protocol for a model without a KV cache: the "cache" is the token buffer,
    and each step reruns the model's full forward over it."""

    def __init__(self, model):
        self.model = model
        self.is_encoder_decoder = is_encoder_decoder(model)
        self.max_len = getattr(model, "max_len", None)

    def init_cache(self, batch_size: int, max_len: int) -> dict:
        zeros = jnp.zeros((batch_size, max_len), jnp.int32)
        return {"ids": zeros, "positions": zeros}

    def encode(self, input_ids, attention_mask):
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def decode(self, ids, cache, *, index, positions, kv_mask, encoded=None,
               encoder_mask=None):
        buf = jax.lax.dynamic_update_slice(cache["ids"], ids.astype(jnp.int32), (0, index))
        pos = jax.lax.dynamic_update_slice(cache["positions"], positions.astype(jnp.int32),
                                           (0, index))
        if self.is_encoder_decoder:
            logits = self.model(encoded["input_ids"], buf,
                                attention_mask=encoded["attention_mask"])
        else:
            # Empty and padding slots are segment 0, real tokens segment 1: causal attention
            # within segment 1 is attention over the real tokens only.
            logits = self.model(buf, positions=pos, segment_ids=kv_mask.astype(jnp.int32))
        return (jax.lax.dynamic_slice_in_dim(logits, index, ids.shape[1], axis=1),
                {"ids": buf, "positions": pos})


def generate(model, input_ids, mask=None, *, max_new_tokens: int, strategy: str = "greedy",
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             num_beams: int = 4, length_penalty: float = 1.0, early_stopping: bool = True,
             eos_id: int | None = None, pad_id: int = 0, decoder_start_id: int | None = None,
             rng: jax.Array | None = None, min_new_tokens: int = 0) -> dict[str, jax.Array]:
    """Generate ``max_new_tokens`` after each prompt (decoder-only) or source (enc-dec).

    Returns ``tokens [B, max_new_tokens]`` (only the new tokens; ``pad_id`` after a row's
    EOS) and, for beam search, ``scores [B]`` (the length-normalized log-probability of the
    returned hypothesis). ``rng`` is needed for ``strategy="sample"``. EOS cannot be among
    the first ``min_new_tokens`` tokens.
    """
    s = Settings(max_new_tokens=max_new_tokens, strategy=strategy, temperature=temperature,
                 top_k=top_k, top_p=top_p, num_beams=num_beams, length_penalty=length_penalty,
                 early_stopping=early_stopping, eos_id=eos_id, pad_id=pad_id,
                 min_new_tokens=min_new_tokens)
    input_ids = np.asarray(input_ids, np.int32)
    mask = np.ones_like(input_ids) if mask is None else np.asarray(mask)
    enc_dec = is_encoder_decoder(model)
    _validate(model, input_ids, mask, s, enc_dec, decoder_start_id)
    if strategy == "sample" and rng is None:
        raise ValueError("strategy='sample' needs rng (e.g. jax.random.key(0))")
    rng = jax.random.key(0) if rng is None else rng
    graphdef, state = nnx.split(model)
    return _generate(graphdef, state, jnp.asarray(input_ids), jnp.asarray(mask, bool), rng,
                     settings=s, enc_dec=enc_dec, decoder_start_id=decoder_start_id,
                     cached=hasattr(model, "init_cache"))


@functools.partial(jax.jit, static_argnames=("graphdef", "settings", "enc_dec",
                                             "decoder_start_id", "cached"))
def _generate(graphdef, state, input_ids, mask, rng, *, settings, enc_dec, decoder_start_id,
              cached):
    s = settings
    model = nnx.merge(graphdef, state)
    model = model if cached else FullForward(model)
    b = input_ids.shape[0]
    extra: dict[str, Any] = {}
    if enc_dec:
        extra = {"encoded": model.encode(input_ids, mask), "encoder_mask": mask}
        prompt = jnp.full((b, 1), decoder_start_id, jnp.int32)
        prompt_mask = jnp.ones((b, 1), bool)
    else:
        prompt, prompt_mask = input_ids, mask
    p = prompt.shape[1]
    slots = p + s.max_new_tokens
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0).astype(jnp.int32)
    kv_mask = jnp.zeros((b, slots), bool).at[:, :p].set(prompt_mask)
    cache = model.init_cache(b, slots)
    logits, cache = model.decode(prompt, cache, index=jnp.int32(0), positions=positions,
                                 kv_mask=kv_mask, **extra)
    start = dict(cache=cache, logits=logits[:, -1].astype(jnp.float32),
                 pos=positions[:, -1], kv_mask=kv_mask)
    vocab = logits.shape[-1]  # known while tracing: these errors come before compiling
    if s.strategy == "sample" and s.top_k > vocab:
        raise ValueError(f"top_k={s.top_k} exceeds the vocabulary of {vocab}")
    if s.strategy == "beam" and vocab < 2:
        # 2·num_beams candidates come from num_beams·vocab continuations.
        raise ValueError(f"beam search needs a vocabulary of at least 2 tokens, got {vocab}")

    def step(carry, tokens, i):
        """Feed ``tokens [rows]`` as generated token ``i``; next logits into the carry."""
        kv = carry["kv_mask"].at[:, p + i].set(True)
        pos = carry["pos"] + 1
        logits, cache = model.decode(tokens[:, None], carry["cache"], index=p + i,
                                     positions=pos[:, None], kv_mask=kv, **carry["extra"])
        return dict(cache=cache, logits=logits[:, 0].astype(jnp.float32), pos=pos, kv_mask=kv,
                    extra=carry["extra"])

    if s.strategy == "beam":
        return _beam(step, start, extra, b, s)
    return _sample_loop(step, {**start, "extra": extra}, rng, b, s)


def _sample_loop(step, carry, rng, b, s: Settings):
    eos = -1 if s.eos_id is None else s.eos_id

    def cond(state):
        i, _, _, done = state
        return (i < s.max_new_tokens) & ~done.all()

    def body(state):
        i, carry, out, done = state
        logits = _forbid_early_eos(carry["logits"], i, s, jnp.finfo(jnp.float32).min)
        token = _choose(logits, jax.random.fold_in(rng, i), s)
        token = jnp.where(done, s.pad_id, token)
        out = out.at[:, i].set(token)
        done = done | (token == eos)
        return i + 1, step(carry, token, i), out, done

    out = jnp.full((b, s.max_new_tokens), s.pad_id, jnp.int32)
    _, _, out, _ = jax.lax.while_loop(cond, body, (0, carry, out, jnp.zeros(b, bool)))
    return {"tokens": out}


def _beam(step, start, extra, b, s: Settings):
    k, n, v = s.num_beams, s.max_new_tokens, start["logits"].shape[-1]
    neg = jnp.float32(-1e30)  # finite: sums of it stay comparable, unlike -inf - -inf
    rep = functools.partial(jnp.repeat, repeats=k, axis=0)  # [B, ...] -> [B*K, ...]
    carry = jax.tree.map(rep, {**start, "extra": extra})

    def norm(score, length):
        return score / jnp.float32(length) ** s.length_penalty

    def body(state):
        i, carry, run_tok, run_score, fin_tok, fin_score, done = state
        logp = _forbid_early_eos(jax.nn.log_softmax(carry["logits"]), i, s, neg)
        logp = logp.reshape(b, k, v)
        cand = (run_score[:, :, None] + logp).reshape(b, k * v)
        top_score, top_idx = jax.lax.top_k(cand, 2 * k)           # [B, 2K], best first
        origin, token = top_idx // v, (top_idx % v).astype(jnp.int32)
        seqs = jnp.take_along_axis(run_tok, origin[:, :, None], axis=1).at[:, :, i].set(token)
        is_eos = token == s.eos_id
        # Finished: EOS among the first K candidates, merged with the K best so far.
        closes = is_eos & (jnp.arange(2 * k) < k)[None] & ~done[:, None]
        new_fin = jnp.where(closes, norm(top_score, i + 1), neg)
        all_score = jnp.concatenate([fin_score, new_fin], axis=1)
        all_tok = jnp.concatenate([fin_tok, seqs], axis=1)
        fin_score, best = jax.lax.top_k(all_score, k)
        fin_tok = jnp.take_along_axis(all_tok, best[:, :, None], axis=1)
        # Running: the K best non-EOS continuations.
        run_score, pick = jax.lax.top_k(jnp.where(is_eos, neg, top_score), k)
        run_tok = jnp.take_along_axis(seqs, pick[:, :, None], axis=1)
        parent = jnp.take_along_axis(origin, pick, axis=1)          # [B, K] beam of origin
        rows = (jnp.arange(b)[:, None] * k + parent).reshape(-1)
        carry = {**carry, "cache": jax.tree.map(lambda x: x[rows], carry["cache"])}
        new_tokens = jnp.take_along_axis(token, pick, axis=1).reshape(-1)
        carry = step(carry, new_tokens, i)
        full = (fin_score > neg / 2).all(axis=1)
        if s.early_stopping:
            done = done | full
        else:
            done = done | (full & (norm(run_score[:, 0], i + 1) <= fin_score[:, -1]))
        return i + 1, carry, run_tok, run_score, fin_tok, fin_score, done

    def cond(state):
        return (state[0] < n) & ~state[-1].all()

    run_tok = jnp.full((b, k, n), s.pad_id, jnp.int32)
    # Only beam 0 starts alive, so the first step expands one hypothesis, not K copies.
    run_score = jnp.where(jnp.arange(k)[None] == 0, 0.0, neg).repeat(b, axis=0)
    fin_tok, fin_score = jnp.full((b, k, n), s.pad_id, jnp.int32), jnp.full((b, k), neg)
    state = (0, carry, run_tok, run_score, fin_tok, fin_score, jnp.zeros(b, bool))
    i, _, run_tok, run_score, fin_tok, fin_score, done = jax.lax.while_loop(cond, body, state)
    # Rows still open: their running beams become hypotheses at the final length.
    open_score = jnp.where(done[:, None] | (run_score <= neg / 2), neg, norm(run_score, i))
    all_score = jnp.concatenate([fin_score, open_score], axis=1)
    all_tok = jnp.concatenate([fin_tok, run_tok], axis=1)
    best = jnp.argmax(all_score, axis=1)
    tokens = jnp.take_along_axis(all_tok, best[:, None, None], axis=1)[:, 0]
    return {"tokens": tokens, "scores": jnp.take_along_axis(all_score, best[:, None], 1)[:, 0]}


def evaluate_seq2seq(model, ds, *, metric: str | None = None, max_new_tokens: int | None = None,
                     max_examples: int | None = None, batch_size: int | None = None,
                     **decoding) -> dict[str, float]:
    """Decode a seq2seq dataset's eval sources and score them against its references.

    ``metric`` "rouge" (ROUGE-1/2/L, summarization) or "bleu" (translation; the default for
    ``wmt*`` datasets); ``decoding`` are :func:`generate` settings (default greedy).
    Every process decodes all eval rows (no collective needed; cost scales with the split).
    """
    from bnn_jax.analysis import text_metrics

    metric = metric or ("bleu" if ds.name.startswith("wmt") else "rouge")
    if metric not in ("rouge", "bleu"):
        raise ValueError(f"metric must be 'rouge' or 'bleu', got {metric!r}")
    refs = ds.eval_texts["references"]
    n = len(refs) if max_examples is None else min(max_examples, len(refs))
    tok, arrays = ds.tokenizer, ds.eval
    max_new = max_new_tokens or arrays["target_ids"].shape[1]
    start = getattr(ds, "decoder_start_id", None)
    start = tok.eos_id if start is None else start
    size = batch_size or ds.eval_batch_size
    predictions = []
    for lo in range(0, n, size):
        rows = np.arange(lo, min(lo + size, n))
        out = generate(model, arrays["input_ids"][rows], arrays["attention_mask"][rows],
                       max_new_tokens=max_new, eos_id=tok.eos_id,
                       pad_id=tok.pad_id if tok.pad_id is not None else 0,
                       decoder_start_id=start, **decoding)
        predictions += [tok.decode(_before_eos(r, tok.eos_id)) for r in np.asarray(out["tokens"])]
    if metric == "bleu":
        return {"bleu": text_metrics.bleu(predictions, refs[:n])}
    return text_metrics.rouge(predictions, refs[:n])


def _before_eos(row, eos_id):
    hits = np.flatnonzero(row == eos_id)
    return row[:hits[0]] if len(hits) else row

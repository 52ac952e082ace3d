"""BiPFT (Xing et al., AAAI 2024): elastic binarizers and low-rank binarization-residual estimators.

Follows Xingrun-Xing/BiPFT ``binary_pretraining/bipft.py`` and ``utils_quant.py`` (commit
63ec0a0), whose quantizers come from Meta's BiT:

* weights (``BwnQuantizer``): ``m·sign(W − e)``, ``m = ||W||₁/numel`` and ``e = mean(W)`` per
  tensor; the word embedding uses a per-row ``m`` with the global ``e``; identity STE;
* linear inputs: learned per-feature shift ``x + b`` (init 0), then the signed elastic binarizer
  ``α·sign(x)`` with learned scalar α, first-call ``α = 2·mean|x|``;
* attention probabilities: the unsigned elastic binarizer ``α·clip(round(P/α), 0, 1)``,
  first-call ``α = 4·mean|P|``;
* attention scores ``Q_b K_bᵀ`` plus the rank-1 estimates of the three residual terms,
  ``q_m(X)k_p(X)ᵀ + q_p(X)k_m(X)ᵀ + q_p(X)k_p(X)ᵀ``, and a value residual ``A_b·v_p(X)``;
  each estimator is a ``Linear(hidden, 1)`` with bias on the layer input X, shared by all heads.

The elastic binarizers are TBT's (:func:`bnn_jax.quant.tbt.elastic_quantize`): α is floored at
1e-5 in the forward only (``utils_quant.py`` lines 50-54, 115-119) and its gradient is still
returned below the floor (lines 77-83, 141-144).

⚠ The released fine-tuning config turns the residual estimators off (``improve_kqv=False``)
while pretraining always uses them: pass ``estimators=None`` for the former.
``sign(0) = 0`` (``torch.sign``); ``sign_zero=1`` selects +1 (truly binary, packable).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bnn_jax.quant.bibert import additive_mask
from bnn_jax.quant.core import SIGN_ZERO, exact_div, identity_ste, mean, sign_of
from bnn_jax.quant.registry import (check, check_choice, check_sign_zero, register)
from bnn_jax.quant.tbt import elastic_init, elastic_quantize

ESTIMATORS = ("q_p", "k_p", "q_m", "k_m", "v_p")


def _bwn_forward(w, layerwise, sign_zero):
    e = mean(w)
    if layerwise:
        m = exact_div(jnp.sum(jnp.abs(w)), float(w.size))
    else:
        # Row-wise m (one per leading-axis row, e.g. a vocabulary entry), global mean e.
        m = exact_div(jnp.sum(jnp.abs(w), axis=tuple(range(1, w.ndim)), keepdims=True),
                      float(w[0].size))
    return sign_of(sign_zero)(w - e) * m


_BWN = {(layerwise, z): identity_ste(lambda w, lw=layerwise, sz=z: _bwn_forward(w, lw, sz))
        for layerwise in (True, False) for z in SIGN_ZERO}


def _check_weight(layerwise=True, sign_zero=0):
    check_choice("layerwise", layerwise, (True, False))
    check_sign_zero(sign_zero)



@register("bipft_weight", validate=_check_weight,
          paper="BiPFT: Binary Pre-trained Foundation Transformer (Xing et al., AAAI 2024)",
          formula="m·sign(W − mean W), sign(0)=0 (sign_zero=1: +1), m = ||W||₁/numel per "
                  "tensor (embedding: per row); identity STE",
          result="GLUE: +15.4 points average over the task-specific binary baseline "
                 "(BERT-base W1A1) [ABS/README]")
def bipft_weight(x, *, layerwise=True, sign_zero=0):
    """BWN weight binarizer of BiPFT/BiT; ``layerwise=False`` is the embedding-table rule
    (one m per row of axis 0, e.g. ``[vocab, hidden]``)."""
    return _BWN[(layerwise, sign_zero)](x)


def _act_init(x, sign_zero=0):
    shift = jnp.zeros((x.shape[-1],), x.dtype)
    return {"alpha": elastic_init(x + shift, bits=1, signed=True), "shift": shift}


@register("bipft_act", init=_act_init, validate=check_sign_zero,
          paper="BiPFT: Binary Pre-trained Foundation Transformer (Xing et al., AAAI 2024)",
          formula="α·sign(x + b), sign(0)=0 (sign_zero=1: +1), learned scalar α "
                  "(α₀ = 2·mean|x|) and per-feature b (b₀ = 0); g·1[|x+b| ≤ α], "
                  "dα = Σ g·sign(x+b)/√N; α floored at 1e-5 in the forward only "
                  "(utils_quant.py l. 50-83)",
          result="GLUE: +15.4 points average over the task-specific binary baseline "
                 "(BERT-base W1A1) [ABS/README]")
def bipft_act(x, *, alpha, shift, sign_zero=0):
    """BiPFT linear-input binarizer: learnable shift (``LearnableBias``) then elastic sign."""
    return elastic_quantize(x + shift, alpha, bits=1, signed=True, sign_zero=sign_zero)


@register("bipft_attn_probs", init=lambda p: {"alpha": elastic_init(p, bits=1, signed=False)},
          paper="BiPFT: Binary Pre-trained Foundation Transformer (Xing et al., AAAI 2024)",
          formula="α·clip(round(P/α), 0, 1), learned α (α₀ = 4·mean|P|); g·1[0 ≤ P/α ≤ 1], "
                  "dα LSQ with scale 1/√N",
          result="GLUE: +15.4 points average over the task-specific binary baseline "
                 "(BERT-base W1A1) [ABS/README]")
def bipft_attn_probs(x, *, alpha):
    """Unsigned elastic binarizer of the attention probabilities (threshold α/2)."""
    return elastic_quantize(x, alpha, bits=1, signed=False)


def _project(x, p):
    kernel = jnp.asarray(p["kernel"]).reshape(-1, 1)
    return x @ kernel + jnp.asarray(p["bias"]).reshape(())


def init_estimators(key: jax.Array, hidden: int, dtype=jnp.float32) -> dict:
    """Parameters of the five ``Linear(hidden, 1)`` estimators (PyTorch's default uniform init)."""
    bound = 1.0 / hidden ** 0.5
    keys = jax.random.split(key, 2 * len(ESTIMATORS))
    return {name: {"kernel": jax.random.uniform(keys[2 * i], (hidden,), dtype, -bound, bound),
                   "bias": jax.random.uniform(keys[2 * i + 1], (), dtype, -bound, bound)}
            for i, name in enumerate(ESTIMATORS)}


def low_rank_residuals(x, estimators):
    """Rank-1 estimates from the layer input ``x [B, N, D]``: the attention-score residual
    ``q_m k_pᵀ + q_p k_mᵀ + q_p k_pᵀ`` as ``[B, 1, N, N]`` and the value residual ``v_p(x)`` as
    ``[B, 1, N, 1]`` (both broadcast over heads)."""
    missing = sorted(set(ESTIMATORS) - set(estimators))
    check(not missing, f"estimators is missing {missing}; expected keys {list(ESTIMATORS)}")
    q_p, k_p = _project(x, estimators["q_p"]), _project(x, estimators["k_p"])
    q_m, k_m = _project(x, estimators["q_m"]), _project(x, estimators["k_m"])
    outer = lambda a, b: jnp.einsum("bqi,bki->bqk", a, b)
    scores = (outer(q_m, k_p) + outer(q_p, k_m)) + outer(q_p, k_p)
    value = _project(x, estimators["v_p"])
    return scores[:, None], value[:, None]


def bipft_attention(q, k, v, x=None, *, q_alpha, k_alpha, v_alpha, attn_alpha,
                    estimators=None, mask=None, sign_zero=0):
    """BiPFT binary self-attention from real Q, K, V ``[B, H, N, d]`` and layer input ``x``.

    ``S = (Q_b K_bᵀ + R(x))/√d + mask``, ``A_b = binarize(softmax(S))``,
    ``context = A_b V_b + A_b v_p(x)``; ``R`` and ``v_p`` only when ``estimators`` is given.
    ``mask`` is additive (0 / −10000) or boolean (True = keep). Returns ``(context, A_b)``;
    attention dropout and head masks are the caller's. ``sign_zero``: sign of Q, K, V at 0.
    """
    qb = elastic_quantize(q, q_alpha, bits=1, signed=True, sign_zero=sign_zero)
    kb = elastic_quantize(k, k_alpha, bits=1, signed=True, sign_zero=sign_zero)
    vb = elastic_quantize(v, v_alpha, bits=1, signed=True, sign_zero=sign_zero)
    scores = jnp.einsum("bhqd,bhkd->bhqk", qb, kb)
    value_residual = None
    if estimators is not None:
        check(x is not None, "bipft_attention needs the layer input x when estimators are given")
        score_residual, value_residual = low_rank_residuals(x, estimators)
        scores = scores + score_residual
    scores = exact_div(scores, float(q.shape[-1]) ** 0.5)
    if mask is not None:
        scores = scores + additive_mask(mask, scores.dtype)
    probs = jax.nn.softmax(scores, axis=-1)
    attention = elastic_quantize(probs, attn_alpha, bits=1, signed=False)
    context = jnp.einsum("bhqk,bhkd->bhqd", attention, vb)
    if value_residual is not None:
        context = context + jnp.einsum("bhqk,bhkd->bhqd", attention, value_residual)
    return context, attention


def bipft_attention_init(q, k, v, x=None, *, estimators=None, mask=None,
                         sign_zero=0) -> dict:
    """First-call alphas of :func:`bipft_attention`, in the reference's order (Q, K, V from
    their inputs; the attention alpha from the probabilities those binarized Q, K give)."""
    alphas = {"q_alpha": elastic_init(q, bits=1, signed=True),
              "k_alpha": elastic_init(k, bits=1, signed=True),
              "v_alpha": elastic_init(v, bits=1, signed=True)}
    qb = elastic_quantize(q, alphas["q_alpha"], bits=1, signed=True, sign_zero=sign_zero)
    kb = elastic_quantize(k, alphas["k_alpha"], bits=1, signed=True, sign_zero=sign_zero)
    scores = jnp.einsum("bhqd,bhkd->bhqk", qb, kb)
    if estimators is not None:
        scores = scores + low_rank_residuals(x, estimators)[0]
    scores = exact_div(scores, float(q.shape[-1]) ** 0.5)
    if mask is not None:
        scores = scores + additive_mask(mask, scores.dtype)
    alphas["attn_alpha"] = elastic_init(jax.nn.softmax(scores, axis=-1), bits=1, signed=False)
    return alphas

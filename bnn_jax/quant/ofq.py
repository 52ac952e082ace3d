"""OFQ: oscillation-free quantization for low-bit ViTs (Liu, Liu, Cheng; ICML 2023; nbasyl/OFQ).

Three pieces, each exact to the reference: StatsQ weights (a statistics-based, non-learned mid-rise
quantizer with an identity STE), Confidence-Guided Annealing (after the main QAT, only weights
within ``boundary_range`` of a rounding boundary keep training), and the query-key
reparameterization (quantize the per-head product ``W_q,h W_k,h^T`` instead of ``W_q`` and ``W_k``).
Activations use LSQ (:mod:`bnn_jax.quant.lsq`): OFQ's linear inputs, Q, K and the attention
probabilities have one step per token (``granularity="token"``, its ``LsqQuantizer``), V one per
channel (``granularity="channel"``, its ``LsqQuantizer4v``). Weight statistics are per output
channel (the last axis, Flax layout).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bnn_jax.quant.core import identity_ste, mean
from bnn_jax.quant.lsq import _check_lsq, _lsq_init, lsq
from bnn_jax.quant.registry import check_choice, check_int_range, check_positive, register

#: The clip's upper edge ``clip_val/2 - 1e-6`` in float32 (keeps 1.0 in the top level).
_UPPER = np.float32(np.float32(1.0) - np.float32(1e-6))


def _normalized(w, axes):
    s = jax.lax.stop_gradient(2.0 * mean(jnp.abs(w), axis=axes, keepdims=True))
    return s, jnp.clip(w / s, -1.0, _UPPER)


def _row_axes(w, layout):
    return (w.ndim - 1,) if layout == "torch" else tuple(range(w.ndim - 1))


def _statsq_forward(w, bits, axes):
    s, c = _normalized(w, axes)
    n = float(2 ** (bits - 1))
    # Dividing by the power of two n is exact, so the XLA reciprocal rewrite cannot change it.
    return s * ((jnp.round(c * n - 0.5) + 0.5) / n)


@functools.lru_cache(maxsize=None)
def _statsq_ste(bits, axes):
    # Identity STE without a clipping mask: the reference's sg(W_q - W) + W with an exact
    # forward. One custom_vjp per (bits, axes), so repeated calls do not retrace.
    return identity_ste(lambda w: _statsq_forward(w, bits, axes))


def _statsq(w, bits, axes):
    return _statsq_ste(bits, tuple(axes))(w)


@register("statsq", validate=lambda bits=2: check_int_range("bits", bits, 1, 16),
          bits=lambda bits=2: bits,
          paper="OFQ (Liu, Liu, Cheng; ICML 2023), StatsQ weights",
          formula="s = sg(2·mean|W_c|) per output channel; w~ = clip(W/s, −1, 1 − 1e-6); "
                  "s·(round(w~·n − ½) + ½)/n, n = 2^(b−1) (mid-rise levels ±(k+½)s/n); "
                  "identity STE",
          result="ImageNet DeiT-T / DeiT-S / Swin-T W2A2 top-1 64.33 / 75.72 / 78.52 [README]")
def statsq(x, *, bits=2):
    """StatsQ: ``2^b`` mid-rise levels scaled by twice the per-channel mean|W|, identity STE."""
    return _statsq(x, bits, tuple(range(x.ndim - 1)))


def _ofq_lsq_init(x, *, bits=2, signed=True, granularity="token", **kw):
    # The biases start at 0 (OFQ's LearnableBias), so the step sees the raw input.
    zeros = jnp.zeros((x.shape[-1],), jnp.result_type(x))
    return {**_lsq_init(x, bits=bits, signed=signed, granularity=granularity, **kw),
            "bias_before": zeros, "bias_after": zeros}


def _check_ofq_lsq(bits=2, signed=True, boundary="inclusive", granularity="token", **_):
    _check_lsq(bits, signed, boundary, granularity)


@register("ofq_lsq", init=_ofq_lsq_init, validate=_check_ofq_lsq,
          bits=lambda bits=2, **_: bits, kind="quantizer",
          paper="OFQ (Liu, Liu, Cheng; ICML 2023), LSQ activations between learned biases",
          formula="LSQ(x + b_before) + b_after, b per channel (last axis, init 0); the LSQ step "
                  "per token (granularity='token', OFQ's LsqQuantizer) or per channel "
                  "('channel', LsqQuantizer4v); OFQ qlinear.py LSQ_input / QLinear.forward",
          result="ImageNet DeiT-T / DeiT-S / Swin-T W2A2 top-1 64.33 / 75.72 / 78.52 [README]")
def ofq_lsq(x, *, step, bias_before, bias_after, bits=2, signed=True, boundary="inclusive",
            granularity="token"):
    """OFQ's activation quantizer: learned bias, LSQ (per-token step by default), learned bias.

    As ``LSQ_input``, the input path of ``QLinear`` and the V path of
    ``QAttention_qkreparam`` (``move_b4`` -> LSQ -> ``move_aft``); the biases are per
    channel (last axis).
    """
    q = lsq(x + bias_before, step=step, bits=bits, signed=signed, boundary=boundary,
            granularity=granularity)
    return q + bias_after


def cga_mask(w, *, bits=2, boundary_range=0.005, active=True, layout="flax"):
    """Confidence-Guided Annealing: 1 for weights that keep training, 0 for frozen ones.

    A weight trains only if ``b = clip(W/s, -1, 1 - 1e-6)·n - 1/2`` lies within
    ``boundary_range`` of a rounding boundary ``i + 1/2`` (edges included), where, as in OFQ's
    ``freeze_outside_boundary_weight_idx``, ``i`` runs over ``min(round b) .. max(round b) - 1``
    of the whole tensor. ``active`` (e.g. :func:`bnn_jax.quant.schedules.cga_active`) may be
    traced; when false every weight trains. ``layout="flax"`` takes StatsQ's scale over all
    axes but the last (a Flax kernel); ``layout="torch"`` over the last axis (a torch-layout
    weight, or the rows of a QKR matrix).
    """
    check_int_range("bits", bits, 1, 16)
    check_positive("boundary_range", boundary_range)
    check_choice("layout", layout, ("flax", "torch"))
    _, c = _normalized(w, _row_axes(w, layout))
    n = float(2 ** (bits - 1))
    b = c * n - 0.5
    r = jnp.round(b)
    lo, hi = jnp.min(r), jnp.max(r)
    upper, lower = np.float32(0.5 + boundary_range), np.float32(0.5 - boundary_range)
    near = jnp.zeros(w.shape, bool)
    # round() is half-to-even, so round(b) can reach -n - 1 when n = 1.
    for i in range(-int(n) - 1, int(n) + 1):
        d = b - np.float32(i)
        near = near | ((i >= lo) & (i < hi) & (d <= upper) & (d >= lower))
    return jnp.where(active, near.astype(w.dtype), jnp.ones_like(w))


def cga_apply(grad, mask):
    """Zero the gradient of frozen weights (OFQ's ``grad * freeze * 0 + grad * (1 - freeze)``)."""
    return grad * mask


def cga_restore(new_w, old_w, mask):
    """Put frozen weights back after the optimizer step, as OFQ does, so momentum and weight
    decay cannot move them: ``mask·new + (1 - mask)·old``."""
    return mask * new_w + (1.0 - mask) * old_w


def qk_reparam_weight(w_q, w_k, *, num_heads):
    """Per-head ``W_qk,h = W_q,h W_k,h^T`` of shape ``(H, C, C)`` from Flax kernels ``(C, H·d)``.

    ``x W_qk,h x'^T`` equals head h's unscaled logits ``q·k``. Rows index the query input
    channel, columns the key input channel (OFQ's ``W_q,h^T W_k,h`` in torch layout).
    """
    c, hd = w_q.shape
    d = hd // num_heads
    wq = w_q.reshape(c, num_heads, d)
    wk = w_k.reshape(c, num_heads, d)
    return jnp.einsum("chd,ehd->hce", wq, wk)


def qk_reparam(w_q, w_k, *, num_heads, bits=2):
    """OFQ's query-key reparameterization: StatsQ of ``W_qk,h`` per row (over the key axis).

    It also stands for the reference's CGA-phase quantizer
    (``StatsQuantizer_specific_4_qkreparam_cga``, ``statsq.py`` lines 164-193), whose
    freeze of near-certain entries is undone by the detach at line 191: value and gradient
    are the same.
    """
    check_int_range("bits", bits, 1, 16)
    return _statsq(qk_reparam_weight(w_q, w_k, num_heads=num_heads), bits, (2,))


def qk_reparam_logits(x, w_qk, *, t_quant=None):
    """Unscaled attention logits ``(B, H, N, M)`` from tokens ``x (B, N, C)`` and ``W_qk``.

    ``T = W_qk,h x^T`` (``(B, H, C, M)``) is what OFQ quantizes with LSQ (plus learned biases);
    pass that as ``t_quant``. Multiply by ``d^-0.5`` in the layer.
    """
    t = jnp.einsum("hcd,bmd->bhcm", w_qk, x)
    if t_quant is not None:
        t = t_quant(t)
    return jnp.einsum("bnc,bhcm->bhnm", x, t)

"""EcoFormer's binary hashing and linear attention (Liu, Pan, He, Cai, Zhuang; NeurIPS 2022).

Pure functions of the official code (github.com/ziplab/EcoFormer at a277f9e):
``pvt/hashing/ksh.py`` (``KernelSH``: kernel features, the greedy bit-by-bit solve of the hash
projection), ``pvt/hashing/utils.py`` (``square_dist``, ``BinaryQuantizer``) and
``pvt/performer.py`` (``EcoformerFastAttention.forward``: the similarity targets;
``linear_attention_bias``). Shapes: tokens ``x [B, H, N, d]`` (L2-normalized queries = keys),
anchors ``[H, m, d]``, kernel means ``mvec [H, m]``, hash projection ``proj [H, b, m]``.

One deliberate change: the codes use the framework's ``sign(0) = +1`` (``bnn_ste`` with the
exclusive boundary) where ``torch.sign`` gives 0; a hash value of exactly 0 has probability 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bnn_jax.quant.classic import bnn_ste
from bnn_jax.quant.registry import check_choice

BIAS_FORMS = ("code", "kernel")


def l2_normalize(x: jax.Array) -> jax.Array:
    """``x / ||x||`` over the last axis (performer.py line 302).

    The norm is ``sqrt(Σx² + 1e-24)``: equal to the reference's in float32 for any token that is
    not all zeros, where the reference's ``0/0`` is NaN (blank image patches do that when the
    biases are still 0) and here the token stays 0, with a finite gradient.
    """
    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-24)


def square_dist(x: jax.Array, anchors: jax.Array) -> jax.Array:
    """``||x_n - a_j||²``: ``[B, H, N, d]`` x ``[H, m, d]`` -> ``[B, H, N, m]`` (utils.py 20-24)."""
    return jnp.sum((x[..., :, None, :] - anchors[None, :, None, :, :]) ** 2, axis=-1)


def gaussian_features(x: jax.Array, anchors: jax.Array) -> jax.Array:
    """``exp(-||x - a_j||² / 2σ)`` with σ the mean squared distance of each (example, head) over
    its tokens and anchors; σ is recomputed on every call and differentiated (ksh.py 265-267)."""
    d = square_dist(x, anchors)
    sigma = jnp.mean(d, axis=(-2, -1), keepdims=True)
    return jnp.exp(-d / (2 * sigma))


def kernel_features(x: jax.Array, anchors: jax.Array, mvec: jax.Array) -> jax.Array:
    """The centred kernel features ``φ(x) = k(x) - m`` of KSH, ``[B, H, N, m]``."""
    return gaussian_features(x, anchors) - mvec[None, :, None, :]


def hash_codes(x: jax.Array, anchors: jax.Array, mvec: jax.Array, proj: jax.Array) -> jax.Array:
    """``h(x) = sign(A φ(x)) ∈ {±1}^b`` per head, ``[B, H, N, b]``.

    ``A`` is not trained by the gradient (``self.A.detach()``, ksh.py line 269); the sign's
    clipped straight-through gradient (zero where |Aφ| >= 1, utils.py 43-56) flows into
    ``φ(x)`` and so into the query/key projection.
    """
    y = jnp.einsum("bhnm,hkm->bhnk", kernel_features(x, anchors, mvec),
                   jax.lax.stop_gradient(proj))
    return bnn_ste(y, boundary="exclusive")


def similarity_targets(x: jax.Array, topk: int) -> jax.Array:
    """KSH's supervision ``S [B, H, N, N]``: +1 for each token's ``topk`` most similar tokens by
    ``x xᵀ``, -1 for its ``topk`` least similar (written second, so it wins an overlap), else 0
    (performer.py 306-315)."""
    sim = jnp.einsum("bhnd,bhmd->bhnm", x, x)
    _, top = jax.lax.top_k(sim, topk)
    _, bottom = jax.lax.top_k(-sim, topk)
    s = jnp.zeros_like(sim)
    s = jnp.put_along_axis(s, top, 1.0, axis=-1, inplace=False)
    return jnp.put_along_axis(s, bottom, -1.0, axis=-1, inplace=False)


def ksh_loss(y: jax.Array, s: jax.Array, num_bits: int) -> jax.Array:
    """``mean_{B,H} -yᵀ S y / (N b)`` for codes (or relaxed codes) ``y [B, H, N]``
    (``compute_loss``, ksh.py 40-45)."""
    n = y.shape[-1]
    return jnp.mean(-jnp.einsum("bhn,bhnl,bhl->bh", y, s, y) / (n * num_bits))


def ksh_fit(x: jax.Array, anchors: jax.Array, targets: jax.Array, proj: jax.Array, *,
            learning_rate: float = 5e-4, momentum: float = 0.9, iterations: int = 100):
    """KSH's greedy solve of the hash projection, bit by bit (``train_hashing_weight_woeig``,
    ksh.py 102-151). Returns ``(proj, mvec, finite)``.

    ``mvec`` is the mean kernel feature over the batch and its tokens. With the residual
    ``R = b·S``, each bit ``r`` starts from the current row ``a = A[:, r]`` (all heads together)
    and takes ``iterations`` steps of SGD with Nesterov momentum on the relaxed loss
    (``sign -> 2·sigmoid - 1``); the new row is kept only when its binary codes
    (``Kφa > 0 -> +1, else -1``) give a lower loss than the old row's (one comparison over all
    examples and heads); then ``R <- R - y yᵀ``. ``finite`` is False when the optimization
    produced a NaN (the reference exits there).
    """
    num_bits = proj.shape[1]
    feats = gaussian_features(x, anchors)
    mvec = jnp.mean(feats, axis=(0, 2))
    k = feats - mvec[None, :, None, :]

    def relaxed(a, r):
        return ksh_loss(2 * jax.nn.sigmoid(jnp.einsum("bhnm,hm->bhn", k, a)) - 1, r, num_bits)

    def binary(a):
        return jnp.where(jnp.einsum("bhnm,hm->bhn", k, a) > 0, 1.0, -1.0).astype(k.dtype)

    def sgd_step(_, carry):
        a, buf, r = carry
        g = jax.grad(relaxed)(a, r)
        buf = momentum * buf + g  # torch.optim.SGD(nesterov=True), dampening 0
        return a - learning_rate * (g + momentum * buf), buf, r

    def solve_bit(r, a0):
        a, _, _ = jax.lax.fori_loop(0, iterations, sgd_step, (a0, jnp.zeros_like(a0), r))
        y_old, y_new = binary(a0), binary(a)
        better = ksh_loss(y_new, r, num_bits) < ksh_loss(y_old, r, num_bits)
        y = jnp.where(better, y_new, y_old)
        r = r - y[..., :, None] * y[..., None, :]
        return r, (jnp.where(better, a, a0), jnp.all(jnp.isfinite(a)))

    _, (rows, finite) = jax.lax.scan(solve_bit, targets * num_bits, jnp.swapaxes(proj, 0, 1))
    return jnp.swapaxes(rows, 0, 1), mvec, jnp.all(finite)


def hash_attention(h: jax.Array, v: jax.Array, *, bias_form: str = "code") -> jax.Array:
    """EcoFormer's linear attention of binary codes ``h [B, H, N, b]`` over ``v [B, H, N, e]``,
    in O(N): ``out_i = (h_i·Σ_j h_j v_jᵀ + c·t_i) / (h_i·Σ_j h_j + N c)`` with ``c = b + 1``.

    ``bias_form="code"``: ``t_i = v_i`` as ``linear_attention_bias`` computes it
    (performer.py 133-150: the bias adds ``c·v_i`` to the numerator but ``N·c`` to the
    denominator); ``"kernel"``: ``t_i = Σ_j v_j``, the attention of the shifted kernel
    ``h_iᵀh_j + c > 0`` (methods.md's statement of the formula).
    """
    check_choice("bias_form", bias_form, BIAS_FORMS)
    n, c = h.shape[-2], h.shape[-1] + 1
    denom = jnp.einsum("bhnk,bhk->bhn", h, jnp.sum(h, axis=-2)) + n * c
    context = jnp.einsum("bhnk,bhne->bhke", h, v)
    top = v if bias_form == "code" else jnp.sum(v, axis=-2, keepdims=True)
    return (jnp.einsum("bhke,bhnk->bhne", context, h) + c * top) / denom[..., None]

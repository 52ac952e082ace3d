"""OFQ's quantized attention and activation quantizer against NumPy re-statements of the
reference (nbasyl/OFQ ``modules/attention.py::QAttention_qkreparam``, ``modules/qlinear.py``,
``quantizer/lsq.py``), written here independently of the code under test."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bnn_jax.nn.attention import QKReparamAttention
from bnn_jax.quant.registry import get

B, N, C, H, BITS = 2, 3, 8, 2, 2
DH = C // H
RNG = np.random.default_rng(11)
X = RNG.standard_normal((B, N, C)).astype(np.float32)
PAD = np.ones((B, 1, 1, N), bool)
PAD[1, ..., -1] = False


def _lsq(x, s, qn, qp):
    """LSQ forward: s·round(clip(x/s, -Q_N, Q_P))."""
    return np.round(np.clip(x / s, -qn, qp)) * s


def _statsq(w, axis):
    s = 2 * np.abs(w).mean(axis, keepdims=True)
    n = 2.0 ** (BITS - 1)
    return s * (np.round(np.clip(w / s, -1, np.float32(1 - 1e-6)) * n - 0.5) + 0.5) / n


def _softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


SIGNED = (2 ** (BITS - 1), 2 ** (BITS - 1) - 1)
UNSIGNED = (0, 2 ** BITS - 1)


def _randomize(m):
    """Random steps and biases (the first-call values would leave every bias at 0)."""
    for path, var in nnx.to_flat_state(nnx.state(m, nnx.Param)):
        name = str(path[-1])
        if "bias_before" in name or "bias_after" in name:
            var.set_value(jnp.asarray(0.3 * RNG.standard_normal(var.shape), jnp.float32))
        elif name.endswith("step"):
            var.set_value(jnp.asarray(RNG.uniform(0.3, 0.9, var.shape), jnp.float32))


def _p(v):
    return np.asarray(v[...], np.float64)


def _reference(m, x, mask, *, quant_probs=True, quant_out=True):
    """QAttention_qkreparam.forward in NumPy, with the module's parameters."""
    xq = _lsq(x + _p(m.x_quant.bias_before), _p(m.x_quant.step), *SIGNED) \
        + _p(m.x_quant.bias_after)
    # V: StatsQ weight, bias, then move_v_b4 -> LsqQuantizer4v (one step per channel) -> aft.
    v = xq @ _statsq(_p(m.value.kernel), 0) + _p(m.value.bias)
    v = _lsq(v + _p(m.v_quant.bias_before), _p(m.v_quant.step), *SIGNED) \
        + _p(m.v_quant.bias_after)
    v = v.reshape(B, N, H, DH).transpose(0, 2, 1, 3)
    # W_qk = W_q,h^T W_k,h in torch layout, (H·C, C), StatsQ over rows.
    wq = _p(m.query.kernel).T.reshape(H, DH, C)
    wk = _p(m.key.kernel).T.reshape(H, DH, C)
    wqk = _statsq((wq.transpose(0, 2, 1) @ wk).reshape(H * C, C), 1).reshape(H, C, C)
    qkx = np.einsum("hdc,bcn->bhdn", wqk, xq.transpose(0, 2, 1))
    qkx = qkx.transpose(0, 3, 1, 2).reshape(B, N, H * C) + _p(m.t_bias_before)
    qkx = qkx.reshape(B, N * H, C)
    qkx = _lsq(qkx, _p(m.t_quant.step), *SIGNED).reshape(B, N, H * C) + _p(m.t_bias_after)
    qkx = qkx.reshape(B, N, H, C).transpose(0, 2, 3, 1)
    logits = np.einsum("bnc,bhcd->bhnd", xq, qkx) / np.sqrt(DH)
    p = _softmax(np.where(mask, logits, -np.inf))
    if quant_probs:
        p = _lsq(p, _p(m.attn_quant.step), *UNSIGNED)
    ctx = (p @ v).transpose(0, 2, 1, 3).reshape(B, N, C)
    if quant_out:
        ctx = _lsq(ctx + _p(m.out.input_bias_before), _p(m.out.input_step), *SIGNED) \
            + _p(m.out.input_bias_after)
    return ctx @ _statsq(_p(m.out.kernel), 0) + _p(m.out.bias)


def _module(**kw):
    m = QKReparamAttention(H, C, bits=BITS, rngs=nnx.Rngs(2), **kw)
    m(jnp.asarray(X), mask=PAD)  # first call: creates the LSQ steps and biases
    _randomize(m)
    return m


def test_ofq_attention_forward_quantizes_v_per_channel_and_t_per_token_and_head():
    m = _module()
    # Step shapes: per token for x, per (token, head) for T, per channel for V, per query for P.
    assert m.x_quant.step.shape == (N, 1) and m.t_quant.step.shape == (N * H, 1)
    assert m.v_quant.step.shape == (C,) and m.attn_quant.step.shape == (N, 1)
    assert m.t_bias_before.shape == (H * C,) and m.v_quant.bias_after.shape == (C,)
    got = np.asarray(nnx.jit(lambda m, x: m(x, mask=PAD))(m, jnp.asarray(X)))
    np.testing.assert_allclose(got, _reference(m, X.astype(np.float64), PAD), rtol=1e-4,
                               atol=1e-4)


def test_ofq_attention_bias_gradients_match_finite_differences():
    # With the probabilities' and the output projection's quantizers off, the biases after
    # the V and T quantizers enter smoothly: their gradients are the reference's derivatives.
    m = _module(attn_quantizer=None, out_input_quantizer=None)
    dy = RNG.standard_normal((B, N, C))
    g = nnx.grad(lambda m: jnp.sum(m(jnp.asarray(X), mask=PAD) * dy))(m)
    x = X.astype(np.float64)
    for var, grad in ((m.v_quant.bias_after, g.v_quant.bias_after),
                      (m.t_bias_after, g.t_bias_after)):
        base = np.asarray(var[...])
        want = np.zeros(base.shape)
        for i in range(base.size):
            vals = []
            for eps in (1e-3, -1e-3):
                v = base.copy()
                v.flat[i] += eps
                var.set_value(jnp.asarray(v))
                vals.append(np.sum(_reference(m, x, PAD, quant_probs=False, quant_out=False)
                                   * dy))
            var.set_value(jnp.asarray(base))
            want.flat[i] = (vals[0] - vals[1]) / 2e-3
        np.testing.assert_allclose(np.asarray(grad[...]), want, rtol=2e-3, atol=2e-3)
    # The bias after T's quantizer shifts every logit of a query row by the same amount, so
    # the softmax ignores it (its gradient is 0 in the reference too); V's bias is felt.
    assert np.any(np.abs(np.asarray(g.v_quant.bias_after[...])) > 1e-3)


def test_ofq_lsq_values_and_gradients():
    q = get(dict(name="ofq_lsq", bits=3, granularity="token"))
    x = RNG.standard_normal((B, N, C)).astype(np.float32) * 2
    step = RNG.uniform(0.3, 0.8, (N, 1)).astype(np.float32)
    bb, ba = (RNG.standard_normal(C).astype(np.float32) * 0.3 for _ in range(2))
    qn, qp = 4, 3
    v = (x + bb) / step
    np.testing.assert_allclose(q(x, step=step, bias_before=bb, bias_after=ba),
                               _lsq(x + bb, step, qn, qp) + ba, rtol=1e-6, atol=1e-6)
    dy = RNG.standard_normal(x.shape).astype(np.float32)
    gx, gs, gb, ga = jax.grad(lambda *a: jnp.sum(q(a[0], step=a[1], bias_before=a[2],
                                                    bias_after=a[3]) * dy),
                              argnums=(0, 1, 2, 3))(x, step, bb, ba)
    inside = (v >= -qn) & (v <= qp)
    np.testing.assert_allclose(gx, dy * inside, rtol=1e-6)
    np.testing.assert_allclose(gb, (dy * inside).sum((0, 1)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ga, dy.sum((0, 1)), rtol=1e-5, atol=1e-6)
    # d/ds of s·round(clip(v)): round(v) - v inside, the clipped level outside; the step's
    # gradient is scaled by 1/sqrt(B·C·Q_P) (OFQ's per-token s_grad_scale).
    ds = np.where(inside, np.round(v) - v, np.clip(v, -qn, qp))
    want = (dy * ds).sum((0, 2))[:, None] / np.sqrt(B * C * qp)
    np.testing.assert_allclose(gs, want, rtol=1e-4, atol=1e-6)
    # First call: steps from the data, biases zero.
    init = q.init(x)
    np.testing.assert_allclose(init["step"][:, 0], 2 * np.abs(x).mean((0, 2)) / np.sqrt(qp),
                               rtol=1e-6)
    assert not np.any(init["bias_before"]) and init["bias_after"].shape == (C,)

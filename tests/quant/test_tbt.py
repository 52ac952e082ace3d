"""TBT quantizers against a numpy transcription of the reference (utils_quant.py) formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnn_jax.quant as q

RNG = np.random.default_rng(0)
f32 = np.float32


def np_tbt_weight(w, bits, axes):
    alpha = np.mean(np.abs(w), axis=axes, keepdims=True, dtype=np.float64).astype(f32)
    if bits == 1:
        return alpha * np.sign(w / alpha)
    alpha = f32(4 / 3) * alpha
    return alpha * np.round(np.clip(w / alpha, -1, 1))


def weight_cases():
    kernel = RNG.normal(size=(5, 3)).astype(f32)  # Flax Dense [in, out]: rows = last axis
    kernel[1, 2] = 0.0  # sign(0) = 0 in the reference
    emb = RNG.normal(size=(6, 4)).astype(f32)  # embedding table [vocab, features]
    conv = RNG.normal(size=(2, 2, 3, 4)).astype(f32)
    # Boundary row: mean|w| = 0.75 so the ternary alpha is exactly 1 and w/alpha = w;
    # ±0.5 is a rounding tie (-> 0 by half-to-even), 1.5 is clipped to 1.
    edge = np.array([[0.5, -0.5, 1.5, -0.5], [0.25, 1.0, -1.0, -0.75]], f32).T
    return [(kernel, -1, (0,)), (emb, 0, (1,)), (conv, -1, (0, 1, 2)), (edge, -1, (0,)),
            (kernel, None, (0, 1))]


@pytest.mark.parametrize("bits", [1, 2])
@pytest.mark.parametrize("case", range(5))
def test_tbt_weight_forward_and_identity_gradient(bits, case):
    w, channel_axis, axes = weight_cases()[case]
    quant = q.get("tbt_weight", bits=bits, channel_axis=channel_axis)
    y, vjp = jax.vjp(quant, jnp.asarray(w))
    expected = np_tbt_weight(w, bits, axes)
    np.testing.assert_array_equal(np.sign(y), np.sign(expected))
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=0)
    g = RNG.normal(size=w.shape).astype(f32)
    np.testing.assert_array_equal(vjp(jnp.asarray(g))[0], g)  # identity STE, no clipping


def test_tbt_ternary_boundary_values_exact():
    w = weight_cases()[3][0]
    y = np.asarray(q.get("tbt_weight", bits=2)(jnp.asarray(w)))
    np.testing.assert_array_equal(y[:, 0], [0.0, -0.0, 1.0, -0.0])
    assert np.sum(np.abs(y[:, 0]) > 0) == 1


@pytest.mark.parametrize("bits", [1, 2])
def test_tbt_weight_all_zero_row_stays_zero(bits):
    w = RNG.normal(size=(4, 3)).astype(f32)
    w[:, 1] = 0.0
    y = np.asarray(q.tbt_weight(jnp.asarray(w), bits=bits))
    assert np.all(np.isfinite(y)) and np.all(y[:, 1] == 0)
    np.testing.assert_allclose(y[:, [0, 2]], np_tbt_weight(w[:, [0, 2]], bits, (0,)), rtol=1e-6)


def test_tbt_embedding_gets_one_scale_per_token():
    emb = RNG.normal(size=(7, 5)).astype(f32)
    y = np.asarray(q.tbt_weight(jnp.asarray(emb), bits=1, channel_axis=0))
    np.testing.assert_allclose(np.abs(y), np.broadcast_to(
        np.abs(emb).mean(axis=1, keepdims=True), emb.shape), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Elastic activations: forward, dx and dalpha of the reference autograd Functions in numpy
# ---------------------------------------------------------------------------------------------

def np_elastic(x, alpha, g, bits, signed, qp2=2):
    eps = f32(1e-5)
    a = f32(alpha) if alpha > eps else eps
    if signed:
        qn, qp = (-1, 1) if bits in (1, 2) else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    else:
        qn, qp = 0, (qp2 if bits == 2 else 2 ** bits - 1)
    shift = (not signed) and bits >= 2
    m = x.min() if shift else f32(0)
    xin = x - m if shift else x
    if signed and bits == 1:
        y = np.sign(x) * a
    else:
        y = np.clip(np.round(xin / a), qn, qp) * a
        if shift:
            y = y + m
    v = xin / a
    small, big = v < qn, v > qp
    mid = ~small & ~big
    gs = 1.0 / np.sqrt(x.size * qp)
    if signed and bits == 1:
        ga = np.sum(np.sign(x) * g * gs, dtype=np.float64)
    else:
        coef = small * qn + big * qp + mid * (np.round(v) - v)
        ga = np.sum(coef * g * gs, dtype=np.float64)
    # utils_quant.py floors alpha inside forward (lines 42, 110) and backward returns
    # grad_alpha unchanged (lines 72, 137): no zeroing below the floor.
    return y, mid * g, ga


def elastic_inputs(alpha):
    x = RNG.normal(size=(3, 4, 5)).astype(f32)
    edges = np.array([alpha, -alpha, 0.5 * alpha, -0.5 * alpha, 1.5 * alpha, 2 * alpha], f32)
    # Neighbours of 0 would be denormals, which XLA on CPU flushes to zero; 0 itself is tested.
    edges = np.concatenate([edges, np.nextafter(edges, f32(np.inf)),
                            np.nextafter(edges, f32(-np.inf)), [0.0]])
    x.reshape(-1)[: edges.size] = edges
    return x


@pytest.mark.parametrize("bits,signed", [(1, True), (2, True), (1, False), (2, False)])
@pytest.mark.parametrize("alpha", [0.75, 1.3, 1e-6, -0.2])
def test_tbt_act_matches_reference(bits, signed, alpha):
    x = elastic_inputs(max(alpha, 1e-5))
    if not signed and bits == 1:
        x = np.abs(x)  # attention probabilities / post-GELU inputs
    g = RNG.normal(size=x.shape).astype(f32)
    quant = q.get("tbt_act", bits=bits, signed=signed)
    y, vjp = jax.vjp(lambda x, a: quant(x, alpha=a), jnp.asarray(x), jnp.asarray(alpha, f32))
    dx, da = vjp(jnp.asarray(g))
    ey, edx, eda = np_elastic(x, f32(alpha), g, bits, signed)
    np.testing.assert_allclose(y, ey, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(dx, edx)
    np.testing.assert_allclose(da, eda, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bits,signed,factor", [(1, True, 2.0), (2, True, 2.0),
                                                (1, False, 4.0), (2, False, 4.0 / np.sqrt(3))])
def test_tbt_act_first_call_init(bits, signed, factor):
    x = RNG.normal(size=(4, 6)).astype(f32)
    init = q.get("tbt_act", bits=bits, signed=signed).init(jnp.asarray(x))
    assert set(init) == {"alpha"}
    np.testing.assert_allclose(init["alpha"], factor * np.abs(x).mean(), rtol=1e-6)


def test_tbt_act_learned_protocol_and_errors():
    quant = q.get("tbt_act")
    assert quant.learned == ("alpha",)
    with pytest.raises(ValueError, match="bits"):
        q.get("tbt_act", bits=3)
    with pytest.raises(ValueError, match="bits"):
        q.get("tbt_weight", bits=4)
    with pytest.raises(TypeError):
        quant(jnp.ones(3))  # alpha is required on every call


# ---------------------------------------------------------------------------------------------
# Min-max 8-bit
# ---------------------------------------------------------------------------------------------

def np_act8(x, symmetric, clip=2.5, layerwise=True):
    c = f32(clip)
    xc = np.where(x < c, x, c)
    xc = np.where(xc > -c, xc, -c)
    axes = None if layerwise else -1
    if symmetric:
        s = f32(127) / np.max(np.abs(xc), axis=axes, keepdims=True)
        y = np.round(xc * s) / s
    else:
        hi, lo = np.max(xc, axis=axes, keepdims=True), np.min(xc, axis=axes, keepdims=True)
        span = (hi - lo) + f32(1e-8)
        y = (np.round((xc - lo) / span * f32(255)) / f32(255)) * span + lo
    return y, ((x > -c) & (x < c)).astype(f32)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("layerwise", [True, False])
def test_tbt_act8_matches_reference(symmetric, layerwise):
    x = (RNG.normal(size=(3, 8)) * 1.6).astype(f32)
    x[0, :4] = [2.5, -2.5, np.nextafter(f32(2.5), f32(0)), np.nextafter(f32(-2.5), f32(0))]
    x[1, 0] = 3.7
    quant = q.get("tbt_act8", symmetric=symmetric, layerwise=layerwise)
    y, vjp = jax.vjp(quant, jnp.asarray(x))
    ey, mask = np_act8(x, symmetric, layerwise=layerwise)
    np.testing.assert_allclose(y, ey, rtol=2e-6, atol=1e-6)
    g = RNG.normal(size=x.shape).astype(f32)
    np.testing.assert_array_equal(vjp(jnp.asarray(g))[0], g * mask)
    assert mask[0, 0] == 0 and mask[0, 2] == 1  # the clip value itself gets no gradient

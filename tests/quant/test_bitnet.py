"""BitNet b1.58 / Reloaded quantizers against numpy transcriptions of the FAQ and bitlinear code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnn_jax.quant as q

RNG = np.random.default_rng(1)
f32 = np.float32


def np_weight(w, measure="mean", eps=1e-5, eps_rule="clamp"):
    a = np.abs(w)
    if measure == "mean":
        gamma = f32(a.mean(dtype=np.float64))
    else:
        gamma = np.sort(a.reshape(-1))[(a.size - 1) // 2]  # torch.median: lower middle
    if eps_rule == "clamp":
        s = f32(1) / max(gamma, f32(eps))
        return np.clip(np.round(w * s), -1, 1) / s
    return gamma * np.clip(np.round(w / (gamma + f32(eps))), -1, 1)


def np_act(x, numerator, eps=1e-5):
    absmax = np.max(np.abs(x), axis=-1, keepdims=True)
    s = f32(numerator) / np.maximum(absmax, f32(eps))
    return np.clip(np.round(x * s), -128, 127) / s


@pytest.mark.parametrize("shape", [(6, 4), (3, 5, 2), (7,)])
@pytest.mark.parametrize("measure", ["mean", "median"])
@pytest.mark.parametrize("eps_rule", ["clamp", "add"])
def test_bitnet_weight_matches_formula(shape, measure, eps_rule):
    w = RNG.normal(size=shape).astype(f32) * 0.05
    quant = q.get("bitnet_weight", measure=measure, eps_rule=eps_rule)
    y, vjp = jax.vjp(quant, jnp.asarray(w))
    expected = np_weight(w, measure, eps_rule=eps_rule)
    np.testing.assert_array_equal(np.sign(y), np.sign(expected))
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=0)
    assert len(np.unique(np.abs(np.asarray(y))[np.asarray(y) != 0])) == 1  # one scale
    g = RNG.normal(size=shape).astype(f32)
    np.testing.assert_array_equal(vjp(jnp.asarray(g))[0], g)  # identity STE, no clipping


def test_bitnet_weight_boundaries_round_half_to_even():
    # mean|w| = 1 exactly, so w·s = w: ±0.5 round to 0, ±1.5 round to ±2 and clip to ±1.
    w = np.array([0.5, -0.5, 1.5, -1.5, 1.0, -1.0, 0.75, 1.25], f32)
    assert np.abs(w).mean() == 1.0
    y = np.asarray(q.get("bitnet_weight")(jnp.asarray(w)))
    np.testing.assert_array_equal(y, [0, 0, 1, -1, 1, -1, 1, 1])
    nudged = np.array([np.nextafter(f32(0.5), f32(1)), 0.5, 1.5, -1.5, 1.0, -1.0, 0.75, 1.25],
                      f32)
    np.testing.assert_array_equal(np.asarray(q.bitnet_weight(jnp.asarray(nudged)))[:2],
                                  np_weight(nudged)[:2])


def test_bitnet_median_is_torch_lower_median():
    w = np.array([[0.1, -0.4], [0.3, -0.2]], f32)  # |w| sorted 0.1 0.2 0.3 0.4 -> 0.2
    y = np.asarray(q.get("bitnet_weight", measure="median")(jnp.asarray(w)))
    np.testing.assert_allclose(np.abs(y[y != 0]), 0.2, rtol=1e-7)
    np.testing.assert_array_equal(np.sign(y), [[0, -1], [1, -1]])  # 0.1/0.2 = 0.5 -> 0


@pytest.mark.parametrize("variant,numerator", [("b1.58", 127), ("reloaded", 128)])
@pytest.mark.parametrize("shape", [(2, 3, 8), (5, 4)])
def test_bitnet_act_per_token(variant, numerator, shape):
    x = np.clip(RNG.normal(size=shape), -2.9, 2.9).astype(f32)
    x.reshape(-1, shape[-1])[0, :2] = [3.0, -3.0]  # the absmax is reached on both sides
    quant = q.get("bitnet_act", variant=variant)
    y, vjp = jax.vjp(quant, jnp.asarray(x))
    np.testing.assert_allclose(y, np_act(x, numerator), rtol=1e-6, atol=1e-7)
    g = RNG.normal(size=shape).astype(f32)
    np.testing.assert_array_equal(vjp(jnp.asarray(g))[0], g)
    row = np.asarray(y).reshape(-1, shape[-1])[0]
    if variant == "reloaded":  # +absmax -> 128 clipped to 127, -absmax -> -128 kept
        np.testing.assert_allclose(row[:2], [3.0 * 127 / 128, -3.0], rtol=1e-6)
    else:
        np.testing.assert_allclose(row[:2], [3.0, -3.0], rtol=1e-6)


def test_bitnet_act_tokens_are_independent():
    x = RNG.normal(size=(2, 6)).astype(f32)
    x2 = x.copy()
    x2[1] *= 100.0
    y1, y2 = q.bitnet_act(jnp.asarray(x)), q.bitnet_act(jnp.asarray(x2))
    np.testing.assert_array_equal(y1[0], y2[0])


def test_bitnet_fixed_names_and_errors():
    assert q.get("bitnet_weight").bits == 1.58 and q.get("bitnet_act").bits == 8
    with pytest.raises(ValueError, match="measure"):
        q.get("bitnet_weight", measure="max")
    with pytest.raises(ValueError, match="variant"):
        q.get("bitnet_act", variant="v2")

"""AQT uniform quantizer: values and gradients against AQT's formulas re-stated in NumPy
(google/aqt aqt/jax_legacy/jax/primitives.py round_and_clip_to_signed_int,
floor_and_clip_to_unsigned_int, signed_int_bound; quantization.py create_symmetric/positive)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnn_jax import quant

EPS32 = np.finfo(np.float32).eps


def np_signed(x, bits, bound, half_shift):
    if half_shift:
        n = 2.0 ** (bits - 1)
        lim = n - 2.0 ** -7
    else:
        n = 2.0 ** (bits - 1) - 1 if bits > 1 else 0.25
        lim = n
    s = n / (bound + EPS32)
    xs = np.clip(x * s, -lim, lim)
    q = np.floor(xs) + 0.5 if half_shift else np.floor(xs + 0.5)
    grad = (np.abs(x * s) <= lim).astype(np.float32)
    return q / s, grad


def np_unsigned(x, bits, bound):
    s = 2.0 ** bits / (bound + EPS32)
    q = np.clip(np.floor(x * s), 0, 2 ** bits - 1)
    grad = ((x * s >= 0) & (x * s < 2 ** bits)).astype(np.float32)
    return q / s, grad


def _check(q, x, want, dwant):
    y = np.asarray(q(jnp.asarray(x)))
    g = np.asarray(jax.grad(lambda v: jnp.sum(q(v)))(jnp.asarray(x)))
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(g, dwant)


# x avoids the exact rounding/clip boundaries, where float32 and float64 may disagree.
X = (np.random.default_rng(0).standard_normal((4, 6, 5)) * 1.7).astype(np.float32)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_signed_fixed_bound(bits):
    want, dwant = np_signed(X.astype(np.float64), bits, 2.0, False)
    _check(quant.get("aqt", bits=bits, bound=2.0), X, want, dwant)


def test_binary_half_shift_is_pokebnn_quantizer():
    want, dwant = np_signed(X.astype(np.float64), 1, 3.0, True)
    q = quant.get("aqt", bits=1, bound=3.0, half_shift=True)
    _check(q, X, want, dwant)
    assert set(np.unique(np.asarray(q(jnp.asarray(X))))) <= {-1.5, 1.5}


@pytest.mark.parametrize("bits", [4, 8])
def test_unsigned_max_bound(bits):
    x = np.abs(X)
    want, dwant = np_unsigned(x.astype(np.float64), bits, float(np.abs(x).max()))
    _check(quant.get("aqt", bits=bits, signed=False), x, want, dwant)


def test_per_channel_weight_bound_and_mean_of_max():
    w = X.reshape(2, 2, 6, 5)
    b = np.abs(w).max(axis=(0, 1, 2), keepdims=True)
    want, _ = np_signed(w.astype(np.float64), 4, b, False)
    y = quant.get("aqt", bits=4, per_channel=True)(jnp.asarray(w))
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-6, atol=1e-6)
    mom = np.abs(X).reshape(4, -1).max(axis=1).mean()
    want, dwant = np_signed(X.astype(np.float64), 8, mom, False)
    _check(quant.get("aqt", bits=8, bound="mean_of_max"), X, want, dwant)


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="bound must be"):
        quant.get("aqt", bound="min")
    with pytest.raises(ValueError, match="half_shift needs signed"):
        quant.get("aqt", signed=False, half_shift=True)
    with pytest.raises(ValueError, match="bits"):
        quant.get("aqt", bits=0)
    assert quant.get("aqt", bits=4).bits == 4

"""The shared mechanism and conventions: sign(0), inclusive clip gradients, exact division."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnn_jax.quant.core import (clip, clipped_ste, estimator, exact_div, mean, round_half_up,
                                sign, sign0, straight_through)


def test_sign_conventions():
    x = jnp.asarray([-2.0, -0.0, 0.0, 1e-30, -1e-30, 3.0])
    np.testing.assert_array_equal(sign(x), [-1, 1, 1, 1, -1, 1])
    np.testing.assert_array_equal(sign0(x), [-1, 0, 0, 1, -1, 1])
    assert sign(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_rounding_conventions():
    x = jnp.asarray([-1.5, -0.5, 0.5, 1.5, 2.5])
    np.testing.assert_array_equal(jnp.round(x), [-2, -0, 0, 2, 2])  # half to even
    np.testing.assert_array_equal(round_half_up(x), [-1, 0, 1, 2, 3])  # AQT / PokeBNN


def test_clip_gradient_includes_the_boundary():
    x = jnp.asarray([-1.0000001, -1.0, 0.3, 1.0, 1.0000001])
    y, vjp = jax.vjp(lambda v: clip(v, -1.0, 1.0), x)
    np.testing.assert_array_equal(y, np.float32([-1, -1, 0.3, 1, 1]))
    np.testing.assert_array_equal(vjp(jnp.ones(5))[0], [0, 1, 1, 1, 0])


def test_estimator_uses_the_derivative_and_zeroes_aux():
    q = estimator(lambda x, t: jnp.where(x > t, 1.0, 0.0), lambda x, t: jnp.exp(-x * x) * 3)
    x = jnp.asarray(np.random.default_rng(0).standard_normal(9), jnp.float32)
    dx, dt = jax.grad(lambda x, t: jnp.sum(q(x, t) * jnp.arange(9.0)), argnums=(0, 1))(x, 0.2)
    np.testing.assert_allclose(dx, np.arange(9.0) * np.exp(-np.asarray(x) ** 2) * 3, rtol=1e-6)
    assert dt == 0


def test_straight_through_is_exact_forward_detach_trick():
    fwd = lambda x: jnp.round(x * 3) / 3
    q = straight_through(fwd, jnp.tanh)
    x = jnp.asarray(np.random.default_rng(1).standard_normal(11), jnp.float32)
    np.testing.assert_array_equal(q(x), fwd(x))
    np.testing.assert_allclose(jax.grad(lambda v: jnp.sum(q(v)))(x), 1 - np.tanh(x) ** 2,
                               rtol=1e-6)


@pytest.mark.parametrize("clip_value", [None, 0.5])
def test_clipped_ste(clip_value):
    q = clipped_ste(sign)
    x = jnp.asarray([-0.7, -0.5, 0.0, 0.5, 0.5000001])
    g = jax.grad(lambda v: jnp.sum(q(v, clip_value)))(x)
    want = np.ones(5) if clip_value is None else [0, 1, 1, 1, 0]
    np.testing.assert_array_equal(g, want)


def test_exact_div_is_correctly_rounded_under_jit_and_vmap():
    k = np.arange(-40, 41, dtype=np.float32).reshape(3, 27)
    want = k / np.float32(15)  # numpy float32 division is correctly rounded
    f = lambda a: exact_div(a, 15.0)
    for g in (f, jax.jit(f), jax.vmap(f), jax.jit(jax.vmap(f)), jax.jit(jax.vmap(jax.vmap(f)))):
        np.testing.assert_array_equal(g(jnp.asarray(k)), want)
    # the naive form is what exact_div guards against: it is not correctly rounded here
    assert not np.array_equal(jax.jit(lambda a: a / 15.0)(jnp.asarray(k)), want)
    np.testing.assert_allclose(jax.grad(lambda a: jnp.sum(f(a)))(jnp.asarray(k)), 1 / 15,
                               rtol=1e-7)


def test_mean_matches_numpy_on_exact_sums():
    x = jnp.asarray(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    np.testing.assert_array_equal(mean(x, axis=(0, 1)), np.mean(np.asarray(x), axis=(0, 1)))
    np.testing.assert_array_equal(mean(x), np.float32(np.arange(24).sum()) / np.float32(24))


def test_identity_ste_and_grad_scale_are_exact_forward():
    from bnn_jax.quant.core import grad_scale, identity_ste

    x = jnp.asarray(np.random.default_rng(0).standard_normal(7).astype(np.float32))
    f = identity_ste(lambda v, k: jnp.round(v * k))
    y, pull = jax.vjp(lambda v: f(v, 3.0), x)
    np.testing.assert_array_equal(y, np.round(np.asarray(x) * 3.0))
    g = jnp.arange(1.0, 8.0)
    np.testing.assert_array_equal(pull(g)[0], g)  # plain identity, no clip
    # grad_scale: the value is x bit for bit (sg(x - x·g) + x·g would round), gradient g·c.
    s = jnp.float32(0.1)
    val, pull = jax.vjp(lambda v: grad_scale(v, 1.0 / 3.0), s)
    assert float(val) == float(s)
    np.testing.assert_allclose(pull(jnp.float32(2.0))[0], 2.0 / 3.0, rtol=1e-7)


def test_sign_of_and_per_channel_axes():
    from bnn_jax.quant.core import per_channel_axes, sign_of

    x = jnp.array([-1.5, -0.0, 0.0, 2.0])
    np.testing.assert_array_equal(sign_of(0)(x), [-1, 0, 0, 1])
    np.testing.assert_array_equal(sign_of(1)(x), [-1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sign_of(2)
    assert per_channel_axes(3, -1) == (0, 1) and per_channel_axes(3, 0) == (1, 2)
    assert per_channel_axes(2, None) == (0, 1)
    with pytest.raises(ValueError, match="out of range"):
        per_channel_axes(2, 2)


def test_clipped_ste_derivative_boundary_choice():
    from bnn_jax.quant.core import clipped_ste_derivative

    x = jnp.array([-1.0, -0.5, 1.0, 1.5])
    np.testing.assert_array_equal(clipped_ste_derivative(x, 1.0), [1, 1, 1, 0])
    np.testing.assert_array_equal(clipped_ste_derivative(x, 1.0, inclusive=False), [0, 1, 0, 0])

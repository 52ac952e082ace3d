"""Noise schedules against hand computation; DDIM/DDPM against a numpy re-statement."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import diffusion, tasks
from bnn_jax.tasks import denoising


def test_schedules_by_hand():
    np.testing.assert_allclose(denoising.beta_schedule("linear", 3, 0.1, 0.3), [0.1, 0.2, 0.3])
    # LDM's "linear": sqrt-spaced, squared: sqrt(.0015)=.03873, sqrt(.0195)=.13964
    r0, r1 = math.sqrt(0.0015), math.sqrt(0.0195)
    np.testing.assert_allclose(denoising.beta_schedule("scaled_linear", 3, 0.0015, 0.0195),
                               [r0 ** 2, ((r0 + r1) / 2) ** 2, r1 ** 2])
    # cosine, T = 2, s = 0.008: f(t) = cos((t/2 + s)/(1 + s) * pi/2)^2
    f = [math.cos((t / 2 + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(3)]
    np.testing.assert_allclose(denoising.beta_schedule("cosine", 2),
                               [1 - f[1] / f[0], min(1 - f[2] / f[1], 0.999)])
    with pytest.raises(ValueError, match="valid schedules"):
        denoising.beta_schedule("quadratic", 3)
    with pytest.raises(ValueError, match="schedule must be one of"):
        tasks.validate({"name": "denoising", "schedule": "sigmoid"})


def test_centered_task_noises_2x_minus_1():
    task = tasks.build({"name": "denoising", "num_timesteps": 10, "center": True,
                        "schedule": "cosine"}, spec={})
    img = jnp.full((2, 4, 4, 1), 0.75)
    b = task.prepare({"image": img}, jax.random.key(0))
    a = denoising.alphas_cumprod(denoising.beta_schedule("cosine", 10))[np.asarray(
        b["timesteps"])].reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(b["noisy"], np.sqrt(a) * 0.5 + np.sqrt(1 - a) * b["noise"],
                               rtol=1e-5, atol=1e-6)


class Tiny(nnx.Module):
    """A tiny ε-model with a timestep dependence: ``tanh(x·w + t/100)``."""

    def __init__(self):
        self.w = nnx.Param(jnp.asarray(0.7))

    def __call__(self, x, t):
        return jnp.tanh(x * self.w[...] + t[:, None, None, None] / 100.0)


def numpy_ddim(x, abar, steps, eta, zs, clip=None):
    """DDIM (Song et al. 2021, eq. 12) step by step, float64, the model evaluated by hand."""
    T = len(abar)
    taus = list(range(0, T, T // steps))[:steps][::-1]
    for i, t in enumerate(taus):
        a = abar[t]
        a_prev = abar[taus[i + 1]] if i + 1 < len(taus) else 1.0
        eps = np.tanh(x * 0.7 + t / 100.0)
        x0 = (x - np.sqrt(1 - a) * eps) / np.sqrt(a)
        if clip is not None:
            x0 = np.clip(x0, *clip)
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma ** 2) * eps + sigma * zs[i]
    return x


ABAR = denoising.alphas_cumprod(denoising.linear_beta_schedule(100, 1e-4, 0.02))


def test_ddim_eta0_deterministic_and_matches_numpy():
    m = Tiny()
    x_T = jax.random.normal(jax.random.key(3), (2, 3, 3, 1))
    a = diffusion.sample(m, x_T.shape, jax.random.key(0), abar=ABAR, steps=10, noise=x_T)
    b = diffusion.sample(m, x_T.shape, jax.random.key(99), abar=ABAR, steps=10, noise=x_T)
    np.testing.assert_array_equal(a, b)  # eta = 0: the key does not matter
    want = numpy_ddim(np.asarray(x_T, np.float64), ABAR, 10, 0.0, [0.0] * 10)
    np.testing.assert_allclose(a, want, rtol=1e-4, atol=1e-4)
    clipped = diffusion.sample(m, x_T.shape, jax.random.key(0), abar=ABAR, steps=7,
                               noise=x_T, clip=(-1.0, 1.0))
    np.testing.assert_allclose(clipped, numpy_ddim(np.asarray(x_T, np.float64), ABAR, 7, 0.0,
                                                   [0.0] * 7, clip=(-1, 1)),
                               rtol=1e-4, atol=1e-4)


def test_ddim_eta1_uses_the_drawn_noise():
    m = Tiny()
    key = jax.random.key(5)
    x_T = jax.random.normal(jax.random.key(3), (2, 3, 3, 1))
    got = diffusion.sample(m, x_T.shape, key, abar=ABAR, steps=5, eta=1.0, noise=x_T)
    # the sampler's documented noise: key -> (x_T key, loop key) -> one key per step
    ks = jax.random.split(jax.random.split(key)[1], 5)
    zs = [np.asarray(jax.random.normal(k, x_T.shape), np.float64) for k in ks]
    np.testing.assert_allclose(got, numpy_ddim(np.asarray(x_T, np.float64), ABAR, 5, 1.0, zs),
                               rtol=1e-4, atol=1e-4)


def test_ddpm_variance_is_the_posterior_variance():
    betas = denoising.linear_beta_schedule(20, 1e-3, 0.2)
    abar = denoising.alphas_cumprod(betas)
    ts, _, _, sigma = diffusion.ddim_coefficients(abar, 20, 1.0)
    assert list(ts) == list(range(19, -1, -1))
    tilde = [(1 - abar[t - 1]) / (1 - abar[t]) * betas[t] if t else 0.0 for t in ts]
    np.testing.assert_allclose(sigma ** 2, tilde, rtol=1e-10, atol=1e-14)


def test_bad_arguments():
    with pytest.raises(ValueError, match="steps must be"):
        diffusion.sample(Tiny(), (1, 2, 2, 1), jax.random.key(0), abar=ABAR, steps=101)
    with pytest.raises(ValueError, match="eta must be"):
        diffusion.sample(Tiny(), (1, 2, 2, 1), jax.random.key(0), abar=ABAR, eta=-1)

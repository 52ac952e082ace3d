"""Sampling from a noise predictor ``ε_θ(x_t, t)``: DDIM (Song et al., 2021) and DDPM.

DDIM over ``steps`` timesteps ``τ = 0, c, 2c, ...`` (``c = T // steps``), from ``τ_last`` down
to 0; each step ``x̂_0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t`` (clipped to ``clip`` if given), ``σ = η·
√((1−ᾱ_prev)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_prev)`` and ``x_prev = √ᾱ_prev·x̂_0 + √(1−ᾱ_prev−σ²)·ε̂ + σ·z``,
with ``ᾱ_prev = 1`` after the last step (the sample is ``x̂_0``). ``eta=0`` is deterministic;
DDPM's ancestral sampler is DDIM over all ``T`` steps with ``eta=1`` (its ``σ_t² = β̃_t``, the
posterior variance). The loop is one jit-compiled ``lax.scan`` over a pure function of the
model's state (``nnx.split`` outside, ``nnx.merge`` inside), so nothing is written to the model.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bnn_jax.nn.layers import pending_learned
from bnn_jax.tasks.denoising import alphas_cumprod, beta_schedule


def ddim_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
    """DDIM's uniform sub-sequence ``0, c, 2c, ...`` (``c = T // steps``), ``steps`` entries."""
    if not (isinstance(steps, int) and 1 <= steps <= num_timesteps):
        raise ValueError(f"steps must be an integer in 1..{num_timesteps} (the model's "
                         f"timesteps), got {steps!r}")
    return np.arange(steps, dtype=np.int64) * (num_timesteps // steps)


def ddim_coefficients(abar: np.ndarray, steps: int, eta: float):
    """Per step (sampling order): ``t``, ``ᾱ_t``, ``ᾱ_prev`` and ``σ`` (float64 numpy)."""
    abar = np.asarray(abar, np.float64)
    ts = ddim_timesteps(len(abar), steps)[::-1]
    a = abar[ts]
    prev = np.concatenate([abar[ts[1:]], [1.0]])
    sigma = eta * np.sqrt((1 - prev) / (1 - a)) * np.sqrt(1 - a / prev)
    return ts, a, prev, sigma


def _check(model, eta):
    if not isinstance(eta, (int, float)) or eta < 0:
        raise ValueError(f"eta must be a non-negative number (0: deterministic DDIM, 1: "
                         f"DDPM-like), got {eta!r}")
    pending = pending_learned(model)
    if pending:
        raise ValueError(f"the model's learned quantizer arrays at {pending} are not created "
                         "yet; call bnn_jax.nn.initialize(model, x, t) (or restore a trained "
                         "run) before sampling")


def sample(model: nnx.Module, shape: Sequence[int], key: jax.Array, *, abar: Any,
           steps: int = 50, eta: float = 0.0, clip: tuple[float, float] | None = None,
           noise: jax.Array | None = None) -> jax.Array:
    """Draw ``shape[0]`` samples with DDIM (``steps``, ``eta``) from ``model(x_t, t)``.

    ``abar``: the training schedule's ``ᾱ_t`` (``len(abar)`` = the model's timesteps);
    ``noise``: the starting ``x_T`` (default: drawn from ``key``); ``clip``: bounds of ``x̂_0``.
    """
    _check(model, eta)
    ts, a, prev, sigma = ddim_coefficients(abar, steps, float(eta))
    graph, state = nnx.split(model)
    k0, kloop = jax.random.split(key)
    x = jax.random.normal(k0, tuple(shape), jnp.float32) if noise is None else noise
    xs = (jnp.asarray(ts, jnp.int32), jnp.asarray(a, jnp.float32),
          jnp.asarray(prev, jnp.float32), jnp.asarray(sigma, jnp.float32),
          jax.random.split(kloop, len(ts)))
    return _ddim(graph, state, jnp.asarray(x, jnp.float32), xs, clip)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _ddim(graph, state, x, xs, clip):
    def step(x, inp):
        t, a, prev, sigma, k = inp
        eps = nnx.merge(graph, state)(x, jnp.full((x.shape[0],), t, jnp.int32))
        x0 = (x - jnp.sqrt(1 - a) * eps) / jnp.sqrt(a)
        if clip is not None:
            x0 = jnp.clip(x0, *clip)
        z = jax.random.normal(k, x.shape, x.dtype)
        direction = jnp.sqrt(jnp.maximum(1 - prev - sigma ** 2, 0.0)) * eps
        return jnp.sqrt(prev) * x0 + direction + sigma * z, None

    return jax.lax.scan(step, x, xs)[0]


def ddpm_sample(model: nnx.Module, shape: Sequence[int], key: jax.Array, *, abar: Any,
                clip: tuple[float, float] | None = None) -> jax.Array:
    """DDPM's ancestral sampler: DDIM over every timestep with ``eta = 1``."""
    return sample(model, shape, key, abar=abar, steps=len(abar), eta=1.0, clip=clip)


def task_abar(task_cfg: Any) -> np.ndarray:
    """``ᾱ_t`` of a ``denoising`` task config (its schedule, timesteps and β bounds)."""
    from bnn_jax import tasks

    cfg = dict(task_cfg.to_dict() if hasattr(task_cfg, "to_dict") else task_cfg)
    tasks.validate(cfg)
    cfg = {**tasks.get(cfg["name"]).fields, **cfg}
    return alphas_cumprod(beta_schedule(cfg["schedule"], cfg["num_timesteps"],
                                        cfg["beta_start"], cfg["beta_end"]))

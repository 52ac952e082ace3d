"""Denoising diffusion (DDPM, Ho et al. 2020): predict the noise added at a sampled timestep.

``x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε`` with ``t ~ U{0..T−1}`` and ``ε ~ N(0, I)``; the loss is
``mean ‖ε − ε_θ(x_t, t)‖²`` (the paper's ``L_simple``). The schedule (``schedule``) is linear in
``β`` from ``beta_start`` to ``beta_end`` over ``num_timesteps`` (the paper's 1e-4 .. 0.02 over
1000), latent diffusion's ``scaled_linear`` (linear in ``√β``) or the cosine schedule of Nichol &
Dhariwal (2021), which ignores the β bounds. ``center=True`` maps ``[0, 1]`` images to DDPM's
``[−1, 1]`` (``2x − 1``) before noising, so the data must keep its ``[0, 1]`` range
(``config.data.normalize=False``; standardized pixels would reach far outside ``[−1, 1]``, where
the sampler's clip of ``x̂_0`` cannot follow).
``model(x_t, t) -> ε̂`` with ``t`` int32 ``[B]``. Evaluation draws timesteps and noise from a
fixed key per eval batch, so the eval loss of a model is reproducible. Sampling comes with the
diffusion models.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bnn_jax.tasks.base import Task as BaseTask


def linear_beta_schedule(num_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """DDPM's ``β_t``, linear from ``beta_start`` to ``beta_end`` (float64)."""
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def scaled_linear_beta_schedule(num_timesteps: int, beta_start: float,
                                beta_end: float) -> np.ndarray:
    """Latent diffusion's "linear" ``β_t``: linear in ``√β`` from ``√beta_start`` to
    ``√beta_end``, squared (``make_beta_schedule``, the LSUN-Bedrooms LDM-4 schedule)."""
    return np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps, dtype=np.float64) ** 2


def cosine_beta_schedule(num_timesteps: int, s: float = 0.008,
                         max_beta: float = 0.999) -> np.ndarray:
    """Improved DDPM's ``β_t = 1 − ᾱ(t+1)/ᾱ(t)``, ``ᾱ(t) = cos²((t/T + s)/(1 + s)·π/2)``,
    clipped at ``max_beta``."""
    t = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2
    return np.minimum(1.0 - f[1:] / f[:-1], max_beta)


SCHEDULES = ("linear", "scaled_linear", "cosine")


def beta_schedule(name: str, num_timesteps: int, beta_start: float = 1e-4,
                  beta_end: float = 0.02) -> np.ndarray:
    """``β_t`` of the schedule ``name`` (one of :data:`SCHEDULES`)."""
    if name == "linear":
        return linear_beta_schedule(num_timesteps, beta_start, beta_end)
    if name == "scaled_linear":
        return scaled_linear_beta_schedule(num_timesteps, beta_start, beta_end)
    if name == "cosine":
        return cosine_beta_schedule(num_timesteps)
    raise ValueError(f"unknown noise schedule {name!r}; valid schedules: {list(SCHEDULES)}")


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    """``ᾱ_t = Π_{s<=t} (1 − β_s)``."""
    return np.cumprod(1.0 - np.asarray(betas, np.float64))


def q_sample(x0, t, noise, abar):
    """``x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε`` per example."""
    a = jnp.asarray(abar, jnp.float32)[t].reshape((-1,) + (1,) * (x0.ndim - 1))
    return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise


class Task(BaseTask):
    """Noise-prediction MSE with DDPM's linear schedule."""

    name = "denoising"
    fields = {"num_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
              "schedule": "linear", "center": False}
    batch_fields = ("image",)

    @classmethod
    def check_fields(cls, cfg):
        t, b0, b1 = cfg["num_timesteps"], cfg["beta_start"], cfg["beta_end"]
        if not (isinstance(t, int) and t >= 1):
            raise ValueError(f"config.task.num_timesteps must be a positive integer, got {t!r}")
        if not 0 < b0 <= b1 < 1:
            raise ValueError(f"config.task needs 0 < beta_start <= beta_end < 1, got "
                             f"beta_start={b0!r}, beta_end={b1!r}")
        if cfg["schedule"] not in SCHEDULES:
            raise ValueError(f"config.task.schedule must be one of {list(SCHEDULES)}, got "
                             f"{cfg['schedule']!r}")
        if cfg["center"] not in (True, False):
            raise ValueError(f"config.task.center must be True or False, got {cfg['center']!r}")

    def __init__(self, cfg, *, spec, config=None):
        super().__init__(cfg, spec=spec, config=config)
        from bnn_jax.data import EXTRA_FIELDS

        data = dict(config.get("data") or {}) if config is not None else {}
        standardizes = "normalize" in EXTRA_FIELDS.get(data.get("name"), ())
        if cfg["center"] and standardizes and data.get("normalize", True):
            raise ValueError(f"config.task.center=True maps [0, 1] images to [-1, 1], but "
                             f"dataset {data['name']!r} standardizes its pixels by default; "
                             "set config.data.normalize=False")
        self.abar = alphas_cumprod(beta_schedule(
            cfg["schedule"], cfg["num_timesteps"], cfg["beta_start"],
            cfg["beta_end"])).astype(np.float32)

    def prepare(self, batch, rng):
        x0 = jnp.asarray(batch["image"], jnp.float32)
        if self.cfg["center"]:
            x0 = 2.0 * x0 - 1.0
        k_t, k_noise = jax.random.split(rng)
        t = jax.random.randint(k_t, (x0.shape[0],), 0, self.cfg["num_timesteps"])
        noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
        return {**batch, "timesteps": t, "noise": noise,
                "noisy": q_sample(x0, t, noise, self.abar)}

    def inputs(self, batch):
        return (batch["noisy"], batch["timesteps"]), {}

    def _per_example(self, out, batch):
        return jnp.mean(jnp.square(out - batch["noise"]).reshape(out.shape[0], -1), -1)

    def loss(self, out, batch):
        return jnp.mean(self._per_example(out, batch)), {}

    def eval_metrics(self, out, batch):
        return {"loss": self._per_example(out, batch)}

"""A small convolutional noise predictor ``ε_θ(x_t, t)`` for the denoising task.

A 3x3 stem, residual blocks (GroupNorm, SiLU, conv) whose features are shifted by a projection
of the sinusoidal timestep embedding (the DDPM U-Net's conditioning, without the down/up path),
and a 3x3 conv back to the image channels. Residual block convs take the quantizers; stem and
output stay in full precision. Each block's output is sown as ``hidden`` (LRM distillation).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from bnn_jax.nn import QuantConv


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
    """Transformer sinusoids of integer timesteps ``t [B]`` -> ``[B, dim]`` (DDPM's)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class ResBlock(nnx.Module):
    """``x + conv(silu(norm(x)) + proj(emb))``."""

    def __init__(self, width: int, emb_dim: int, *, quant: dict, rngs: nnx.Rngs):
        self.norm = nnx.GroupNorm(width, num_groups=min(8, width), rngs=rngs)
        self.conv = QuantConv(width, width, (3, 3), padding="SAME", **quant, rngs=rngs)
        self.emb = nnx.Linear(emb_dim, width, rngs=rngs)

    def __call__(self, x, emb):
        h = jax.nn.silu(self.norm(x)) + self.emb(emb)[:, None, None, :]
        x = x + self.conv(h)
        self.sow(nnx.Intermediate, "hidden", x, capture_noop=True)
        return x


class Model(nnx.Module):
    """``model(x_t [B, H, W, C], t [B]) -> ε̂ [B, H, W, C]``."""

    def __init__(self, *, input_shape: Sequence[int], rngs: nnx.Rngs, width: int = 32,
                 depth: int = 2, emb_dim: int = 64, input_quantizer: Any = None,
                 kernel_quantizer: Any = None, kernel_constraint: Any = None):
        channels = int(input_shape[-1])
        quant = dict(input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer,
                     kernel_constraint=kernel_constraint)
        self.emb_dim = emb_dim
        self.time = nnx.Linear(emb_dim, emb_dim, rngs=rngs)
        self.stem = nnx.Conv(channels, width, (3, 3), padding="SAME", rngs=rngs)
        self.blocks = nnx.List([ResBlock(width, emb_dim, quant=quant, rngs=rngs)
                                for _ in range(depth)])
        self.out = nnx.Conv(width, channels, (3, 3), padding="SAME", rngs=rngs)

    def __call__(self, x, t):
        emb = jax.nn.silu(self.time(timestep_embedding(t, self.emb_dim)))
        h = self.stem(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)

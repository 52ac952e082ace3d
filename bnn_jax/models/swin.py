"""Swin Transformer (Liu et al., ICCV 2021): shifted-window attention in a 4-stage hierarchy.

A ``patch_size`` patch embedding with LayerNorm; stages of :class:`SwinBlock` s (window
attention, every second block shifted by half a window) separated by :class:`PatchMerging`
(2x2 neighbours concatenated, LayerNorm, linear ``4C -> 2C``); final LayerNorm, global average
pool, linear head. The attention of a window is any of :data:`bnn_jax.models.vit.ATTENTIONS`
(``attention``/``attention_fields`` as in ViT), given the learned relative position bias and
the shift mask as one additive mask. As in timm and Hugging Face, a stage whose resolution is
not larger than the window uses one window of that resolution and no shift. Resolutions must be
divisible by the window and even before each merging (no padding here), so the ``quick`` shape
is 28x28 images, ``patch_size=2``, ``depths=(2, 2)``, ``window_size=7``. ``pretrained``: a
local Hugging Face Swin directory or timm state dict file whose weights initialize the model.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bnn_jax.models.transformer import MLP, check_positive_ints
from bnn_jax.models.vit import GELU, attention_factory, load_pretrained, mlp_quant
from bnn_jax.nn import QuantConv, QuantLinear
from bnn_jax.quant.registry import check

SHIFT_MASK = -100.0  # the value timm and Hugging Face give to cross-region pairs


@functools.lru_cache(maxsize=None)
def relative_position_index(window: int) -> np.ndarray:
    """``(N, N)`` indices into the ``((2w-1)^2, H)`` bias table, N = w·w (timm's layout)."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
    coords = coords.reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def window_partition(x: jax.Array, window: int) -> jax.Array:
    """``[B, H, W, C] -> [B·nW, w·w, C]``, windows in row-major order per image."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_reverse(x: jax.Array, window: int, h: int, w: int) -> jax.Array:
    """Inverse of :func:`window_partition`."""
    c = x.shape[-1]
    x = x.reshape(-1, h // window, w // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


@functools.lru_cache(maxsize=None)
def shift_mask(h: int, w: int, window: int, shift: int) -> np.ndarray:
    """``(nW, N, N)``: 0 within a region of the rolled image, -100 across regions."""
    img = np.zeros((1, h, w, 1), np.float32)
    cnt = 0
    spans = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for hs in spans:
        for ws in spans:
            img[:, hs, ws, :] = cnt
            cnt += 1
    m = np.asarray(window_partition(img, window))[..., 0]
    diff = m[:, None, :] - m[:, :, None]
    return np.where(diff != 0, SHIFT_MASK, 0.0).astype(np.float32)


class SwinBlock(nnx.Module):
    """Pre-LN (shifted) window attention with relative position bias, then the MLP."""

    def __init__(self, dim: int, num_heads: int, resolution: tuple[int, int], window: int,
                 shift: int, mlp_dim: int, *, attention: Any, quant: dict, norm_eps: float,
                 fc2_input_quantizer: Any, rngs: nnx.Rngs):
        if min(resolution) <= window:  # one window covers the stage: no shift (timm, HF)
            window, shift = min(resolution), 0
        check(resolution[0] % window == 0 and resolution[1] % window == 0,
              f"swin: window_size={window} must divide the stage resolution {resolution} "
              "(no padding is implemented)")
        self.resolution, self.window, self.shift, self.num_heads = resolution, window, shift, \
            num_heads
        self.ln1 = nnx.LayerNorm(dim, epsilon=norm_eps, rngs=rngs)
        self.attn = attention(num_heads, dim, rngs=rngs)
        init = nnx.initializers.truncated_normal(0.02)
        self.rel_bias_table = nnx.Param(init(rngs.params(), ((2 * window - 1) ** 2, num_heads)))
        self.ln2 = nnx.LayerNorm(dim, epsilon=norm_eps, rngs=rngs)
        self.mlp = MLP(dim, mlp_dim, quant=quant, rngs=rngs, act=GELU,
                       fc2_input_quantizer=fc2_input_quantizer)

    def attention_mask(self, batch: int) -> jax.Array:
        """Additive ``[B·nW, H, N, N]``: relative position bias plus the shift mask."""
        n = self.window ** 2
        idx = relative_position_index(self.window).reshape(-1)
        bias = self.rel_bias_table[...][idx].reshape(n, n, self.num_heads).transpose(2, 0, 1)
        mask = bias[None]
        if self.shift:
            mask = mask + jnp.asarray(shift_mask(*self.resolution, self.window,
                                                 self.shift))[:, None]
        return jnp.tile(mask, (batch, 1, 1, 1)) if self.shift else mask

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [B, H·W, C]`` -> same shape."""
        h, w = self.resolution
        b, _, c = x.shape
        y = self.ln1(x).reshape(b, h, w, c)
        if self.shift:
            y = jnp.roll(y, (-self.shift, -self.shift), axis=(1, 2))
        y = self.attn(window_partition(y, self.window), mask=self.attention_mask(b))
        y = window_reverse(y, self.window, h, w)
        if self.shift:
            y = jnp.roll(y, (self.shift, self.shift), axis=(1, 2))
        x = x + y.reshape(b, h * w, c)
        x = x + self.mlp(self.ln2(x))
        self.sow(nnx.Intermediate, "hidden", x, capture_noop=True)
        return x


class PatchMerging(nnx.Module):
    """2x2 neighbours concatenated (``x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2]``),
    LayerNorm, linear ``4C -> 2C`` without bias."""

    def __init__(self, dim: int, resolution: tuple[int, int], *, quant: dict, norm_eps: float,
                 rngs: nnx.Rngs):
        check(resolution[0] % 2 == 0 and resolution[1] % 2 == 0,
              f"swin: patch merging needs an even resolution, got {resolution} (use fewer "
              "stages or another patch_size)")
        self.resolution = resolution
        self.norm = nnx.LayerNorm(4 * dim, epsilon=norm_eps, rngs=rngs)
        self.reduction = QuantLinear(4 * dim, 2 * dim, use_bias=False, **quant, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h, w = self.resolution
        b, _, c = x.shape
        x = x.reshape(b, h, w, c)
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                             x[:, 1::2, 1::2]], axis=-1)
        return self.reduction(self.norm(x.reshape(b, -1, 4 * c)))


class Stage(nnx.Module):
    """Blocks at one resolution, then (except for the last stage) patch merging."""

    def __init__(self, blocks: list, downsample: PatchMerging | None):
        self.blocks = nnx.List(blocks)
        self.downsample = downsample

    def __call__(self, x):
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class Model(nnx.Module):
    """Swin classifier; defaults are Swin-T (patch 4, window 7, C = 96, depths 2-2-6-2)."""

    def __init__(self, *, num_classes: int, input_shape: Sequence[int], rngs: nnx.Rngs,
                 patch_size: int = 4, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7,
                 mlp_ratio: float = 4.0, attention: str = "softmax",
                 attention_fields: dict | None = None, input_quantizer: Any = None,
                 kernel_quantizer: Any = None, kernel_constraint: Any = None,
                 fc2_input_quantizer: Any = None, norm_eps: float = 1e-5,
                 pretrained: str = ""):
        check_positive_ints("swin", patch_size=patch_size, embed_dim=embed_dim,
                            window_size=window_size, num_classes=num_classes)
        check(isinstance(mlp_ratio, (int, float)) and mlp_ratio > 0,
              f"swin: mlp_ratio must be a positive number, got {mlp_ratio!r}")
        depths, num_heads = tuple(depths), tuple(num_heads)
        check(len(depths) == len(num_heads) and len(depths) >= 1,
              f"swin: depths {depths} and num_heads {num_heads} need one entry per stage")
        check_positive_ints("swin", **{f"depths[{i}]": d for i, d in enumerate(depths)},
                            **{f"num_heads[{i}]": h for i, h in enumerate(num_heads)})
        h, w, c = tuple(input_shape)
        check(h % patch_size == 0 and w % patch_size == 0,
              f"swin: patch_size={patch_size} must divide the image size {h}x{w}")
        self.patch_embed = QuantConv(c, embed_dim, (patch_size, patch_size), patch_size,
                                     padding="VALID", rngs=rngs)
        self.embed_norm = nnx.LayerNorm(embed_dim, epsilon=norm_eps, rngs=rngs)
        attn = attention_factory(attention, attention_fields)
        quant = mlp_quant(input_quantizer, kernel_quantizer, kernel_constraint)
        res, dim, stages = (h // patch_size, w // patch_size), embed_dim, []
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            check(dim % heads == 0, f"swin: num_heads[{i}]={heads} must divide the width {dim}")
            blocks = [SwinBlock(dim, heads, res, window_size, 0 if j % 2 == 0 else
                                window_size // 2, int(mlp_ratio * dim), attention=attn, quant=quant,
                                norm_eps=norm_eps, fc2_input_quantizer=fc2_input_quantizer,
                                rngs=rngs) for j in range(depth)]
            last = i == len(depths) - 1
            down = None if last else PatchMerging(dim, res, quant=quant, norm_eps=norm_eps,
                                                  rngs=rngs)
            stages.append(Stage(blocks, down))
            if not last:
                res, dim = (res[0] // 2, res[1] // 2), 2 * dim
        self.stages = nnx.List(stages)
        self.norm = nnx.LayerNorm(dim, epsilon=norm_eps, rngs=rngs)
        self.head = QuantLinear(dim, num_classes, rngs=rngs)
        load_pretrained(self, pretrained)

    def __call__(self, images: jax.Array) -> jax.Array:
        """Logits for a batch of NHWC images."""
        x = self.patch_embed(images)
        x = self.embed_norm(x.reshape(x.shape[0], -1, x.shape[-1]))
        for stage in self.stages:
            x = stage(x)
        return self.head(jnp.mean(self.norm(x), axis=1))

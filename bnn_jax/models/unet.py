"""The DDPM/LDM U-Net noise predictor ``ε_θ(x_t, t)`` with BinaryDM's quantizer placement.

The network is the ``UNetModel`` of the latent-diffusion code that BinaryDM builds on
(``openaimodel_ours.py``): a timestep MLP, ``input_blocks`` (a stem conv, then per level
``num_res_blocks`` residual blocks, each followed by self-attention where the downsampling
factor is in ``attention_resolutions``, and a stride-2 conv between levels), a ``middle``
block (res, attention, res) and ``output_blocks`` that concatenate the matching skip and
upsample (nearest, conv) between levels, then GroupNorm, SiLU and a zero-initialized conv out.
Each block's output is sown as ``hidden`` (``input_blocks/3/hidden``, ``middle/hidden``,
``output_blocks/0/hidden``): the ``TimestepEmbedSequential`` outputs BinaryDM's LRM mimics.

BinaryDM placement (``openaimodel_ours.py`` lines 709-744): every conv and linear inside the
input, middle and output blocks is binarized (res-block convs, their timestep projection, skip
1x1 convs, attention qkv and output projections, down/up convs); the timestep MLP, the stem conv
and the output conv (the reference's first three and last binarizable layers) stay full
precision. Layers belong to groups: input block ``i`` to group ``i // (num_res_blocks + 1)``,
output block ``j`` to ``L − 1 − j // (num_res_blocks + 1)`` (``L`` levels), the middle block to
group ``L``; ``outer_groups`` (the reference's ``{0, 1}``) take ``outer_kernel_quantizer``
(order-2 LMB), the rest ``kernel_quantizer`` (order-1). ``input_quantizer`` quantizes each
binarized layer's input, ``attention_quantizer`` the q, k, softmax weights and v.

Progressive binarization: each binarized layer carries a :class:`Switch` (``binary``, on by
default) that selects its quantized or float path; attention quantizers have their own switch.
The ``binarydm_progressive`` step hook (:func:`progressive_hook`) sets them from the step, so the
forward itself never writes state (it stays a pure function, usable inside a sampler's scan).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bnn_jax.models.conv_denoiser import timestep_embedding
from bnn_jax.nn.activations import Quantize
from bnn_jax.nn.attention import merge_heads, split_heads
from bnn_jax.nn.layers import QuantConv, QuantLinear
from bnn_jax.quant.binarydm import progressive_binarization
from bnn_jax.quant.registry import check


class Switch(nnx.Variable):
    """A progressive-binarization flag (not trained; set by :func:`progressive_hook`)."""


class _Switched:
    """Mixin for a quantized layer: the float path while ``binary`` is off (input and kernel)."""

    def _init_switch(self, group: int) -> None:
        self.group = group
        self.binary = Switch(jnp.asarray(True))

    def quantize_input(self, x, **overrides):
        if self.input_quantizer is None:
            return x
        return jnp.where(self.binary[...], super().quantize_input(x, **overrides), x)

    def quantized_kernel(self, **overrides):
        if self.kernel_quantizer is None:
            return super().quantized_kernel(**overrides)
        return jnp.where(self.binary[...], super().quantized_kernel(**overrides),
                         self.latent_kernel())


class SwitchedConv(_Switched, QuantConv):
    """:class:`QuantConv` whose quantizers act only while its ``binary`` switch is on."""

    def __init__(self, *args, group: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_switch(group)


class SwitchedLinear(_Switched, QuantLinear):
    """:class:`QuantLinear` whose quantizers act only while its ``binary`` switch is on."""

    def __init__(self, *args, group: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_switch(group)


class SwitchedQuantize(Quantize):
    """An activation quantizer applied only while its ``act`` switch is on."""

    def __init__(self, quantizer: Any):
        super().__init__(quantizer)
        self.act = Switch(jnp.asarray(True))

    def __call__(self, x, **overrides):
        if self.quantizer is None:
            return x
        return jnp.where(self.act[...], super().__call__(x, **overrides), x)


def norm_groups(ch: int) -> int:
    """GroupNorm groups for ``ch`` channels: the reference's 32 (``normalization()``) when every
    group keeps at least 4 channels (128 channels: 4 each), else halved until it does."""
    groups = math.gcd(32, ch)
    # A group of one channel subtracts that channel's spatial mean, which is exactly the
    # per-channel timestep shift ResBlock adds before norm2: the model would ignore t.
    while groups > 1 and ch // groups < 4:
        groups //= 2
    return groups


def _norm(ch: int, rngs) -> nnx.GroupNorm:
    return nnx.GroupNorm(ch, num_groups=norm_groups(ch), rngs=rngs)


class _Layers:
    """Builds the switched layers of one group with that group's quantizers."""

    def __init__(self, group: int, kernel_quantizer: Any, input_quantizer: Any, rngs):
        self.group, self.kq, self.iq, self.rngs = group, kernel_quantizer, input_quantizer, rngs

    def conv(self, cin, cout, k=3, stride=1, zero=False):
        kw = dict(kernel_init=nnx.initializers.zeros_init()) if zero else {}
        return SwitchedConv(cin, cout, (k, k), stride, padding="SAME", group=self.group,
                            kernel_quantizer=self.kq, input_quantizer=self.iq, rngs=self.rngs,
                            **kw)

    def linear(self, cin, cout, zero=False):
        kw = dict(kernel_init=nnx.initializers.zeros_init()) if zero else {}
        return SwitchedLinear(cin, cout, group=self.group, kernel_quantizer=self.kq,
                              input_quantizer=self.iq, rngs=self.rngs, **kw)


class ResBlock(nnx.Module):
    """``skip(x) + conv(silu(norm(conv(silu(norm(x))) + proj(silu(emb)))))``, zero-init out."""

    def __init__(self, cin: int, cout: int, emb_dim: int, layers: _Layers, rngs):
        self.norm1, self.conv1 = _norm(cin, rngs), layers.conv(cin, cout)
        self.emb = layers.linear(emb_dim, cout)
        self.norm2, self.conv2 = _norm(cout, rngs), layers.conv(cout, cout, zero=True)
        self.skip = layers.conv(cin, cout, k=1) if cin != cout else None

    def __call__(self, x, emb):
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = h + self.emb(jax.nn.silu(emb))[:, None, None, :]
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        return (x if self.skip is None else self.skip(x)) + h


class AttentionBlock(nnx.Module):
    """Spatial self-attention ``x + proj(attention(qkv(norm(x))))`` (``QKVAttentionLegacy``);
    ``attention_quantizer`` acts on ``q·s``, ``k·s`` (``s = d^-1/4``), the softmax and v."""

    def __init__(self, ch: int, heads: int, layers: _Layers, attention_quantizer: Any, rngs):
        check(ch % heads == 0, f"unet: {heads} attention heads must divide {ch} channels")
        self.heads, self.norm = heads, _norm(ch, rngs)
        self.qkv = layers.linear(ch, 3 * ch)
        self.proj = layers.linear(ch, ch, zero=True)
        self.q_quant, self.k_quant, self.w_quant, self.v_quant = (
            SwitchedQuantize(attention_quantizer) for _ in range(4))

    def __call__(self, x, emb=None):
        b, hh, ww, c = x.shape
        tokens = self.norm(x).reshape(b, hh * ww, c)
        q, k, v = (split_heads(t, self.heads) for t in jnp.split(self.qkv(tokens), 3, -1))
        s = (c // self.heads) ** -0.25  # scaled before the product: the reference's fp16 care
        w = jnp.einsum("bhqd,bhkd->bhqk", self.q_quant(q * s), self.k_quant(k * s))
        w = self.w_quant(jax.nn.softmax(w, axis=-1))
        out = merge_heads(jnp.einsum("bhqk,bhkd->bhqd", w, self.v_quant(v)))
        return x + self.proj(out).reshape(b, hh, ww, c)


class Downsample(nnx.Module):
    """Stride-2 3x3 conv."""

    def __init__(self, ch: int, layers: _Layers):
        self.conv = layers.conv(ch, ch, stride=2)

    def __call__(self, x, emb=None):
        return self.conv(x)


class Upsample(nnx.Module):
    """Nearest 2x upsampling, then a 3x3 conv."""

    def __init__(self, ch: int, layers: _Layers):
        self.conv = layers.conv(ch, ch)

    def __call__(self, x, emb=None):
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class Block(nnx.Module):
    """``TimestepEmbedSequential``: layers applied in turn; the output is sown as ``hidden``."""

    def __init__(self, layers: Sequence[nnx.Module]):
        self.layers = nnx.List(list(layers))

    def __call__(self, x, emb):
        for layer in self.layers:
            x = layer(x, emb) if not isinstance(layer, nnx.Conv) else layer(x)
        self.sow(nnx.Intermediate, "hidden", x, capture_noop=True)
        return x


class Model(nnx.Module):
    """``model(x_t [B, H, W, C], t [B]) -> ε̂ [B, H, W, C]`` (``t`` defaults to 0, so cost
    analysis can trace the model on images alone)."""

    def __init__(self, *, input_shape: Sequence[int], rngs: nnx.Rngs, model_channels: int = 32,
                 channel_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 2,
                 attention_resolutions: Sequence[int] = (2,), num_head_channels: int = 32,
                 kernel_quantizer: Any = None, outer_kernel_quantizer: Any = None,
                 outer_groups: Sequence[int] = (0, 1), input_quantizer: Any = None,
                 attention_quantizer: Any = None):
        h, w, channels = (int(d) for d in input_shape)
        levels = len(channel_mult)
        check(levels >= 1 and all(isinstance(m, int) and m >= 1 for m in channel_mult),
              f"unet: channel_mult must be positive integers, got {channel_mult!r}")
        check(isinstance(num_res_blocks, int) and num_res_blocks >= 1,
              f"unet: num_res_blocks must be a positive integer, got {num_res_blocks!r}")
        check(h % 2 ** (levels - 1) == 0 and w % 2 ** (levels - 1) == 0,
              f"unet: {levels} levels halve the image {levels - 1} times; {h}x{w} is not "
              f"divisible by {2 ** (levels - 1)} (use fewer channel_mult entries)")
        check(all(0 <= g <= levels for g in outer_groups),
              f"unet: outer_groups must be in 0..{levels} (group {levels} is the middle "
              f"block), got {outer_groups!r}")
        mc, emb_dim = model_channels, 4 * model_channels
        self.model_channels, self.input_shape = mc, (h, w, channels)
        self.num_groups = levels + 1

        def group_layers(g):
            kq = outer_kernel_quantizer if g in outer_groups else kernel_quantizer
            return _Layers(g, kq, input_quantizer, rngs)

        def attention(ch, layers):
            heads = max(ch // num_head_channels, 1)
            return AttentionBlock(ch, heads, layers, attention_quantizer, rngs)

        # Full precision: the timestep MLP, the stem and the output conv.
        self.time1 = nnx.Linear(mc, emb_dim, rngs=rngs)
        self.time2 = nnx.Linear(emb_dim, emb_dim, rngs=rngs)
        blocks = [Block([nnx.Conv(channels, mc, (3, 3), padding="SAME", rngs=rngs)])]
        skips, ch, ds = [mc], mc, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = group_layers(len(blocks) // (num_res_blocks + 1))
                seq = [ResBlock(ch, mult * mc, emb_dim, layers, rngs)]
                ch = mult * mc
                if ds in attention_resolutions:
                    seq.append(attention(ch, layers))
                blocks.append(Block(seq))
                skips.append(ch)
            if level != levels - 1:
                layers = group_layers(len(blocks) // (num_res_blocks + 1))
                blocks.append(Block([Downsample(ch, layers)]))
                skips.append(ch)
                ds *= 2
        self.input_blocks = nnx.List(blocks)
        mid = group_layers(levels)
        self.middle = Block([ResBlock(ch, ch, emb_dim, mid, rngs), attention(ch, mid),
                             ResBlock(ch, ch, emb_dim, mid, rngs)])
        out_blocks = []
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = group_layers(levels - 1 - len(out_blocks) // (num_res_blocks + 1))
                seq = [ResBlock(ch + skips.pop(), mult * mc, emb_dim, layers, rngs)]
                ch = mult * mc
                if ds in attention_resolutions:
                    seq.append(attention(ch, layers))
                if level and i == num_res_blocks:
                    seq.append(Upsample(ch, layers))
                    ds //= 2
                out_blocks.append(Block(seq))
        self.output_blocks = nnx.List(out_blocks)
        self.out_norm = _norm(ch, rngs)
        self.out = nnx.Conv(ch, channels, (3, 3), padding="SAME",
                            kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

    def __call__(self, x, t=None):
        if t is None:
            t = jnp.zeros((x.shape[0],), jnp.int32)
        emb = self.time2(jax.nn.silu(self.time1(timestep_embedding(t, self.model_channels))))
        hs = []
        for block in self.input_blocks:
            x = block(x, emb)
            hs.append(x)
        x = self.middle(x, emb)
        for block in self.output_blocks:
            x = block(jnp.concatenate([x, hs.pop()], axis=-1), emb)
        return self.out(jax.nn.silu(self.out_norm(x)))


def switched_layers(model: nnx.Module) -> list[tuple[str, nnx.Module]]:
    """``(path, layer)`` of every switched (binarizable) layer, in module order."""
    return [("/".join(map(str, p)), n) for p, n in nnx.iter_graph(model)
            if isinstance(n, _Switched)]


def set_progress(model: nnx.Module, step: int, *, steps_per_group: int = 1,
                 act_quant_delay: int | None = None) -> None:
    """Set every switch from BinaryDM's progressive schedule at ``step``
    (:func:`bnn_jax.quant.progressive_binarization`): layers of group ``g`` binary once the
    schedule says so, attention activation quantizers on from ``act_quant_delay``."""
    num_groups = getattr(model, "num_groups", None)
    check(num_groups is not None, f"binarydm_progressive needs the unet model, got "
          f"{type(model).__name__}")
    binary, act, _ = progressive_binarization(step, num_groups=num_groups,
                                              steps_per_group=steps_per_group,
                                              act_quant_delay=act_quant_delay)
    # A fresh array per variable: the train state must not hold one buffer twice (donation).
    binary, act = np.asarray(binary), bool(act)
    for _, layer in switched_layers(model):
        layer.binary.set_value(jnp.asarray(binary[layer.group]))
    for _, node in nnx.iter_graph(model):
        if isinstance(node, SwitchedQuantize):
            node.act.set_value(jnp.asarray(act))


def progressive_hook(model, batch, step, *, steps_per_group: int = 1,
                     act_quant_delay: int | None = None) -> None:
    """Step hook ``binarydm_progressive``: :func:`set_progress` for the coming iteration (the
    loop calls it with ``step`` = iterations done, so iteration ``step`` sees the schedule at
    ``step``; use ``every=1, at_start=True``)."""
    del batch
    set_progress(model, step, steps_per_group=steps_per_group, act_quant_delay=act_quant_delay)


def _validate_hook(steps_per_group: int = 1, act_quant_delay: int | None = None) -> None:
    check(isinstance(steps_per_group, int) and steps_per_group >= 1,
          f"binarydm_progressive: steps_per_group must be a positive integer, got "
          f"{steps_per_group!r}")
    check(act_quant_delay is None or (isinstance(act_quant_delay, int) and act_quant_delay >= 0),
          f"binarydm_progressive: act_quant_delay must be None or a non-negative integer, got "
          f"{act_quant_delay!r}")


progressive_hook.validate = _validate_hook

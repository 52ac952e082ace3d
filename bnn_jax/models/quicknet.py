"""QuickNet (Bannink et al. 2021, larq-zoo ``larq_zoo/sota/quicknet.py``).

Stem: float 3x3/s2 conv (C/4) -> BN -> ReLU -> float depthwise 3x3/s2 -> BN (no scale/center)
-> float 1x1 conv (C) -> BN. Sections of residual blocks ``x + BN(ReLU(binconv3x3(x)))``
(ste_sign(1.25) on inputs and kernels, weight clip 1.25, padding with +1); between sections a
transition ReLU -> 2x2/s1 max-pool -> fixed 3x3/s2 blur-pool (depthwise, not trained) -> float
1x1 conv -> BN. Head: ReLU -> global average pool -> float dense. Returns logits (larq-zoo
appends a softmax). ``quicknet_small`` and ``quicknet_large`` are variants of this module.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx

from bnn_jax.models.blocks import Fixed, batch_norm, global_pool
from bnn_jax.nn import QuantConv, QuantLinear

_BINARY = dict(name="ste_sign", clip_value=1.25)
_CLIP = dict(name="weight_clip", clip_value=1.25)


def blurpool_kernel(channels: int) -> np.ndarray:
    """The 3x3 anti-aliasing kernel ``[1,2,1] x [1,2,1] / 16`` per channel (HWIO, I = 1)."""
    k = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0])
    k = k / k.sum()
    return np.repeat(k[:, :, None, None], channels, axis=3).astype(np.float32)


class Transition(nnx.Module):
    """QuickNet's pointwise transition to ``cout`` channels at half the resolution."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
        self.blur = QuantConv(cin, cin, (3, 3), 2, padding="SAME", feature_group_count=cin,
                              use_bias=False, rngs=rngs)
        self.blur.kernel = Fixed(blurpool_kernel(cin))
        # Named apart from the residual blocks' binary "conv", so optimizer groups can tell them.
        self.pointwise = QuantConv(cin, cout, (1, 1), use_bias=False,
                              kernel_init=nnx.initializers.glorot_normal(), rngs=rngs)
        self.bn = batch_norm(cout, rngs, momentum=0.9, epsilon=1e-5)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.max_pool(jax.nn.relu(x), (2, 2), strides=(1, 1), padding="VALID")
        return self.bn(self.pointwise(self.blur(x)))


class Residual(nnx.Module):
    """``x + BN(ReLU(binary_conv3x3(x)))``, the binary conv padded with +1 (larq pad_values)."""

    def __init__(self, c: int, *, rngs: nnx.Rngs, input_quantizer: Any, kernel_quantizer: Any,
                 kernel_constraint: Any):
        self.conv = QuantConv(c, c, (3, 3), padding="SAME", pad_values=1.0, use_bias=False,
                              input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer,
                              kernel_constraint=kernel_constraint,
                              kernel_init=nnx.initializers.glorot_normal(), rngs=rngs)
        self.bn = batch_norm(c, rngs, momentum=0.9, epsilon=1e-5)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.bn(jax.nn.relu(self.conv(x)))


class Model(nnx.Module):
    """QuickNet: stem, then per section ``section_blocks[i]`` residual blocks of width
    ``section_filters[i]`` (a transition first where the width changes), then the head."""

    def __init__(self, *, num_classes: int, input_shape: Sequence[int], rngs: nnx.Rngs,
                 section_blocks: Sequence[int] = (4, 4, 4, 4),
                 section_filters: Sequence[int] = (64, 128, 256, 512),
                 input_quantizer: Any = _BINARY, kernel_quantizer: Any = _BINARY,
                 kernel_constraint: Any = _CLIP):
        if len(section_blocks) != len(section_filters) or section_filters[0] % 4:
            raise ValueError(f"section_blocks {tuple(section_blocks)} and section_filters "
                             f"{tuple(section_filters)} must have the same length, and the "
                             f"first width must be a multiple of 4")
        self.input_shape = tuple(input_shape)
        c0 = section_filters[0]
        he = nnx.initializers.he_normal()
        self.stem_conv = QuantConv(int(input_shape[-1]), c0 // 4, (3, 3), 2, use_bias=False,
                                   kernel_init=he, rngs=rngs)
        self.stem_bn = batch_norm(c0 // 4, rngs)
        self.stem_dw = QuantConv(c0 // 4, c0 // 4, (3, 3), 2, feature_group_count=c0 // 4,
                                 use_bias=False, rngs=rngs)
        self.stem_dw_bn = batch_norm(c0 // 4, rngs, scale=False, center=False)
        self.stem_pw = QuantConv(c0 // 4, c0, (1, 1), use_bias=False, kernel_init=he, rngs=rngs)
        self.stem_pw_bn = batch_norm(c0, rngs)
        layers, c = [], c0
        q = dict(input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer,
                 kernel_constraint=kernel_constraint)
        for n, filters in zip(section_blocks, section_filters):
            for _ in range(n):
                if filters != c:
                    layers.append(Transition(c, filters, rngs=rngs))
                    c = filters
                layers.append(Residual(c, rngs=rngs, **q))
        self.layers = nnx.List(layers)
        self.head = QuantLinear(c, num_classes, kernel_init=nnx.initializers.glorot_normal(),
                                rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits for NHWC images."""
        x = jax.nn.relu(self.stem_bn(self.stem_conv(x)))
        x = self.stem_pw_bn(self.stem_pw(self.stem_dw_bn(self.stem_dw(x))))
        for layer in self.layers:
            x = layer(x)
        return self.head(global_pool(jax.nn.relu(x)))

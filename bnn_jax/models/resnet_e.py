"""ResNet-18 layouts with a real shortcut around every binary conv (larq-zoo).

``binary_resnet_e18``: BinaryResNetE18 (Bethge et al. 2019, "Back to Simplicity"; larq-zoo
``literature/resnet_e.py``): float 7x7/s2 stem -> BN -> ReLU -> 3x3/s2 max-pool -> BN, then
16 :class:`~bnn_jax.models.blocks.ShortcutBlock` (ste_sign(1.25), weight clip 1.25, BN momentum
0.9 / eps 1e-5), ReLU, global pool, float dense. Inputs under 50 pixels get a plain 3x3 stem, as
in larq-zoo. ``birealnet``: Bi-Real Net 18 (Liu et al., ECCV 2018; larq-zoo
``literature/birealnet.py``): float 7x7/s2 stem -> BN -> 3x3/s2 max-pool, the same 16 blocks with
ApproxSign inputs, magnitude-aware sign kernels, weight clip 1, BN momentum 0.8, 'same'-padded
shortcut pooling, then global pool and a float dense. Both return logits (larq-zoo appends a
softmax); larq-zoo's L2 kernel regularizers are training settings, not part of the network.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
from flax import nnx

from bnn_jax.models.blocks import ShortcutBlock, batch_norm, global_pool

_STE = dict(name="ste_sign", clip_value=1.25)
_CLIP = dict(name="weight_clip", clip_value=1.25)


class Model(nnx.Module):
    """Stem, ``2 x blocks[i]`` shortcut blocks of width ``filters[i]`` per stage, head."""

    def __init__(self, *, num_classes: int, input_shape: Sequence[int], rngs: nnx.Rngs,
                 blocks: Sequence[int] = (2, 2, 2, 2),
                 filters: Sequence[int] = (64, 128, 256, 512),
                 input_quantizer: Any = _STE, kernel_quantizer: Any = _STE,
                 kernel_constraint: Any = _CLIP, bn_momentum: float = 0.9,
                 bn_epsilon: float = 1e-5, style: str = "resnet_e"):
        if style not in ("resnet_e", "bireal"):
            raise ValueError(f"style must be one of ['resnet_e', 'bireal'], got {style!r}")
        if len(blocks) != len(filters):
            raise ValueError(f"blocks {tuple(blocks)} and filters {tuple(filters)} must have "
                             "the same length")
        self.input_shape, self.style = tuple(input_shape), style
        bn = dict(momentum=bn_momentum, epsilon=bn_epsilon)
        init = (nnx.initializers.he_normal() if style == "resnet_e"
                else nnx.initializers.glorot_normal())
        self.small = style == "resnet_e" and int(input_shape[0]) < 50
        c = filters[0]
        self.stem = nnx.Conv(int(input_shape[-1]), c, (3, 3) if self.small else (7, 7),
                             strides=1 if self.small else 2, use_bias=False, kernel_init=init,
                             rngs=rngs)
        if not self.small:
            self.stem_bn = batch_norm(c, rngs, **bn)
            if style == "resnet_e":
                self.pool_bn = batch_norm(c, rngs, **bn)
        layers = []
        for stage, (n, f) in enumerate(zip(blocks, filters)):
            for i in range(2 * n):
                stride = 1 if stage == 0 or i else 2
                layers.append(ShortcutBlock(
                    c, f, stride, rngs=rngs, input_quantizer=input_quantizer,
                    kernel_quantizer=kernel_quantizer, kernel_constraint=kernel_constraint,
                    bn=bn, pool_padding="SAME" if style == "bireal" else "VALID"))
                c = f
        self.layers = nnx.List(layers)
        self.head = nnx.Linear(c, num_classes, kernel_init=init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits for NHWC images."""
        x = self.stem(x)
        if not self.small:
            x = self.stem_bn(x)
            if self.style == "resnet_e":
                x = jax.nn.relu(x)
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
            if self.style == "resnet_e":
                x = self.pool_bn(x)
        for layer in self.layers:
            x = layer(x)
        if self.style == "resnet_e":
            x = jax.nn.relu(x)
        return self.head(global_pool(x))

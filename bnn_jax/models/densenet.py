"""BinaryDenseNet 28/37/37-dilated/45 (Bethge et al. 2019, "Back to Simplicity"; larq-zoo
``literature/densenet.py``).

Float 7x7/s2 stem -> BN -> ReLU -> 3x3/s2 max-pool (a plain 3x3 conv for inputs under 50
pixels); dense blocks ``concat(x, binary_conv3x3(BN(x)))`` adding ``growth_rate`` channels
(ste_sign(1.3) inputs and kernels, weight clip 1.3, optional dilation); transitions BN ->
2x2/s2 max-pool (skipped where the next stage is dilated) -> ReLU -> float 1x1 conv to
``round(C // reduction / 32) * 32`` channels; BN -> ReLU -> global pool -> float dense.
Returns logits (larq-zoo appends a softmax).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from bnn_jax.models.blocks import batch_norm, global_pool
from bnn_jax.nn import QuantConv

_STE = dict(name="ste_sign", clip_value=1.3)
_CLIP = dict(name="weight_clip", clip_value=1.3)
_BN = dict(momentum=0.9, epsilon=1e-5)


class DenseLayer(nnx.Module):
    """``concat(x, binary_conv3x3(BN(x)))``: one layer of a binary dense block."""

    def __init__(self, cin: int, growth: int, dilation: int, *, rngs: nnx.Rngs, **quant: Any):
        self.bn = batch_norm(cin, rngs, **_BN)
        self.conv = QuantConv(cin, growth, (3, 3), padding="SAME", kernel_dilation=dilation,
                              use_bias=False, kernel_init=nnx.initializers.glorot_normal(),
                              rngs=rngs, **quant)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate([x, self.conv(self.bn(x))], axis=-1)


class Transition(nnx.Module):
    """BN -> (2x2/s2 max-pool) -> ReLU -> float 1x1 conv narrowing by ``reduction``."""

    def __init__(self, cin: int, reduction: float, pool: bool, *, rngs: nnx.Rngs):
        self.cout = round(cin // reduction / 32) * 32
        self.bn = batch_norm(cin, rngs, **_BN)
        self.pool = pool
        self.conv = nnx.Conv(cin, self.cout, (1, 1), use_bias=False,
                             kernel_init=nnx.initializers.he_normal(), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.bn(x)
        if self.pool:
            x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        return self.conv(jax.nn.relu(x))


class Model(nnx.Module):
    """BinaryDenseNet with ``layers[i]`` dense layers in stage i (defaults: BinaryDenseNet28)."""

    def __init__(self, *, num_classes: int, input_shape: Sequence[int], rngs: nnx.Rngs,
                 layers: Sequence[int] = (6, 6, 6, 5),
                 reduction: Sequence[float] = (2.7, 2.7, 2.2),
                 dilation_rate: Sequence[int] = (1, 1, 1, 1), initial_filters: int = 64,
                 growth_rate: int = 64, input_quantizer: Any = _STE,
                 kernel_quantizer: Any = _STE, kernel_constraint: Any = _CLIP):
        if not len(layers) == len(dilation_rate) == len(reduction) + 1:
            raise ValueError(f"layers {tuple(layers)} and dilation_rate {tuple(dilation_rate)} "
                             f"need one entry per stage and reduction {tuple(reduction)} one "
                             "per transition")
        self.input_shape = tuple(input_shape)
        self.small = int(input_shape[0]) < 50
        he = nnx.initializers.he_normal()
        c = initial_filters
        self.stem = nnx.Conv(int(input_shape[-1]), c, (3, 3) if self.small else (7, 7),
                             strides=1 if self.small else 2, use_bias=False, kernel_init=he,
                             rngs=rngs)
        if not self.small:
            self.stem_bn = batch_norm(c, rngs, **_BN)
        q = dict(input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer,
                 kernel_constraint=kernel_constraint)
        body = []
        for stage, n in enumerate(layers):
            for _ in range(n):
                body.append(DenseLayer(c, growth_rate, dilation_rate[stage], rngs=rngs, **q))
                c += growth_rate
            if stage < len(layers) - 1:
                t = Transition(c, reduction[stage], dilation_rate[stage + 1] == 1, rngs=rngs)
                body.append(t)
                c = t.cout
        self.body = nnx.List(body)
        self.final_bn = batch_norm(c, rngs, **_BN)
        self.head = nnx.Linear(c, num_classes, kernel_init=he, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits for NHWC images."""
        x = self.stem(x)
        if not self.small:
            x = nnx.max_pool(jax.nn.relu(self.stem_bn(x)), (3, 3), strides=(2, 2),
                             padding="SAME")
        for layer in self.body:
            x = layer(x)
        return self.head(global_pool(jax.nn.relu(self.final_bn(x))))

"""A small binary CNN for 8x8 (digits) and 28x28 (MNIST) images.

Full-precision stem convolution and classifier head; in between, Bi-Real blocks (Liu et al., ECCV
2018): ``x + BN(QuantConv(q_in(x)))`` with a real-valued shortcut around every binary
convolution, which keeps the information the sign throws away. Without quantizers it is the
same network in float with ReLU before each convolution.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from bnn_jax.nn import QuantConv


class Model(nnx.Module):
    """Stem conv -> ``depth`` binary residual blocks (2x2 max-pool after ``pool_after``) -> head."""

    def __init__(self, *, num_classes: int, input_shape: Sequence[int], rngs: nnx.Rngs,
                 width: int = 64, depth: int = 3, pool_after: Sequence[int] = (0,),
                 input_quantizer: Any = None, kernel_quantizer: Any = None,
                 kernel_constraint: Any = None, bn_momentum: float = 0.9):
        for name, value, least in (("width", width, 1), ("depth", depth, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"digits_cnn: {name} must be an integer >= {least}, got "
                                 f"{value!r}")
        if not all(isinstance(i, int) and 0 <= i < depth for i in pool_after):
            raise ValueError(f"digits_cnn: pool_after lists block indices in [0, {depth}), got "
                             f"{tuple(pool_after)!r}")
        channels = int(input_shape[-1])
        self.binary_activations = input_quantizer is not None
        self.pool_after = tuple(pool_after)
        self.stem = nnx.Conv(channels, width, (3, 3), use_bias=False, rngs=rngs)
        self.stem_bn = nnx.BatchNorm(width, momentum=bn_momentum, rngs=rngs)
        self.convs = nnx.List([
            QuantConv(width, width, (3, 3), input_quantizer=input_quantizer,
                      kernel_quantizer=kernel_quantizer, kernel_constraint=kernel_constraint,
                      use_bias=False, rngs=rngs)
            for _ in range(depth)])
        self.norms = nnx.List([nnx.BatchNorm(width, momentum=bn_momentum, rngs=rngs)
                               for _ in range(depth)])
        self.head_bn = nnx.BatchNorm(width, momentum=bn_momentum, rngs=rngs)
        self.head = nnx.Linear(width, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits for NHWC images."""
        x = self.stem_bn(self.stem(x))
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            h = x if self.binary_activations else jax.nn.relu(x)
            x = x + norm(conv(h))
            if i in self.pool_after:
                x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        x = jax.nn.relu(self.head_bn(x))
        return self.head(jnp.mean(x, axis=(1, 2)))

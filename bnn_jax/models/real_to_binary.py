"""Real-to-Binary Net (Martinez et al., ICLR 2020; larq-zoo ``literature/real_to_bin_nets.py``,
``RealToBinNetBNNFactory``).

Float 7x7/s2 stem -> BN -> PReLU -> 3x3/s2 max-pool; eight blocks of two half-blocks
``PReLU(binconv3x3(BN(x)) * gate) + shortcut(x)``, where the gate is computed from the conv
input, squeeze-excitation style (global pool -> float dense to C_in/8 + ReLU -> float dense to
C_out + sigmoid), the shortcut is the identity or 2x2/s2 average pool -> float 1x1 conv -> BN
where the width doubles (blocks 3, 5 and 7); global pool -> float dense. ste_sign inputs and
kernels with weight clip; BN momentum 0.99 (Keras epsilon 1e-3). Returns logits (larq-zoo
appends a softmax). larq-zoo's strong-baseline variants (a learned static rescale instead of
the gate) are not built.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
from flax import nnx

from bnn_jax.models.blocks import PReLU, batch_norm, global_pool
from bnn_jax.nn import QuantConv, QuantLinear


class HalfBlock(nnx.Module):
    """One binary half-block of Real-to-Binary Net (Figure 1 of the paper)."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, momentum: float,
                 scaling_r: int, **quant: Any):
        glorot, he = nnx.initializers.glorot_normal(), nnx.initializers.he_normal()
        self.downsample = cin != cout
        if self.downsample:
            self.short_conv = nnx.Conv(cin, cout, (1, 1), use_bias=False, kernel_init=glorot,
                                       rngs=rngs)
            self.short_bn = batch_norm(cout, rngs, momentum=momentum)
        self.bn = batch_norm(cin, rngs, momentum=momentum)
        self.conv = QuantConv(cin, cout, (3, 3), 2 if self.downsample else 1, padding="SAME",
                              use_bias=False, kernel_init=glorot, rngs=rngs, **quant)
        self.reduce = QuantLinear(cin, cin // scaling_r, use_bias=False, kernel_init=he,
                                  rngs=rngs)
        self.expand = QuantLinear(cin // scaling_r, cout, use_bias=False, kernel_init=he,
                                  rngs=rngs)
        self.prelu = PReLU(cout)

    def __call__(self, x: jax.Array) -> jax.Array:
        r = x
        if self.downsample:
            r = nnx.avg_pool(r, (2, 2), strides=(2, 2), padding="SAME")
            r = self.short_bn(self.short_conv(r))
        h = self.bn(x)
        gate = jax.nn.sigmoid(self.expand(jax.nn.relu(self.reduce(global_pool(h)))))
        y = self.conv(h) * gate[:, None, None, :]
        return self.prelu(y) + r


class Model(nnx.Module):
    """Stem, eight two-half-block blocks (width doubles at blocks 3, 5, 7), head."""

    def __init__(self, *, num_classes: int, input_shape: Sequence[int], rngs: nnx.Rngs,
                 filters: int = 64, momentum: float = 0.99, scaling_r: int = 8,
                 input_quantizer: Any = "ste_sign", kernel_quantizer: Any = "ste_sign",
                 kernel_constraint: Any = "weight_clip"):
        self.input_shape = tuple(input_shape)
        self.stem = nnx.Conv(int(input_shape[-1]), filters, (7, 7), strides=2, use_bias=False,
                             kernel_init=nnx.initializers.glorot_normal(), rngs=rngs)
        self.stem_bn = batch_norm(filters, rngs, momentum=momentum)
        self.stem_prelu = PReLU(filters)
        q = dict(input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer,
                 kernel_constraint=kernel_constraint)
        halves, c = [], filters
        for block in range(2, 10):  # larq-zoo numbers the blocks 2..9
            cout = 2 * c if block % 2 == 0 and block > 3 else c
            halves.append(HalfBlock(c, cout, rngs=rngs, momentum=momentum,
                                    scaling_r=scaling_r, **q))
            halves.append(HalfBlock(cout, cout, rngs=rngs, momentum=momentum,
                                    scaling_r=scaling_r, **q))
            c = cout
        self.blocks = nnx.List(halves)
        self.head = nnx.Linear(c, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits for NHWC images."""
        x = self.stem_prelu(self.stem_bn(self.stem(x)))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, half in enumerate(self.blocks):
            x = half(x)
            if i % 2:  # larq-zoo's block_{b}_out, the volumes of attention matching
                self.sow(nnx.Intermediate, "block_out", x, capture_noop=True)
        return self.head(global_pool(x))

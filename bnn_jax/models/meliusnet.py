"""MeliusNet (Bethge et al. 2020; larq-zoo ``literature/meliusnet.py``).

Grouped float stem: 3x3/s2 conv to 32 -> BN -> ReLU -> 3x3 conv in 4 groups -> BN -> ReLU ->
3x3 conv to 64 in 8 groups -> BN -> ReLU -> 2x2/s2 max-pool. Each block is a dense layer
(``concat(x, binconv3x3(BN(x)))``, 64 new channels, the layer of
:class:`bnn_jax.models.densenet.DenseLayer`) followed by an improvement block that adds
``binconv3x3(BN(x))`` to the newest 64 channels; ste_sign(1.3) inputs and kernels, weight clip
1.3. Transitions: BN -> 2x2/s2 max-pool -> ReLU -> float 1x1 conv. Head: BN -> ReLU -> global
pool -> float dense. Returns logits (larq-zoo appends a softmax). Defaults: MeliusNet22.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from bnn_jax.models.blocks import batch_norm, global_pool
from bnn_jax.models.densenet import DenseLayer
from bnn_jax.nn import QuantConv

_STE = dict(name="ste_sign", clip_value=1.3)
_CLIP = dict(name="weight_clip", clip_value=1.3)
_BN = dict(momentum=0.9, epsilon=1e-5)
GROWTH = 64


def _pool(x):
    return nnx.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")


class Improvement(nnx.Module):
    """``x + pad(binconv3x3(BN(x)))``: the correction lands on the last 64 channels of x."""

    def __init__(self, c: int, *, rngs: nnx.Rngs, **quant: Any):
        self.bn = batch_norm(c, rngs, **_BN)
        self.conv = QuantConv(c, GROWTH, (3, 3), padding="SAME", use_bias=False,
                              kernel_init=nnx.initializers.glorot_normal(), rngs=rngs, **quant)

    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.conv(self.bn(x))
        return x + jnp.pad(w, [(0, 0)] * 3 + [(x.shape[-1] - GROWTH, 0)])


class Transition(nnx.Module):
    """BN -> 2x2/s2 max-pool -> ReLU -> float 1x1 conv to ``cout``."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
        self.bn = batch_norm(cin, rngs, **_BN)
        self.conv = nnx.Conv(cin, cout, (1, 1), use_bias=False,
                             kernel_init=nnx.initializers.glorot_normal(), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(jax.nn.relu(_pool(self.bn(x))))


class Model(nnx.Module):
    """Grouped stem, ``num_blocks[i]`` (dense + improvement) blocks per section, a transition
    to ``transition_features[i]`` channels after each section but the last, head."""

    def __init__(self, *, num_classes: int, input_shape: Sequence[int], rngs: nnx.Rngs,
                 num_blocks: Sequence[int] = (4, 5, 4, 4),
                 transition_features: Sequence[int] = (160, 224, 256),
                 input_quantizer: Any = _STE, kernel_quantizer: Any = _STE,
                 kernel_constraint: Any = _CLIP):
        if len(transition_features) != len(num_blocks) - 1:
            raise ValueError(f"transition_features {tuple(transition_features)} needs one entry "
                             f"per section but the last of num_blocks {tuple(num_blocks)}")
        self.input_shape = tuple(input_shape)
        init = nnx.initializers.glorot_normal()
        self.stem = nnx.List([
            nnx.Conv(int(input_shape[-1]), 32, (3, 3), strides=2, use_bias=False,
                     kernel_init=init, rngs=rngs),
            nnx.Conv(32, 32, (3, 3), feature_group_count=4, use_bias=False, kernel_init=init,
                     rngs=rngs),
            nnx.Conv(32, 64, (3, 3), feature_group_count=8, use_bias=False, kernel_init=init,
                     rngs=rngs)])
        self.stem_bn = nnx.List([batch_norm(c, rngs, **_BN) for c in (32, 32, 64)])
        q = dict(input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer,
                 kernel_constraint=kernel_constraint)
        body, c = [], 64
        for i, n in enumerate(num_blocks):
            for _ in range(n):
                body.append(DenseLayer(c, GROWTH, 1, rngs=rngs, **q))
                c += GROWTH
                body.append(Improvement(c, rngs=rngs, **q))
            if i < len(transition_features):
                body.append(Transition(c, transition_features[i], rngs=rngs))
                c = transition_features[i]
        self.body = nnx.List(body)
        self.head_bn = batch_norm(c, rngs, **_BN)
        self.head = nnx.Linear(c, num_classes, kernel_init=init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits for NHWC images."""
        for conv, bn in zip(self.stem, self.stem_bn):
            x = jax.nn.relu(bn(conv(x)))
        x = _pool(x)
        for layer in self.body:
            x = layer(x)
        return self.head(global_pool(jax.nn.relu(self.head_bn(x))))

"""AlexNet-style binary networks of larq-zoo: BinaryAlexNet, XNOR-Net and DoReFa-Net.

One stack of :class:`ConvBN` stages (conv -> optional 3x3/s2 max-pool -> BN, or conv -> BN ->
pool for DoReFa) configured per network, followed by the network's classifier:

* ``binary_alexnet`` (Hubara et al. 2016; larq-zoo ``literature/binary_alex_net.py``): every conv
  binary (ste_sign kernels, weight clip; inputs binary except the first), BN without scale,
  classifier = three binary 1x1 convs on the flattened features, each followed by BN.
* ``xnornet`` (Rastegari et al. 2016; ``literature/xnornet.py``): float 11x11/s4 stem -> BN ->
  ReLU -> pool -> BN, binary convs with ste_sign inputs and XNOR mean-|W| scaled kernels,
  a binary 6x6 'valid' conv and a binary 1x1 conv as the fully connected layers, ReLU, a float
  dense without bias.
* ``dorefanet`` (Zhou et al. 2016; ``literature/dorefanet.py``): float 12x12/s4 stem, convs with
  2-bit DoReFa inputs and unclipped magnitude-aware sign kernels, two such dense layers with BN,
  clip to [0, 1], a float dense.

All return logits (larq-zoo appends a softmax); the L2 kernel regularizer of xnornet is a
training setting and not part of the network.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from bnn_jax.models.blocks import batch_norm
from bnn_jax.nn import QuantConv, QuantLinear

ARCHS = ("binary_alexnet", "xnornet", "dorefanet")


class ConvBN(nnx.Module):
    """``BN(pool(conv(x)))`` (``pool_first``) or ``pool(BN(conv(x)))``; pool = 3x3/s2 max."""

    def __init__(self, cin: int, cout: int, k: int, *, rngs: nnx.Rngs, stride: int = 1,
                 padding: str = "SAME", pool: str | None = None, pool_first: bool = True,
                 bn: dict | None = None, use_bias: bool = False, **quant: Any):
        self.conv = QuantConv(cin, cout, (k, k), stride, padding=padding, use_bias=use_bias,
                              rngs=rngs, **quant)
        self.bn = batch_norm(cout, rngs, **(bn or {})) if bn is not None else None
        self.pool, self.pool_first = pool, pool_first

    def _pool(self, x):
        if self.pool is None:
            return x
        return nnx.max_pool(x, (3, 3), strides=(2, 2), padding=self.pool)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv(x)
        if self.pool_first:
            x = self._pool(x)
            return x if self.bn is None else self.bn(x)
        return self._pool(x if self.bn is None else self.bn(x))


def _out(size: int, k: int, stride: int, padding: str) -> int:
    return -(-size // stride) if padding == "SAME" else (size - k) // stride + 1


class Model(nnx.Module):
    """One of :data:`ARCHS` (``arch``), with its larq-zoo quantizers as defaults."""

    def __init__(self, *, num_classes: int, input_shape: Sequence[int], rngs: nnx.Rngs,
                 arch: str = "binary_alexnet", inflation_ratio: int = 1,
                 activations_k_bit: int = 2):
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {list(ARCHS)}, got {arch!r}")
        self.input_shape, self.arch = tuple(input_shape), arch
        h, cin = int(input_shape[0]), int(input_shape[-1])
        stages: list[ConvBN] = []

        def add(cout, k, stride=1, padding="SAME", pool=None, pool_first=True, **kw):
            nonlocal h, cin
            stages.append(ConvBN(cin, cout, k, rngs=rngs, stride=stride, padding=padding,
                                 pool=pool, pool_first=pool_first, **kw))
            h = _out(h, k, stride, padding)
            if pool is not None:
                h = _out(h, 3, 2, pool)
            cin = cout

        if arch == "binary_alexnet":
            b = dict(kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
                     bn=dict(momentum=0.9, scale=False))
            r = inflation_ratio
            add(64 * r, 11, 4, pool="VALID", **b)
            add(192 * r, 5, pool="VALID", input_quantizer="ste_sign", **b)
            add(384 * r, 3, input_quantizer="ste_sign", **b)
            add(384 * r, 3, input_quantizer="ste_sign", **b)
            add(256, 3, pool="VALID", input_quantizer="ste_sign", **b)
            dims = [h * h * cin, 4096, 4096, num_classes]
            self.classifier = nnx.List([
                ConvBN(i, o, 1, rngs=rngs, input_quantizer="ste_sign",
                       kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
                       bn=dict(momentum=0.9, scale=False))
                for i, o in zip(dims[:-1], dims[1:])])
        elif arch == "xnornet":
            q = dict(input_quantizer="ste_sign", kernel_quantizer="xnor_weight_scale",
                     kernel_constraint="weight_clip")
            bn = dict(momentum=0.9, scale=False, epsilon=1e-4)
            self.stem = QuantConv(cin, 96, (11, 11), 4, padding="SAME", use_bias=False,
                                  rngs=rngs)
            self.stem_bn = batch_norm(96, rngs, momentum=0.9, scale=False, epsilon=1e-5)
            self.pool_bn = batch_norm(96, rngs, **bn)
            h, cin = _out(_out(h, 11, 4, "SAME"), 3, 2, "VALID"), 96
            add(256, 5, pool="VALID", bn=bn, **q)
            add(384, 3, bn=bn, **q)
            add(384, 3, bn=bn, **q)
            add(256, 3, pool="VALID", bn=bn, **q)
            add(4096, 6, padding="VALID", bn=bn, **q)
            add(4096, 1, padding="VALID", bn=dict(momentum=0.9, scale=False), **q)
            self.head = QuantLinear(h * h * 4096, num_classes, use_bias=False, rngs=rngs)
        else:
            q = dict(input_quantizer=dict(name="dorefa", k_bit=activations_k_bit),
                     kernel_quantizer="magnitude_aware_sign_unclipped")
            bn = dict(momentum=0.9, scale=False, epsilon=1e-4)
            self.stem = QuantConv(cin, 96, (12, 12), 4, padding="VALID", rngs=rngs)
            h, cin = _out(h, 12, 4, "VALID"), 96
            add(256, 5, pool="SAME", pool_first=False, bn=bn, **q)
            add(384, 3, pool="SAME", pool_first=False, bn=bn, **q)
            add(384, 3, bn=bn, **q)
            add(256, 3, pool="VALID", pool_first=False, bn=bn, **q)
            dims = [h * h * cin, 4096, 4096]
            self.fc = nnx.List([QuantLinear(i, o, use_bias=False, rngs=rngs, **q)
                                for i, o in zip(dims[:-1], dims[1:])])
            self.fc_bn = nnx.List([batch_norm(o, rngs, **bn) for o in dims[1:]])
            self.head = QuantLinear(4096, num_classes, rngs=rngs)
        self.stages = nnx.List(stages)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits for NHWC images."""
        if self.arch == "xnornet":
            x = jax.nn.relu(self.stem_bn(self.stem(x)))
            x = self.pool_bn(nnx.max_pool(x, (3, 3), strides=(2, 2), padding="VALID"))
        elif self.arch == "dorefanet":
            x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        if self.arch == "binary_alexnet":
            x = x.reshape(x.shape[0], 1, 1, -1)
            for layer in self.classifier:
                x = layer(x)
            return x.reshape(x.shape[0], -1)
        if self.arch == "xnornet":
            return self.head(jax.nn.relu(x).reshape(x.shape[0], -1))
        x = x.reshape(x.shape[0], -1)
        for fc, bn in zip(self.fc, self.fc_bn):
            x = bn(fc(x))
        return self.head(jnp.clip(x, 0.0, 1.0))

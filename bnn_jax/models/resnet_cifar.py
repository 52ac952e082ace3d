"""CIFAR (32x32) networks in the layouts of the ReSTE / IR-Net code bases
(github.com/DravenALG/ReSTE ``model/models_cifar/``; IR-Net's CIFAR code is the same layout).

Every binary conv is ``BN(act(binconv(x)))`` (the code's order: conv -> nonlinearity -> BN;
``act`` = ``"relu"`` as in ReSTE, ``"hardtanh"`` or ``None``); the first conv and the last dense
stay float, and the pooled features pass a BatchNorm1d before the dense.

* ``resnet20``: 16-32-64, 3 blocks per stage, option-A shortcuts (stride-2 subsample + zero-pad
  channels), block ``BN(act(conv2(BN(act(conv1(x)))))) + shortcut(x)``
  (``resnet20.py`` ``BasicBlock_1w1a``);
* ``resnet20_bireal``: the same widths with a shortcut around every conv
  (``resnet20_bireal.py``);
* ``resnet18``: CIFAR stem (3x3 conv, no max-pool), 64-128-256-512, 2 blocks per stage, option-B
  shortcuts (float 1x1 conv + BN) (``resnet18.py``);
* ``vgg_small``: 128-128-P-256-256-P-512-512-P, float first conv, float dense on 512x4x4
  (``vgg_small.py``).

With both quantizers None a network is the same layout in float (the code bases' float
baselines use conv -> BN -> ReLU instead; that order is ``act_order="bn_act"``).

``weight_regularizer=dict(name="biper", tau=...)`` adds BiPer's CIFAR regularizer: called as
``model(x, regularizer=True)`` the network returns ``(logits, regularizer)``, which the
classification task's ``model_regularizer`` field adds to the loss.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from bnn_jax.models.blocks import batch_norm, check_regularizer, global_pool, weight_regularizer
from bnn_jax.nn import QuantConv

ARCHS = ("resnet20", "resnet20_bireal", "resnet18", "vgg_small")
ACTS = {"relu": jax.nn.relu, "hardtanh": lambda x: jnp.clip(x, -1.0, 1.0), None: lambda x: x}
_BN = dict(momentum=0.9, epsilon=1e-5)  # torch BatchNorm2d defaults


class ConvActBN(nnx.Module):
    """``BN(act(conv(x)))`` (or ``act(BN(conv(x)))`` with ``act_order="bn_act"``)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, *, rngs: nnx.Rngs, act: Any,
                 act_order: str = "act_bn", k: int = 3, **quant: Any):
        self.conv = QuantConv(cin, cout, (k, k), stride, padding=k // 2, use_bias=False,
                              kernel_init=nnx.initializers.he_normal(), rngs=rngs, **quant)
        self.bn = batch_norm(cout, rngs, **_BN)
        self.act, self.act_order = act, act_order

    def __call__(self, x: jax.Array) -> jax.Array:
        f = ACTS[self.act]
        if self.act_order == "bn_act":
            return f(self.bn(self.conv(x)))
        return self.bn(f(self.conv(x)))


class Shortcut(nnx.Module):
    """Identity, option A (subsample + zero-pad ``cout/4`` channels each side) or option B
    (float 1x1 conv with the stride + BN)."""

    def __init__(self, cin: int, cout: int, stride: int, option: str, *, rngs: nnx.Rngs):
        self.kind = "identity" if (stride == 1 and cin == cout) else option
        self.pad = cout // 4
        if self.kind == "B":
            self.conv = nnx.Conv(cin, cout, (1, 1), strides=stride, use_bias=False, rngs=rngs)
            self.bn = batch_norm(cout, rngs, **_BN)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kind == "identity":
            return x
        if self.kind == "A":
            return jnp.pad(x[:, ::2, ::2], [(0, 0)] * 3 + [(self.pad, self.pad)])
        return self.bn(self.conv(x))


class BasicBlock(nnx.Module):
    """Two binary convs; ``bireal`` puts the shortcut around each conv instead of the pair."""

    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs, option: str,
                 bireal: bool, **conv: Any):
        self.conv1 = ConvActBN(cin, cout, stride, rngs=rngs, **conv)
        self.conv2 = ConvActBN(cout, cout, rngs=rngs, **conv)
        self.shortcut = Shortcut(cin, cout, stride, option, rngs=rngs)
        self.bireal = bireal

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.bireal:
            h = self.conv1(x) + self.shortcut(x)
            return self.conv2(h) + h
        return self.conv2(self.conv1(x)) + self.shortcut(x)


class Model(nnx.Module):
    """One of :data:`ARCHS` (``arch``) with the given quantizers on every inner conv."""

    def __init__(self, *, num_classes: int, input_shape: Sequence[int], rngs: nnx.Rngs,
                 arch: str = "resnet20", input_quantizer: Any = None,
                 kernel_quantizer: Any = None, kernel_constraint: Any = None,
                 act: str | None = "relu", act_order: str = "act_bn", width: int = 0,
                 weight_regularizer: Any = None):
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {list(ARCHS)}, got {arch!r}")
        if act not in ACTS:
            raise ValueError(f"act must be one of {list(ACTS)}, got {act!r}")
        if act_order not in ("act_bn", "bn_act"):
            raise ValueError(f"act_order must be one of ['act_bn', 'bn_act'], got {act_order!r}")
        check_regularizer(weight_regularizer)
        self.input_shape, self.arch = tuple(input_shape), arch
        # (name, tau) or None: static data of the module
        self.regularizer = (None if weight_regularizer is None else
                            (weight_regularizer["name"], float(weight_regularizer.get("tau", 0))))
        q = dict(input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer,
                 kernel_constraint=kernel_constraint)
        conv = dict(act=act, act_order=act_order)
        cin = int(input_shape[-1])
        if arch == "vgg_small":
            w = width or 128
            chans = [w, w, 2 * w, 2 * w, 4 * w, 4 * w]
            self.convs = nnx.List(
                [ConvActBN(cin, chans[0], rngs=rngs, act="relu", act_order=act_order)]
                + [ConvActBN(a, b, rngs=rngs, **conv, **q) for a, b in zip(chans, chans[1:])])
            side = int(input_shape[0]) // 8
            self.head = nnx.Linear(chans[-1] * side * side, num_classes, rngs=rngs)
            return
        if arch == "resnet18":
            widths, blocks, option = [(width or 64) * m for m in (1, 2, 4, 8)], (2, 2, 2, 2), "B"
        else:
            widths, blocks, option = [(width or 16) * m for m in (1, 2, 4)], (3, 3, 3), "A"
        self.stem = ConvActBN(cin, widths[0], rngs=rngs, act="relu", act_order=act_order)
        layers, c = [], widths[0]
        for stage, (n, w) in enumerate(zip(blocks, widths)):
            for i in range(n):
                stride = 2 if stage and not i else 1
                layers.append(BasicBlock(c, w, stride, rngs=rngs, option=option,
                                         bireal=arch == "resnet20_bireal", **conv, **q))
                c = w
        self.layers = nnx.List(layers)
        self.head_bn = batch_norm(c, rngs, **_BN)
        self.head = nnx.Linear(c, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, regularizer: bool = False):
        """Logits for NHWC images (and, with ``regularizer``, the weight regularizer's value)."""
        logits = self._logits(x)
        if not regularizer:
            return logits
        if self.regularizer is None:
            return logits, jnp.zeros((), jnp.float32)
        name, tau = self.regularizer
        return logits, weight_regularizer(self, dict(name=name, tau=tau))

    def _logits(self, x: jax.Array) -> jax.Array:
        if self.arch == "vgg_small":
            for i, layer in enumerate(self.convs):
                x = layer(x)
                if i in (1, 3, 5):
                    x = nnx.max_pool(x, (2, 2), strides=(2, 2))
            return self.head(x.reshape(x.shape[0], -1))
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.head_bn(global_pool(x)))

"""ImageNet ResNets: the binary ResNet-18/34 of the IR-Net / ReSTE code bases, XNOR-Net / BWN
ResNet-18 (the same layout with their quantizers), and the float torchvision ResNet-18/50 used
as a distillation teacher (quantizable, e.g. the 8-bit ResNet-50 of PokeBNN).

``style="binary"`` (github.com/DravenALG/ReSTE ``model/models_imagenet/resnet18.py`` /
``resnet34.py``): 7x7/s2 float stem -> ReLU -> BN -> 3x3/s2 max-pool; basic blocks with a real
shortcut around each binary conv, ``h = BN(act(conv1(x))) + down(x)``, ``BN(act(conv2(h))) + h``,
``down`` = float 1x1 conv with the stride + BN; global pool -> BatchNorm1d -> float dense.
``style="float"`` (torchvision): stem conv -> BN -> ReLU -> max-pool; basic blocks
``ReLU(BN(conv2(ReLU(BN(conv1 x)))) + down(x))`` or bottlenecks 1x1 -> 3x3 (stride, the v1.5
placement) -> 1x1 x4; global pool -> dense. There the quantizers, when given, apply to every conv
and the dense, or, with ``first_last``, other quantizers to the stem conv and the dense.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
from flax import nnx

from bnn_jax.models.blocks import batch_norm, global_pool
from bnn_jax.models.resnet_cifar import BasicBlock, ConvActBN
from bnn_jax.nn import QuantConv, QuantLinear

DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
          50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3))}
_BN = dict(momentum=0.9, epsilon=1e-5)


class FloatBlock(nnx.Module):
    """torchvision's BasicBlock / Bottleneck (``kind``) with an optional projection."""

    def __init__(self, cin: int, width: int, stride: int, kind: str, *, rngs: nnx.Rngs,
                 **quant: Any):
        spec = ([(3, width, stride), (3, width, 1)] if kind == "basic"
                else [(1, width, 1), (3, width, stride), (1, 4 * width, 1)])
        self.cout = spec[-1][1]
        convs, bns, c = [], [], cin
        for k, o, s in spec:
            convs.append(QuantConv(c, o, (k, k), s, padding=k // 2, use_bias=False,
                                   kernel_init=nnx.initializers.he_normal(), rngs=rngs, **quant))
            bns.append(batch_norm(o, rngs, **_BN))
            c = o
        self.convs, self.bns = nnx.List(convs), nnx.List(bns)
        self.project = stride != 1 or cin != self.cout
        if self.project:
            self.down = QuantConv(cin, self.cout, (1, 1), stride, use_bias=False, rngs=rngs,
                                  **quant)
            self.down_bn = batch_norm(self.cout, rngs, **_BN)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            h = bn(conv(h))
            if i < len(self.convs) - 1:
                h = jax.nn.relu(h)
        r = self.down_bn(self.down(x)) if self.project else x
        return jax.nn.relu(h + r)


class Model(nnx.Module):
    """ResNet-``depth`` in ``style`` "binary" (IR-Net/ReSTE layout) or "float" (torchvision)."""

    def __init__(self, *, num_classes: int, input_shape: Sequence[int], rngs: nnx.Rngs,
                 depth: int = 18, style: str = "binary", input_quantizer: Any = None,
                 kernel_quantizer: Any = None, kernel_constraint: Any = None,
                 act: str | None = "relu", first_last: Any = None):
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {sorted(DEPTHS)}, got {depth!r}")
        if style not in ("binary", "float"):
            raise ValueError(f"style must be one of ['binary', 'float'], got {style!r}")
        kind, blocks = DEPTHS[depth]
        if style == "binary" and kind != "basic":
            raise ValueError(f"style 'binary' has basic blocks only (depth 18 or 34), got "
                             f"depth {depth}")
        self.input_shape, self.style = tuple(input_shape), style
        q = dict(input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer,
                 kernel_constraint=kernel_constraint)
        # The stem conv and the dense may have their own quantizers (AQT's w4a4 ResNet-50 keeps
        # them at 8 bits: ``configs/paper/resnet50_w4_a4_init8_dense8_auto.py``).
        if first_last is not None and (style != "float" or not hasattr(first_last, "keys") or
                                       set(first_last) - {"input_quantizer", "kernel_quantizer"}):
            raise ValueError(f"first_last takes input_quantizer / kernel_quantizer (style "
                             f"'float' only), got {first_last!r}")
        ends = q if first_last is None else dict(first_last)
        ends = {k: ends.get(k) for k in ("input_quantizer", "kernel_quantizer")}
        cin = int(input_shape[-1])
        layers, c = [], 64
        if style == "binary":
            self.stem = ConvActBN(cin, 64, 2, rngs=rngs, act="relu", k=7)
            for stage, n in enumerate(blocks):
                w = 64 * 2 ** stage
                for i in range(n):
                    layers.append(BasicBlock(c, w, 2 if stage and not i else 1, rngs=rngs,
                                             option="B", bireal=True, act=act, **q))
                    c = w
            self.head_bn = batch_norm(c, rngs, **_BN)
            self.head = nnx.Linear(c, num_classes, rngs=rngs)
        else:
            self.stem = QuantConv(cin, 64, (7, 7), 2, padding=3, use_bias=False, rngs=rngs,
                                  **ends, kernel_constraint=kernel_constraint)
            self.stem_bn = batch_norm(64, rngs, **_BN)
            for stage, n in enumerate(blocks):
                for i in range(n):
                    block = FloatBlock(c, 64 * 2 ** stage, 2 if stage and not i else 1, kind,
                                       rngs=rngs, **q)
                    layers.append(block)
                    c = block.cout
            self.head = QuantLinear(c, num_classes, rngs=rngs, **ends)
        self.layers = nnx.List(layers)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits for NHWC images."""
        if self.style == "binary":
            x = self.stem(x)
        else:
            x = jax.nn.relu(self.stem_bn(self.stem(x)))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for layer in self.layers:
            x = layer(x)
            # each block's output (Real-to-Binary's attention matching reads the teacher's)
            self.sow(nnx.Intermediate, "block_out", x, capture_noop=True)
        x = global_pool(x)
        if self.style == "binary":
            x = self.head_bn(x)
        return self.head(x)

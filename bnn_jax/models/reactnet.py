"""ReActNet-A (Liu et al., ECCV 2020; github.com/liuzechun/ReActNet ``mobilenet/2_step2/
reactnet.py``): the MobileNetV1-derived binary network.

Float 3x3/s2 stem to 32 + BN; 13 blocks with the widths 64, 128x2, 256x2, 512x6, 1024x2 (stride
2 where the width changes, except into 64); global pool; float dense. A block is
``RPReLU(x' + BN(binconv3x3(RSign(x))))`` with ``x'`` = x, 2x2-average-pooled when strided,
then ``RPReLU(y + BN(binconv1x1(RSign(y))))``; where the width doubles, the 1x1 conv is two
convs whose outputs (each plus y) are concatenated (the duplicated-channel downsampling).
RSign = learned shift (``move``) then the ApproxSign estimator; RPReLU = shift, PReLU (slope
init 0.25, torch's default), shift; binary weights ``mean|W_c| sign(W)`` with the clipped STE
(the code's ``HardBinaryConv``). The paper's first training step (binary activations, float
weights) is ``kernel_quantizer=None``.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from bnn_jax.models.blocks import PReLU, batch_norm, global_pool
from bnn_jax.nn import LearnableBias, QuantConv

WIDTHS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
_BN = dict(momentum=0.9, epsilon=1e-5)  # torch BatchNorm2d defaults


class RPReLU(nnx.Module):
    """``move -> PReLU -> move`` with eagerly created parameters (ReActNet's move12/prelu1/
    move13)."""

    def __init__(self, c: int):
        self.move_in, self.prelu = LearnableBias(c), PReLU(c, 0.25)
        self.move_out = LearnableBias(c)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.move_out(self.prelu(self.move_in(x)))


class BinaryConvBN(nnx.Module):
    """``BN(binconv(approx_sign(x)))``: ReActNet's sign + HardBinaryConv + BN."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, *, rngs: nnx.Rngs,
                 input_quantizer: Any, kernel_quantizer: Any):
        self.conv = QuantConv(cin, cout, (k, k), stride, padding=k // 2, use_bias=False,
                              input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer,
                              rngs=rngs)
        self.bn = batch_norm(cout, rngs, **_BN)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(x))


class Block(nnx.Module):
    """One ReActNet-A block (``BasicBlock`` of the reference)."""

    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs, **quant: Any):
        if cout not in (cin, 2 * cin):
            raise ValueError(f"a ReActNet block keeps or doubles the width, got {cin}->{cout}")
        self.stride = stride
        # RSign's learned shifts (move11, move21): one per conv input, shared by both 1x1s.
        self.move1, self.move2 = LearnableBias(cin), LearnableBias(cin)
        self.conv3 = BinaryConvBN(cin, cin, 3, stride, rngs=rngs, **quant)
        self.act1 = RPReLU(cin)
        self.pw = nnx.List([BinaryConvBN(cin, cin, 1, 1, rngs=rngs, **quant)
                            for _ in range(cout // cin)])
        self.act2 = RPReLU(cout)

    def __call__(self, x: jax.Array) -> jax.Array:
        r = nnx.avg_pool(x, (2, 2), strides=(2, 2)) if self.stride == 2 else x
        y = self.act1(self.conv3(self.move1(x)) + r)
        s = self.move2(y)
        return self.act2(jnp.concatenate([pw(s) + y for pw in self.pw], axis=-1))


class Model(nnx.Module):
    """ReActNet-A (``widths`` scale it; the reference's are :data:`WIDTHS`)."""

    def __init__(self, *, num_classes: int, input_shape: Sequence[int], rngs: nnx.Rngs,
                 widths: Sequence[int] = WIDTHS, input_quantizer: Any = "approx_sign",
                 kernel_quantizer: Any = "bireal_weight"):
        self.input_shape = tuple(input_shape)
        w = tuple(widths)
        self.stem = nnx.Conv(int(input_shape[-1]), w[0], (3, 3), strides=2, use_bias=False,
                             rngs=rngs)
        self.stem_bn = batch_norm(w[0], rngs, **_BN)
        q = dict(input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer)
        # Stride 2 where the width changes, except the first block (32 -> 64 in the reference).
        self.blocks = nnx.List([
            Block(a, b, 2 if (a != b and i > 1) else 1, rngs=rngs, **q)
            for i, (a, b) in enumerate(zip(w, w[1:]), start=1)])
        self.head = nnx.Linear(w[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits for NHWC images."""
        x = self.stem_bn(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return self.head(global_pool(x))

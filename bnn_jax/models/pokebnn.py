"""PokeBNN (Zhang, Zhang and Lew, CVPR 2022), as google/aqt ``aqt/jax_legacy/jax/imagenet/
pokebnn.py`` builds it with the hyper-parameters of ``configs/pokebnn/pokebnn_config.py``.

* PokeInit: 4x4/s4 'valid' conv to ``init_group`` (32) features -> BN -> DPReLU -> 3x3 conv in
  ``init_group`` groups to 64 -> BN -> DPReLU, both convs 8-bit (weights per output channel,
  inputs with a mean-of-max bound).
* 16 bottlenecks of three :class:`PokeConv` (1x1, 3x3 with the stride, 1x1 to 4x width; ResNet-50
  widths 64-128-256-512 times ``filter_multiplier``).
* PokeConv: binary conv (AQT half-shift binary quantizer: weights ``+-max|W_c|/2``, inputs
  ``+-act_bound/2`` with a fixed bound 3) -> BN (scale initialised 0 in the third conv) -> add the
  conv input reshaped (:func:`reshape_add`: average consecutive channels / zero-pad, 3x3/s2
  average pool) -> add the bottleneck input tiled (third conv only) -> DPReLU -> multiply by the
  squeeze-excitation gate of the conv *input* (4-bit 1x1 convs, signed then unsigned 4-bit
  inputs, hard sigmoid) -> BN.
* Head: global mean -> 8-bit dense.

BatchNorm momentum 0.9, epsilon 1e-5. Departures: AQT keeps the mean-of-max bounds as running
statistics across steps (here each call's batch mean of per-example maxima, see
:mod:`bnn_jax.quant.aqt`); AQT computes in bfloat16 (here float32). AQT's quantization start
steps are the ``weight_quant_start`` / ``act_bound_start`` fields (fractions of training).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from bnn_jax.models.blocks import batch_norm
from bnn_jax.nn import DPReLU, QuantConv, QuantLinear, SqueezeExcite

# (strides, base features) of the 16 bottlenecks (the list in the reference __call__).
LAYOUT = ((1, 64), (1, 64), (1, 64), (2, 128), (1, 128), (1, 128), (1, 128), (2, 256),
          (1, 256), (1, 256), (1, 256), (1, 256), (1, 256), (2, 512), (1, 512), (1, 512))
_BN = dict(momentum=0.9, epsilon=1e-5)


def int8(bits: int = 8, starts: tuple[float, float] = (0.0, 0.0)) -> dict:
    """The 8-bit (or ``bits``) layers' quantizers: per-channel max weights, mean-of-max inputs.

    ``starts``: (weight, input) quantization start as fractions of training (AQT's
    ``weight_quant_start_step`` and ``activation_bound_start_step``; see :func:`aqt`).
    """
    w, a = starts
    return dict(input_quantizer=dict(name="aqt", bits=bits, bound="mean_of_max", start=a),
                kernel_quantizer=dict(name="aqt", bits=bits, per_channel=True, start=w))


def binary(act_bound: float, starts: tuple[float, float] = (0.0, 0.0)) -> dict:
    """PokeConv's quantizers: AQT's half-shift 1-bit code, fixed input bound.

    A fixed bound is AQT's ``initial_bound``, used from step 0, so only the weights have a start.
    """
    return dict(input_quantizer=dict(name="aqt", bits=1, half_shift=True, bound=act_bound),
                kernel_quantizer=dict(name="aqt", bits=1, half_shift=True, per_channel=True,
                                      start=starts[0]))


def reshape_add(r: jax.Array | None, y: jax.Array, method: str) -> jax.Array:
    """``y + r`` with ``r`` brought to ``y``'s shape (the reference ``reshape_add``): fewer
    channels by averaging consecutive groups, more by ``tile`` or ``zeropad``, half the
    resolution by a 3x3/s2 average pool (zero padding counted)."""
    if r is None:
        return y
    cin, cout = r.shape[-1], y.shape[-1]
    if cin > cout:
        k = cin // cout
        r = r[..., :cout * k].reshape(*r.shape[:3], cout, k).mean(axis=-1)
    elif cin < cout:
        if method == "tile":
            r = jnp.tile(r, (1, 1, 1, cout // cin))
        else:
            r = jnp.pad(r, [(0, 0)] * 3 + [(0, cout - cin)])
    if r.shape != y.shape:
        r = nnx.avg_pool(r, (3, 3), strides=(2, 2), padding="SAME")
    return y + r


class PokeConv(nnx.Module):
    """One PokeConv: binary conv with local and (``long``) block shortcuts, DPReLU, SE gate."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, *, rngs: nnx.Rngs,
                 act_bound: float = 3.0, zero_init: bool = False,
                 starts: tuple[float, float] = (0.0, 0.0)):
        self.conv = QuantConv(cin, cout, (kernel, kernel), stride, padding="SAME",
                              use_bias=False, rngs=rngs, **binary(act_bound, starts))
        # The third conv's BN scale starts at 0 ("ResNet does this. It is important.", ref.).
        self.bn = batch_norm(cout, rngs, zero_scale=zero_init, **_BN)
        self.act = DPReLU(cout)
        se = int8(4, starts)
        self.se = SqueezeExcite(cin, cout, reduction=8, **se,
                                hidden_input_quantizer=dict(se["input_quantizer"], signed=False),
                                rngs=rngs)
        self.bn_split = batch_norm(cout, rngs, **_BN)

    def __call__(self, x: jax.Array, r1: jax.Array | None = None) -> jax.Array:
        y = self.bn(self.conv(x))
        y = reshape_add(x, y, "zeropad")
        y = reshape_add(r1, y, "tile")
        y = self.act(y) * self.se(x)
        return self.bn_split(y)


class Bottleneck(nnx.Module):
    """Three PokeConvs (1x1, 3x3/stride, 1x1 to 4x); the block input is the third's r1."""

    def __init__(self, cin: int, features: int, stride: int, *, rngs: nnx.Rngs,
                 act_bound: float, starts: tuple[float, float] = (0.0, 0.0)):
        kw = dict(rngs=rngs, act_bound=act_bound, starts=starts)
        self.convs = nnx.List([
            PokeConv(cin, features, 1, 1, **kw),
            PokeConv(features, features, 3, stride, **kw),
            PokeConv(features, 4 * features, 1, 1, zero_init=True, **kw)])

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.convs[1](self.convs[0](x))
        return self.convs[2](y, r1=x)


class Model(nnx.Module):
    """PokeBNN: PokeInit, 16 bottlenecks (widths x ``filter_multiplier``), 8-bit head.

    ``weight_quant_start`` / ``act_bound_start``: fractions of training before which weights /
    mean-of-max-bounded inputs stay float, once ``config.schedules`` feeds ``progress``
    (google/aqt ``pokebnn_config.py``: weights from epoch 50 of 800, bounds from step 7500).
    """

    def __init__(self, *, num_classes: int, input_shape: Sequence[int], rngs: nnx.Rngs,
                 filter_multiplier: float = 1.0, init_group: int = 32,
                 act_bound: float = 3.0, weight_quant_start: float = 0.0,
                 act_bound_start: float = 0.0):
        if not (isinstance(filter_multiplier, (int, float)) and filter_multiplier > 0):
            raise ValueError(f"filter_multiplier must be a positive number, got "
                             f"{filter_multiplier!r}")
        if not (isinstance(init_group, int) and init_group > 0 and 64 % init_group == 0):
            raise ValueError(f"init_group must be a positive divisor of 64, got {init_group!r}")
        for name, v in (("weight_quant_start", weight_quant_start),
                        ("act_bound_start", act_bound_start)):
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1):
                raise ValueError(f"{name} must be a fraction of training in [0, 1], got {v!r}")
        starts = (float(weight_quant_start), float(act_bound_start))
        self.input_shape = tuple(input_shape)
        self.init_conv = QuantConv(int(input_shape[-1]), init_group, (4, 4), 4,
                                   padding="VALID", use_bias=False, rngs=rngs,
                                   **int8(8, starts))
        self.init_bn = batch_norm(init_group, rngs, **_BN)
        self.init_act = DPReLU(init_group)
        self.init_conv_group = QuantConv(init_group, 64, (3, 3), padding="SAME",
                                         feature_group_count=init_group, use_bias=False,
                                         rngs=rngs, **int8(8, starts))
        self.init_bn_group = batch_norm(64, rngs, **_BN)
        self.init_act_group = DPReLU(64)
        blocks, c = [], 64
        for stride, base in LAYOUT:
            f = int(base * filter_multiplier)
            blocks.append(Bottleneck(c, f, stride, rngs=rngs, act_bound=act_bound,
                                     starts=starts))
            c = 4 * f
        self.blocks = nnx.List(blocks)
        self.head = QuantLinear(c, num_classes, rngs=rngs, **int8(8, starts))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits for NHWC images."""
        x = self.init_act(self.init_bn(self.init_conv(x)))
        x = self.init_act_group(self.init_bn_group(self.init_conv_group(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(jnp.mean(x, axis=(1, 2)))

"""Blocks shared by the CNN zoo: Keras-convention BatchNorm, the binary conv, the real-shortcut
block of Bi-Real Net / BinaryResNetE, fixed (untrained) kernels, named variants of a model, and
weight regularizers of the binarized layers (BiPer's)."""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bnn_jax.nn import QuantConv


class Fixed(nnx.Variable):
    """A constant array of the model (e.g. a blur-pool kernel): saved with it, never trained."""


def batch_norm(c: int, rngs: nnx.Rngs, *, momentum: float = 0.99, epsilon: float = 1e-3,
               scale: bool = True, center: bool = True, zero_scale: bool = False
               ) -> nnx.BatchNorm:
    """``tf.keras.layers.BatchNormalization`` (its defaults: momentum 0.99, epsilon 1e-3);
    ``zero_scale`` starts the scale at 0 (a residual branch that starts as the identity)."""
    init = nnx.initializers.zeros_init() if zero_scale else nnx.initializers.ones_init()
    return nnx.BatchNorm(c, momentum=momentum, epsilon=epsilon, use_scale=scale,
                         use_bias=center, scale_init=init, rngs=rngs)


class PReLU(nnx.Module):
    """``max(x, 0) + alpha_c min(x, 0)`` per channel: Keras ``PReLU(shared_axes=[1, 2])``
    (alpha init 0, the default) or torch ``nn.PReLU(c)`` (``init=0.25``)."""

    def __init__(self, c: int, init: float = 0.0):
        self.alpha = nnx.Param(jnp.full((c,), init, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.maximum(x, 0) + self.alpha[...] * jnp.minimum(x, 0)


def global_pool(x: jax.Array) -> jax.Array:
    """Global average pooling of NHWC features to (N, C)."""
    return jnp.mean(x, axis=(1, 2))


class ShortcutBlock(nnx.Module):
    """``BN(binary_conv3x3(x)) + shortcut(x)``: the Bi-Real Net / BinaryResNetE block.

    The shortcut is the identity, or, when the width changes, 2x2 average pool (stride 2) ->
    float 1x1 conv -> BN (larq-zoo ``birealnet.py`` / ``resnet_e.py`` ``residual_block``).
    """

    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs,
                 input_quantizer: Any, kernel_quantizer: Any, kernel_constraint: Any,
                 bn: dict, pool_padding: str = "VALID"):
        self.downsample = cin != cout
        self.pool_padding = pool_padding
        init = nnx.initializers.glorot_normal()
        if self.downsample:
            self.short_conv = nnx.Conv(cin, cout, (1, 1), use_bias=False, kernel_init=init,
                                       rngs=rngs)
            self.short_bn = batch_norm(cout, rngs, **bn)
        self.conv = QuantConv(cin, cout, (3, 3), stride, padding="SAME", use_bias=False,
                              input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer,
                              kernel_constraint=kernel_constraint, kernel_init=init, rngs=rngs)
        self.bn = batch_norm(cout, rngs, **bn)

    def __call__(self, x: jax.Array) -> jax.Array:
        r = x
        if self.downsample:
            r = nnx.avg_pool(r, (2, 2), strides=(2, 2), padding=self.pool_padding)
            r = self.short_bn(self.short_conv(r))
        return self.bn(self.conv(x)) + r


def variant(base: type, name: str, doc: str, **defaults: Any) -> type:
    """A subclass of ``base`` whose constructor defaults are ``defaults`` (a named zoo variant,
    e.g. QuickNetSmall = QuickNet with other section widths); its signature shows them."""
    sig = inspect.signature(base.__init__)
    unknown = set(defaults) - set(sig.parameters)
    if unknown:
        raise TypeError(f"{base.__name__} has no field(s) {sorted(unknown)}")
    params = [p.replace(default=defaults[p.name]) if p.name in defaults else p
              for p in sig.parameters.values()]

    def __init__(self, **kwargs):
        base.__init__(self, **{**defaults, **kwargs})

    __init__.__signature__ = sig.replace(parameters=params)
    return type(base)(name, (base,), {"__init__": __init__, "__doc__": doc,
                                      "__module__": base.__module__})


REGULARIZERS = ("biper",)


def check_regularizer(spec: Any) -> None:
    """Reject a ``weight_regularizer`` field other than None or ``dict(name="biper", tau=...)``."""
    if spec is None:
        return
    spec = dict(spec)
    if spec.get("name") not in REGULARIZERS or set(spec) - {"name", "tau"}:
        raise ValueError(f"weight_regularizer must be None or dict(name=..., tau=...) with name "
                         f"one of {list(REGULARIZERS)}, got {spec!r}")
    tau = spec.get("tau", 0.0)
    if not isinstance(tau, (int, float)) or isinstance(tau, bool) or tau < 0:
        raise ValueError(f"weight_regularizer.tau must be a non-negative number, got {tau!r}")


def weight_regularizer(model: nnx.Module, spec: Any) -> jax.Array:
    """The regularizer ``spec`` over the model's binarized convs (those with a kernel quantizer).

    ``biper``: ``sum_layers tau mean(0.5 - 0.5 cos(2 omega0 W))`` on the latent kernels, each
    layer's ``omega0`` from its BiPer kernel quantizer (edmav4/BiPer ``cifar10/main.py`` l. 281-287:
    every ``BinarizeConv2d``, weight ``module.tau``, frequency ``module.freq``).
    """
    from bnn_jax.quant.biper import OMEGA0, biper_regularizer

    spec = dict(spec)
    total = jnp.zeros((), jnp.float32)
    for _, node in nnx.iter_graph(model):
        q = getattr(node, "kernel_quantizer", None)
        if isinstance(node, QuantConv) and q is not None:
            total = total + biper_regularizer(node.kernel[...],
                                              omega0=q.params.get("omega0", OMEGA0),
                                              tau=float(spec.get("tau", 0.0)))
    return total

"""A multilayer perceptron: full-precision first and last layers, quantized hidden layers.

With quantizers it is the BinaryNet MLP (Hubara et al., 2016): Linear -> BatchNorm, with the sign
of the next layer's input quantizer as the nonlinearity; without, a float MLP with ReLU.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bnn_jax.nn import QuantLinear


class Model(nnx.Module):
    """MLP on flattened images; ``hidden`` widths, quantized layers between stem and head."""

    def __init__(self, *, num_classes: int, input_shape: Sequence[int], rngs: nnx.Rngs,
                 hidden: Sequence[int] = (256, 256), input_quantizer: Any = None,
                 kernel_quantizer: Any = None, kernel_constraint: Any = None,
                 bn_momentum: float = 0.9):
        if not hidden or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0
                                 for w in hidden):
            raise ValueError(f"mlp: hidden must be one or more positive integer widths, got "
                             f"{hidden!r}")
        widths = [int(np.prod(input_shape)), *hidden]
        self.binary_activations = input_quantizer is not None
        self.stem = nnx.Linear(widths[0], widths[1], rngs=rngs)
        self.stem_bn = nnx.BatchNorm(widths[1], momentum=bn_momentum, rngs=rngs)
        self.layers = nnx.List([
            QuantLinear(a, b, input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer,
                        kernel_constraint=kernel_constraint, use_bias=False, rngs=rngs)
            for a, b in zip(widths[1:-1], widths[2:])])
        self.norms = nnx.List([nnx.BatchNorm(b, momentum=bn_momentum, rngs=rngs)
                               for b in widths[2:]])
        self.head = nnx.Linear(widths[-1], num_classes, rngs=rngs)

    def _act(self, x: jax.Array) -> jax.Array:
        # Binary layers binarize their own input; a float MLP needs a nonlinearity here.
        return x if self.binary_activations else jax.nn.relu(x)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits for a batch of images (any shape; flattened)."""
        x = jnp.reshape(x, (x.shape[0], -1))
        x = self._act(self.stem_bn(self.stem(x)))
        for layer, norm in zip(self.layers, self.norms):
            x = self._act(norm(layer(x)))
        return self.head(x)

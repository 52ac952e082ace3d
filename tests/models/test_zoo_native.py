"""Every CNN of the zoo traces a forward pass at its native resolution, batch 1, by name."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from bnn_jax import models

IMAGENET = ["quicknet_small", "quicknet", "quicknet_large", "birealnet", "binary_resnet_e18",
            "binary_densenet28", "binary_densenet37", "binary_densenet37_dilated",
            "binary_densenet45", "meliusnet22", "real_to_binary_net", "xnornet", "dorefanet",
            "binary_alexnet", "pokebnn_0.5x", "pokebnn_1.0x", "pokebnn_2.0x", "reactnet_a",
            "bireal_resnet18", "bireal_resnet34", "irnet_resnet18", "irnet_resnet34",
            "xnor_resnet18", "bwn_resnet18", "resnet18", "resnet50", "resnet50_int8"]
CIFAR = ["resnet20", "resnet20_bireal", "resnet18_cifar", "vgg_small"]


def _logits_shape(name, shape, classes):
    def forward():
        m = models.build(dict(name=name), num_classes=classes, input_shape=shape,
                         rngs=nnx.Rngs(0))
        m.eval()
        return m(jnp.zeros((1, *shape)))

    return jax.eval_shape(forward).shape


def test_every_zoo_cnn_is_registered():
    assert set(IMAGENET + CIFAR) <= set(models.names())


@pytest.mark.slow  # tracing 31 networks at 224x224 takes a minute or more on a shared CPU
@pytest.mark.parametrize("name", IMAGENET + CIFAR)
def test_native_forward_shape(name):
    shape, classes = ((32, 32, 3), 10) if name in CIFAR else ((224, 224, 3), 1000)
    assert _logits_shape(name, shape, classes) == (1, classes)

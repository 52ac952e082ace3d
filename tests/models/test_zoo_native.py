"""Every CNN of the zoo trains one step and runs an eval forward at its native resolution."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
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


def test_every_zoo_cnn_is_registered():
    assert set(IMAGENET + CIFAR) <= set(models.names())


@pytest.mark.slow  # compiling 31 training steps at 224x224 takes several minutes on a shared CPU
@pytest.mark.parametrize("name", IMAGENET + CIFAR)
def test_native_train_step_and_forward(name):
    shape, classes = ((32, 32, 3), 10) if name in CIFAR else ((224, 224, 3), 1000)
    model = models.build(dict(name=name), num_classes=classes, input_shape=shape,
                         rngs=nnx.Rngs(0))
    # Batch 2: a batch-1 BatchNorm after a dense layer (XNOR-Net's, AlexNet's) outputs zeros.
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, *shape)), jnp.float32)
    y = jnp.asarray([0, classes - 1])
    opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        def loss(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
        value, grads = nnx.value_and_grad(loss)(model)
        opt.update(model, grads)
        return value, grads

    before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
    value, grads = step(model, opt)
    assert np.isfinite(float(value))
    # Every gradient is finite and the step moves the weights, so the whole network is trainable.
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before,
                                         nnx.state(model, nnx.Param)))
    assert any(moved)
    model.eval()
    out = model(x)
    assert out.shape == (2, classes) and bool(jnp.all(jnp.isfinite(out)))

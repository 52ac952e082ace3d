"""CIFAR and ImageNet families: trainable parameter counts against the reference code's layers
counted by hand (conv k*k*cin*cout, BatchNorm 2c, Linear in*out+out), forward passes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import models

B = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign")


def conv(k, cin, cout):
    return k * k * cin * cout


def bn(c):
    return 2 * c


def linear(i, o, bias=True):
    return i * o + (o if bias else 0)


def trainable(name, shape, classes, **fields):
    m = nnx.eval_shape(lambda: models.build(dict(name=name, **fields), num_classes=classes,
                                            input_shape=shape, rngs=nnx.Rngs(0)))
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(m, nnx.Param)))


def resnet20_count():
    """ReSTE models_cifar/resnet20.py resnet20_1w1a: stem, 3x3 blocks, BN1d, linear."""
    n = conv(3, 3, 16) + bn(16)
    c = 16
    for w in (16, 32, 64):
        for _ in range(3):
            n += conv(3, c, w) + bn(w) + conv(3, w, w) + bn(w)  # option A: no parameters
            c = w
    return n + bn(64) + linear(64, 10)


def resnet18_cifar_count():
    """ReSTE models_cifar/resnet18.py: option-B shortcuts (1x1 conv + BN)."""
    n = conv(3, 3, 64) + bn(64)
    c = 64
    for stage, w in enumerate((64, 128, 256, 512)):
        for i in range(2):
            n += conv(3, c, w) + bn(w) + conv(3, w, w) + bn(w)
            if stage and not i:
                n += conv(1, c, w) + bn(w)
            c = w
    return n + bn(512) + linear(512, 10)


def vgg_small_count():
    ch = [3, 128, 128, 256, 256, 512, 512]
    return (sum(conv(3, a, b) + bn(b) for a, b in zip(ch, ch[1:]))
            + linear(512 * 4 * 4, 10))


@pytest.mark.parametrize("name,count", [("resnet20", resnet20_count()),
                                        ("resnet20_bireal", resnet20_count()),
                                        ("resnet18_cifar", resnet18_cifar_count()),
                                        ("vgg_small", vgg_small_count())])
def test_cifar_parameter_counts(name, count):
    assert trainable(name, (32, 32, 3), 10, **B) == count
    assert trainable(name, (32, 32, 3), 10) == count  # the float baseline has the same arrays


@pytest.mark.slow  # eager forward passes: ~40 s on a shared CPU
def test_cifar_forward_option_a_and_bireal_differ():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
    outs = []
    for name in ("resnet20", "resnet20_bireal"):
        m = models.build(dict(name=name, **B), num_classes=10, input_shape=(32, 32, 3),
                         rngs=nnx.Rngs(0))
        m.eval()
        outs.append(np.asarray(m(x)))
        assert outs[-1].shape == (2, 10) and np.all(np.isfinite(outs[-1]))
    assert not np.allclose(outs[0], outs[1])  # same arrays, different wiring


def test_bad_arch_is_rejected():
    with pytest.raises(ValueError, match="arch must be one of"):
        models.build(dict(name="resnet_cifar", arch="resnet56"), num_classes=10,
                     input_shape=(32, 32, 3), rngs=nnx.Rngs(0))

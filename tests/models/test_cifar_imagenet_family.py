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


def torchvision_count(depth):
    """torchvision resnet18/resnet50 parameters, layer by layer."""
    n = conv(7, 3, 64) + bn(64)
    c = 64
    bottleneck = depth == 50
    for stage, blocks in enumerate((2, 2, 2, 2) if depth == 18 else (3, 4, 6, 3)):
        w = 64 * 2 ** stage
        for i in range(blocks):
            if bottleneck:
                out = 4 * w
                n += conv(1, c, w) + bn(w) + conv(3, w, w) + bn(w) + conv(1, w, out) + bn(out)
            else:
                out = w
                n += conv(3, c, w) + bn(w) + conv(3, w, w) + bn(w)
            if c != out or (stage and not i):
                n += conv(1, c, out) + bn(out)
            c = out
    return n + linear(c, 1000)


def binary_resnet_count(depth, down="conv"):
    """IR-Net/ReSTE binary ResNet: torchvision basic blocks + a BatchNorm1d before the dense;
    Bi-Real (``down="pool"``) has no BatchNorm1d."""
    n = conv(7, 3, 64) + bn(64)
    c = 64
    for stage, blocks in enumerate((2, 2, 2, 2) if depth == 18 else (3, 4, 6, 3)):
        w = 64 * 2 ** stage
        for i in range(blocks):
            n += conv(3, c, w) + bn(w) + conv(3, w, w) + bn(w)
            if c != w:
                n += conv(1, c, w) + bn(w)
            c = w
    return n + (bn(512) if down == "conv" else 0) + linear(512, 1000)


def binary_macs(depth):
    """Binary 3x3 MACs of a ResNet-18/34 at 224 (stages at 56, 28, 14, 7)."""
    total, c = 0, 64
    for stage, blocks in enumerate((2, 2, 2, 2) if depth == 18 else (3, 4, 6, 3)):
        w, side = 64 * 2 ** stage, 56 // 2 ** stage
        for _ in range(blocks):
            total += side * side * 9 * (c * w + w * w)
            c = w
    return total


@pytest.mark.parametrize("name,count", [
    ("resnet18", torchvision_count(18)), ("resnet50", torchvision_count(50)),
    ("resnet50_int8", torchvision_count(50)),
    ("irnet_resnet18", binary_resnet_count(18)), ("irnet_resnet34", binary_resnet_count(34)),
    ("xnor_resnet18", binary_resnet_count(18)), ("bwn_resnet18", binary_resnet_count(18)),
    ("bireal_resnet18", binary_resnet_count(18, "pool")),
    ("bireal_resnet34", binary_resnet_count(34, "pool"))])
def test_imagenet_parameter_counts(name, count):
    assert trainable(name, (224, 224, 3), 1000) == count


def test_hand_counts_equal_published_totals():
    # torchvision's documented parameter counts (resnet18 11,689,512; resnet50 25,557,032) and
    # He et al. 2016 Table 6 (ResNet-20: 0.27 M) check the layer-by-layer counts above.
    assert torchvision_count(18) == 11_689_512 and torchvision_count(50) == 25_557_032
    assert round(resnet20_count() / 1e6, 2) == 0.27


@pytest.mark.parametrize("name,depth", [("bireal_resnet18", 18), ("bireal_resnet34", 34),
                                        ("irnet_resnet18", 18)])
def test_binary_resnet_bops_and_flops(name, depth):
    from bnn_jax.analysis import cost

    m = nnx.eval_shape(lambda: models.build(dict(name=name), num_classes=1000,
                                            input_shape=(224, 224, 3), rngs=nnx.Rngs(0)))
    t = cost.analyze(m, (224, 224, 3)).totals()
    bops = binary_macs(depth)
    floats = 112 * 112 * conv(7, 3, 64) + 512 * 1000
    floats += sum(side * side * c * 2 * c for side, c in ((28, 64), (14, 128), (7, 256)))
    assert t["bops"] == bops and t["flops"] == floats + bops / 64


def reactnet_count():
    """liuzechun/ReActNet mobilenet/2_step2/reactnet.py, module by module."""
    widths = [32, 64, 128, 128, 256, 256] + [512] * 6 + [1024] * 2
    n = conv(3, 3, 32) + bn(32)
    for a, b in zip(widths, widths[1:]):
        n += a + conv(3, a, a) + bn(a) + 3 * a          # move11, 3x3, bn1, move12/prelu1/move13
        n += a + (b // a) * (conv(1, a, a) + bn(a)) + 3 * b  # move21, 1x1 (x2), bn2, moves/prelu
    return n + linear(1024, 1000)


def test_reactnet_a_count_and_bops():
    from bnn_jax.analysis import cost

    m = nnx.eval_shape(lambda: models.build(dict(name="reactnet_a"), num_classes=1000,
                                            input_shape=(224, 224, 3), rngs=nnx.Rngs(0)))
    params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(m, nnx.Param)))
    # per block: the moves hold one learned shift per input channel
    assert params == reactnet_count()
    t = cost.analyze(m, (224, 224, 3)).totals()
    assert t["macs_by_precision"]["32"] == 112 * 112 * conv(3, 3, 32) + 1024 * 1000


@pytest.mark.slow  # eager forward: ~45 s on a shared CPU
def test_reactnet_small_forward_and_doubling_block():
    m = models.build(dict(name="reactnet", widths=(8, 16, 32, 32)), num_classes=5,
                     input_shape=(16, 16, 3), rngs=nnx.Rngs(0))
    m.eval()
    out = m(jnp.asarray(np.random.default_rng(0).standard_normal((2, 16, 16, 3)), jnp.float32))
    assert out.shape == (2, 5) and bool(jnp.all(jnp.isfinite(out)))
    assert len(m.blocks[1].pw) == 2 and m.blocks[1].stride == 2  # 16 -> 32: duplicated 1x1s
    with pytest.raises(ValueError, match="keeps or doubles"):
        models.build(dict(name="reactnet", widths=(8, 24)), num_classes=5,
                     input_shape=(16, 16, 3), rngs=nnx.Rngs(0))

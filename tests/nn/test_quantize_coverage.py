"""quantize() on the layer types and placements user models have: stacked (vmapped/scanned)
layers, nnx.Embed, nnx.ConvTranspose, layers in nnx.List and dicts, the keywords Flax passes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from bnn_jax import nn as bnn


def _sign(a):
    return np.where(np.asarray(a) >= 0, 1.0, -1.0).astype(np.float32)


class Block(nnx.Module):
    def __init__(self, rngs):
        self.fc = nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, x):
        return x + self.fc(x)


class Stack(nnx.Module):
    def __init__(self, rngs, n=3):
        @nnx.split_rngs(splits=n)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return Block(rngs)

        self.layers = make(rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def step(x, b):
            return b(x)

        return step(x, self.layers)


def test_stacked_layers_keep_their_parameters_and_run_per_layer():
    m = Stack(nnx.Rngs(0))
    kernel = m.layers.fc.kernel
    report = bnn.quantize(m, [(".*", "ste_sign", "ste_sign")], strict=True)
    assert [r.path for r in report.replaced] == ["layers/fc"]
    assert m.layers.fc.kernel is kernel and kernel.shape == (3, 4, 4)
    x = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    want = x
    w, b = np.asarray(kernel[...]), np.asarray(m.layers.fc.bias[...])
    for i in range(3):
        want = want + _sign(want) @ _sign(w[i]) + b[i]
    np.testing.assert_allclose(m(jnp.asarray(x)), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="call it inside the nnx.scan"):
        m.layers.fc(jnp.asarray(x))


def test_stacked_layers_learned_arrays():
    m = Stack(nnx.Rngs(0))
    bnn.quantize(m, [(".*", dict(name="lsq", bits=2), None)])
    step = m.layers.fc.kernel_step[...]
    q = bnn.as_quantizer(dict(name="lsq", bits=2))
    want = np.stack([np.asarray(q.init(w)["step"]) for w in np.asarray(m.layers.fc.kernel[...])])
    np.testing.assert_allclose(np.asarray(step).reshape(want.shape), want, rtol=1e-6)
    assert m(jnp.ones((2, 4))).shape == (2, 4)
    with pytest.raises(ValueError, match="stacked .* layer cannot do inside its scan"):
        bnn.quantize(m, [(".*", None, dict(name="lsq", bits=2))])


def test_embed_lookup_and_attend():
    class Tied(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(10, 6, rngs=rngs)

        def __call__(self, ids):
            return self.embed.attend(self.embed(ids))

    m = Tied(nnx.Rngs(0))
    table = np.asarray(m.embed.embedding[...], np.float64)
    bnn.quantize(m, [("embed", dict(name="tbt_weight", channel_axis=0), "ste_sign")])
    assert m.embed.embedding.shape == (10, 6)
    tq = np.sign(table) * np.abs(table).mean(axis=1, keepdims=True)  # TBT: a per-row scale
    ids = jnp.asarray([[1, 4, 9], [0, 0, 3]])
    np.testing.assert_allclose(m.embed(ids), tq[np.asarray(ids)], rtol=1e-6)
    np.testing.assert_allclose(m(ids), _sign(tq[np.asarray(ids)]) @ tq.T, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="integer token ids"):
        m.embed(jnp.ones((2,)))


def test_conv_transpose_and_containers():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.ups = nnx.List([nnx.ConvTranspose(3, 2, (3, 3), strides=2, rngs=rngs)])
            self.named = nnx.data({"a": nnx.Conv(2, 2, (3, 3), padding=[(2, 0), (1, 1)],
                                                 rngs=rngs)})

        def __call__(self, x):
            return self.named["a"](self.ups[0](x))

    m = Net(nnx.Rngs(0))
    report = bnn.quantize(m, [(".*", "ste_sign", "ste_sign")], strict=True)
    assert sorted(r.path for r in report.replaced) == ["named/a", "ups/0"]
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 4, 4, 3)).astype(np.float32))
    up = m.ups[0]
    want = lax.conv_transpose(jnp.asarray(_sign(x)), jnp.asarray(_sign(up.kernel[...])),
                              (2, 2), "SAME") + up.bias[...]
    np.testing.assert_allclose(up(x), want, rtol=1e-6)
    assert m(x).shape == (1, 8, 8, 2)


def test_flax_call_keywords_are_accepted():
    mha = nnx.MultiHeadAttention(num_heads=2, in_features=8, decode=False, rngs=nnx.Rngs(0))

    class M(nnx.Module):
        def __init__(self):
            self.attn = mha

    m = M()
    bnn.quantize(m, [(".*", "ste_sign", "ste_sign")], strict=True)
    assert isinstance(m.attn.query, bnn.QuantLinearGeneral)
    x = jnp.ones((1, 3, 8))
    assert m.attn(x, out_sharding=None, qkv_sharding=None).shape == (1, 3, 8)
    mesh = jax.make_mesh((1,), ("d",), devices=jax.devices()[:1])
    sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    for layer, inp in ((bnn.QuantLinear(8, 4, rngs=nnx.Rngs(0)), x),
                       (bnn.QuantConv(8, 4, (1, 1), rngs=nnx.Rngs(0)), x[:, :, None]),
                       (bnn.QuantEinsum("btd,dh->bth", (8, 4), rngs=nnx.Rngs(0)), x),
                       (bnn.QuantEmbed(5, 8, rngs=nnx.Rngs(0)), jnp.asarray([[1, 2]]))):
        out = nnx.jit(lambda m, v: m(v, out_sharding=sh))(layer, inp)
        np.testing.assert_array_equal(out, layer(inp))

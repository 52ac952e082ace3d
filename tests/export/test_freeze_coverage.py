"""freeze covers what quantize produces: explicit-padding convs, stacked layers, embeddings,
attention projections; a float fallback (transposed convs) is reported; the Flax keywords."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import export
from bnn_jax import nn as bnn


class OneConv(nnx.Module):
    def __init__(self, padding, stride, pad_values, act, c=40):
        self.conv = bnn.QuantConv(c, 6, (3, 3), stride, padding=padding, pad_values=pad_values,
                                  input_quantizer=act, kernel_quantizer="magnitude_aware_sign",
                                  rngs=nnx.Rngs(0))

    def __call__(self, x):
        return self.conv(x)


X = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 6, 40)).astype(np.float32))


@pytest.mark.parametrize("padding,stride", [([(1, 1), (1, 1)], 2), ([(0, 0), (0, 0)], 1),
                                            ([(2, 0), (1, 3)], 2), ("CIRCULAR", 1),
                                            ("REFLECT", 2), (1, 1)])
def test_padded_convs_are_packed_and_exact(padding, stride):
    for pad_values, act in ((0.0, "ste_sign"), (1.0, "ste_sign"), (0.0, "ste_heaviside")):
        if pad_values and padding in ("CIRCULAR", "REFLECT"):
            continue
        m = OneConv(padding, stride, pad_values, act)
        frozen, (rec,) = export.freeze(m)
        assert rec.frozen and rec.activations in ("binary", "bool"), rec
        np.testing.assert_allclose(frozen(X), m(X), rtol=1e-5, atol=1e-5)


class Block(nnx.Module):
    def __init__(self, rngs):
        self.attn = nnx.Einsum("BTD,DNH->BTNH", (16, 2, 8), rngs=rngs)
        self.out = nnx.Einsum("BTNH,NHD->BTD", (2, 8, 16), (16,), rngs=rngs)

    def __call__(self, x):
        return x + self.out(self.attn(x))


class Decoder(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(20, 16, rngs=rngs)

        @nnx.split_rngs(splits=2)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return Block(rngs)

        self.blocks = make(rngs)
        self.up = nnx.ConvTranspose(16, 4, (2,), strides=2, rngs=rngs)

    def __call__(self, ids):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def step(x, b):
            return b(x)

        x = step(self.embed(ids), self.blocks)
        return self.embed.attend(x), self.up(x)


def test_stacked_einsums_embedding_and_fallback(tmp_path):
    m = Decoder(nnx.Rngs(0))
    bnn.quantize(m, [("embed", dict(name="bipft_weight", layerwise=False), "ste_sign"),
                     (".*", "ste_sign", "ste_sign")], strict=True)
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 20, size=(3, 5)))
    want = m(ids)
    frozen, records = export.freeze(m)
    rec = {r.path: r for r in records}
    assert rec["blocks/attn"].frozen and rec["blocks/out"].frozen
    assert rec["embed"].frozen and rec["embed"].activations == "binary"
    assert not rec["up"].frozen and "QuantConvTranspose is not packed" in rec["up"].reason
    # Stacked planes: one packed (K words, N) kernel per layer of the stack.
    assert frozen.blocks.attn.w_sign.shape == (2, 1, 16)
    assert frozen.embed.w_sign.shape == (20, 1) and frozen.embed.scale.shape == (20,)
    got = frozen(ids)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    path = str(tmp_path / "f.npz")
    export.save(frozen, path, records)
    fresh = Decoder(nnx.Rngs(5))
    bnn.quantize(fresh, [("embed", dict(name="bipft_weight", layerwise=False), "ste_sign"),
                         (".*", "ste_sign", "ste_sign")])
    for g, w in zip(export.load(path, fresh)(ids), got):
        np.testing.assert_array_equal(g, w)


def test_frozen_attention_projections_take_flax_keywords():
    class M(nnx.Module):
        def __init__(self):
            self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=32, decode=False,
                                               rngs=nnx.Rngs(0))

        def __call__(self, x):
            return self.attn(x)

    m = M()
    bnn.quantize(m, [(".*", "ste_sign", "ste_sign")])
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 32)).astype(np.float32))
    frozen, records = export.freeze(m)
    assert all(r.frozen for r in records) and len(records) == 4
    np.testing.assert_allclose(frozen(x), m(x), rtol=1e-5, atol=1e-5)
    mesh = jax.make_mesh((1,), ("d",), devices=jax.devices()[:1])
    sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    out = nnx.jit(lambda f, v: f.attn(v, out_sharding=sh, qkv_sharding=sh))(frozen, x)
    np.testing.assert_allclose(out, m(x), rtol=1e-5, atol=1e-5)


def test_freeze_linen_packs_and_falls_back():
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(40, (3, 3), padding=[(1, 1), (1, 1)], name="conv")(x)
            x = nn.Einsum((40, 8), "bhwc,cd->bhwd", name="mix")(x)
            return nn.Dense(5, name="fc")(x.mean((1, 2)))

    q = bnn.quantize_linen(Net(), [(".*", "ste_sign", "ste_sign")])
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 5, 5, 3)).astype(np.float32))
    v = q.init(jax.random.key(0), x)
    frozen, fv, records = export.freeze_linen(q, v, x)
    rec = {r.path: r for r in records}
    assert rec["conv"].frozen and rec["fc"].frozen and not rec["mix"].frozen
    assert "Einsum is not packed" in rec["mix"].reason
    assert "conv" not in fv["params"] and "kernel" in fv["params"]["mix"]  # packed copy only
    np.testing.assert_allclose(frozen.apply(fv, x), q.apply(v, x), rtol=1e-5, atol=1e-5)

"""Binarizing NNX models written without bnn_jax in mind, end to end.

Three models in the styles users bring (a residual CNN with PyTorch-style explicit padding, a
ViT on ``nnx.MultiHeadAttention``, a decoder whose blocks are stacked with ``nnx.vmap`` and run
with ``nnx.scan``, with einsum projections and a tied embedding): ``quantize`` -> a few training
steps (the loss falls, binary latent weights change) -> ``freeze`` (the layers are packed) ->
frozen output == fake-quant output -> save/load gives the same output again.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bnn_jax import export
from bnn_jax import nn as bnn


class ResBlock(nnx.Module):
    """conv3x3 (explicit pads) -> BN -> conv3x3 -> BN, + a 1x1 [(0,0),(0,0)] shortcut; the binary
    convs see the un-ReLU'd residual stream."""

    def __init__(self, cin, cout, stride, rngs):
        self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, padding=[(1, 1), (1, 1)],
                              use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(cout, rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), padding=[(1, 1), (1, 1)], use_bias=False,
                              rngs=rngs)
        self.bn2 = nnx.BatchNorm(cout, rngs=rngs)
        self.shortcut = nnx.Conv(cin, cout, (1, 1), strides=stride, padding=[(0, 0), (0, 0)],
                                 use_bias=False, rngs=rngs)

    def __call__(self, x):
        y = self.bn1(self.conv1(x))
        return self.bn2(self.conv2(y)) + self.shortcut(x)


class ResNet(nnx.Module):
    def __init__(self, rngs, classes=4):
        self.stem = nnx.Conv(3, 32, (3, 3), padding=1, rngs=rngs)
        self.blocks = nnx.List([ResBlock(32, 32, 1, rngs), ResBlock(32, 64, 2, rngs)])
        self.head = nnx.Linear(64, classes, rngs=rngs)

    def __call__(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        return self.head(jnp.mean(x, axis=(1, 2)))


class ViT(nnx.Module):
    def __init__(self, rngs, classes=4, dim=32):
        self.patch = nnx.Conv(3, dim, (4, 4), strides=4, padding="VALID", rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=dim, decode=False,
                                           rngs=rngs)
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.mlp = nnx.data({"fc1": nnx.Linear(dim, 64, rngs=rngs),
                             "fc2": nnx.Linear(64, dim, rngs=rngs)})
        self.head = nnx.Linear(dim, classes, rngs=rngs)

    def __call__(self, x):
        x = self.patch(x)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        x = x + self.attn(self.norm(x))
        x = x + self.mlp["fc2"](self.mlp["fc1"](x))
        return self.head(x.mean(1))


class DecoderBlock(nnx.Module):
    def __init__(self, rngs, dim=32, heads=2):
        hd = dim // heads
        self.qkv = nnx.Einsum("BTD,SDNH->SBTNH", (3, dim, heads, hd), rngs=rngs)
        self.out = nnx.Einsum("BTNH,NHD->BTD", (heads, hd, dim), rngs=rngs)
        self.up = nnx.Einsum("BTD,DF->BTF", (dim, 64), (64,), rngs=rngs)
        self.down = nnx.Einsum("BTF,FD->BTD", (64, dim), (dim,), rngs=rngs)
        self.norm = nnx.RMSNorm(dim, rngs=rngs)

    def __call__(self, x):
        q, k, v = self.qkv(self.norm(x))
        t = x.shape[1]
        mask = jnp.tril(jnp.ones((t, t), bool))
        w = jnp.einsum("BTNH,BSNH->BNTS", q, k) / np.sqrt(q.shape[-1])
        w = jax.nn.softmax(jnp.where(mask, w, -1e9), axis=-1)
        x = x + self.out(jnp.einsum("BNTS,BSNH->BTNH", w, v))
        return x + self.down(self.up(self.norm(x)))


class ScannedDecoder(nnx.Module):
    def __init__(self, rngs, vocab=24, layers=3):
        self.embed = nnx.Embed(vocab, 32, rngs=rngs)

        @nnx.split_rngs(splits=layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return DecoderBlock(rngs)

        self.blocks = make(rngs)

    def __call__(self, ids):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def step(x, block):
            return block(x)

        return self.embed.attend(step(self.embed(ids), self.blocks))


def _image_batch(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(8, 8, 8, 3)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(rng.integers(0, 4, size=8).astype(np.int32))


def _token_batch(seed=0):
    ids = np.random.default_rng(seed).integers(0, 24, size=(4, 9)).astype(np.int32)
    return jnp.asarray(ids[:, :-1]), jnp.asarray(ids[:, 1:])


@nnx.jit
def _call(model, x):
    return model(x)


def _train(model, x, y, steps=6, lr=3e-3):
    """A few Adam steps on one batch; (first loss, last loss)."""
    opt = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x, y):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    losses = [float(step(model, opt, x, y)) for _ in range(steps)]
    return losses[0], losses[-1]


CASES = {
    "resnet_explicit_padding": (
        ResNet, _image_batch,
        [("stem|head", None, None),
         (".*", "magnitude_aware_sign", "ste_sign")],
        ["blocks/0/conv1", "blocks/0/conv2", "blocks/0/shortcut", "blocks/1/conv1",
         "blocks/1/conv2", "blocks/1/shortcut"]),
    "vit_multihead_attention": (
        ViT, _image_batch,
        [("patch|head", None, None), (".*", "ste_sign", "ste_sign")],
        ["attn/query", "attn/key", "attn/value", "attn/out", "mlp/fc1", "mlp/fc2"]),
    "scanned_decoder_tied_embedding": (
        ScannedDecoder, _token_batch,
        # TBT's row-wise binary table; ±1 block kernels keep every product an exact integer, so
        # the frozen/fake-quant comparison is not at the mercy of sign(rounding noise).
        [("embed", dict(name="tbt_weight", channel_axis=0), "ste_sign"),
         (".*", "ste_sign", "ste_sign")],
        ["embed", "blocks/qkv", "blocks/out", "blocks/up", "blocks/down"]),
}


@pytest.mark.slow  # ~30-45 s each on a shared 2-core CPU (compiles three training steps)
@pytest.mark.parametrize("name", list(CASES))
def test_quantize_train_freeze_save_load(name, tmp_path):
    cls, batch, rules, packed = CASES[name]
    model = cls(nnx.Rngs(0))
    x, y = batch()
    report = bnn.quantize(model, rules, strict=True)
    assert sorted(r.path for r in report.replaced) == sorted(packed)
    kernels = {p: np.array(bnn_layer(model, p).kernel_variable()[...]) for p in packed}

    first, last = _train(model, x, y)
    assert last < first, (first, last)
    for p in packed:  # every binary layer's latent weights moved
        after = np.asarray(bnn_layer(model, p).kernel_variable()[...])
        assert not np.array_equal(after, kernels[p]), p

    model.eval()
    fake = np.asarray(_call(model, x))
    frozen, records = export.freeze(model)
    by_path = {r.path: r for r in records}
    for p in packed:
        assert by_path[p].frozen, (p, by_path[p].reason)
        assert by_path[p].encoding in ("binary", "ternary")
    out = np.asarray(_call(frozen, x))
    np.testing.assert_allclose(out, fake, rtol=1e-5, atol=1e-4)
    assert np.any(np.abs(fake) > 1e-3)  # a meaningful comparison

    path = str(tmp_path / "frozen.npz")
    export.save(frozen, path, records)
    fresh = cls(nnx.Rngs(1))
    bnn.quantize(fresh, rules)
    loaded = export.load(path, fresh)
    np.testing.assert_array_equal(np.asarray(_call(loaded, x)), out)


def bnn_layer(model, path):
    node = model
    for part in path.split("/"):
        node = node[int(part)] if part.isdigit() else (
            node[part] if isinstance(node, dict) or hasattr(node, "__getitem__")
            and not isinstance(node, nnx.Module) else getattr(node, part))
    return node

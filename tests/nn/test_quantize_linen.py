"""quantize_linen: unmodified Linen models (a ResNet-style CNN, a small transformer LM) binarized
by interception; ToNNX-wrapped Linen models through bnn_jax.nn.quantize."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bnn_jax import export
from bnn_jax import nn as bnn


def _sign(a):
    return np.where(np.asarray(a) >= 0, 1.0, -1.0)


class LinenBlock(nn.Module):
    """Conv-BN-ReLU-Conv-BN with explicit pads and a projection shortcut (no hooks)."""

    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x, train: bool = True):
        y = nn.Conv(self.features, (3, 3), self.stride, padding=[(1, 1), (1, 1)],
                    use_bias=False)(x)
        y = nn.relu(nn.BatchNorm(use_running_average=not train)(y))
        y = nn.Conv(self.features, (3, 3), padding=[(1, 1), (1, 1)], use_bias=False)(y)
        y = nn.BatchNorm(use_running_average=not train)(y)
        if x.shape[-1] != self.features or self.stride != 1:
            x = nn.Conv(self.features, (1, 1), self.stride, name="proj")(x)
        return nn.relu(x + y)


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.relu(nn.Conv(16, (3, 3), name="stem")(x))
        x = LinenBlock(16)(x, train)
        x = LinenBlock(32, 2)(x, train)
        return nn.Dense(4, name="head")(jnp.mean(x, axis=(1, 2)))


class LinenDecoderLayer(nn.Module):
    @nn.compact
    def __call__(self, x):
        mask = nn.make_causal_mask(jnp.ones(x.shape[:2]))
        y = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=32)(
            nn.LayerNorm()(x), mask=mask)
        x = x + y
        h = nn.Dense(64)(nn.LayerNorm()(x))
        return x + nn.Dense(x.shape[-1])(nn.gelu(h))


class LinenLM(nn.Module):
    vocab: int = 24

    @nn.compact
    def __call__(self, ids):
        embed = nn.Embed(self.vocab, 32, name="embed")
        x = embed(ids) + self.param("pos", nn.initializers.normal(0.02), (16, 32))[:ids.shape[1]]
        for i in range(2):
            x = LinenDecoderLayer(name=f"layer_{i}")(x)
        return embed.attend(nn.LayerNorm()(x))


CNN_RULES = [("stem|head", None, None), (".*", "ste_sign", "ste_sign")]
LM_RULES = [("embed", dict(name="bipft_weight", layerwise=False), "ste_sign"),
            (".*", "ste_sign", "ste_sign")]


def _images():
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.normal(size=(8, 8, 8, 3)).astype(np.float32)),
            jnp.asarray(rng.integers(0, 4, 8).astype(np.int32)))


def _tokens():
    ids = np.random.default_rng(0).integers(0, 24, size=(4, 9)).astype(np.int32)
    return jnp.asarray(ids[:, :-1]), jnp.asarray(ids[:, 1:])


def _flat(tree):
    return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_same_parameter_tree_and_paths():
    x, _ = _images()
    q = bnn.quantize_linen(LinenCNN(), CNN_RULES)
    want = jax.tree.map(jnp.shape, LinenCNN().init(jax.random.key(0), x))
    got = jax.tree.map(jnp.shape, q.init(jax.random.key(0), x))
    assert got == want  # stateless quantizers: the original tree, the original init
    layers = bnn.linen_layers(q, x)
    assert layers["stem"] == ("Conv", 0) and layers["head"] == ("Dense", 0)
    assert layers["LinenBlock_1/proj"] == ("Conv", 1)
    assert sum(i == 1 for _, i in layers.values()) == 5


def test_learned_quantizer_state_is_linen_params():
    x, _ = _images()
    q = bnn.quantize_linen(LinenCNN(), [("stem|head", None, None),
                                        (".*", "ste_sign", dict(name="rsign"))])
    params = q.init(jax.random.key(0), x)["params"]
    extra = sorted(set(_flat(params)) - set(_flat(LinenCNN().init(jax.random.key(0),
                                                                  x)["params"])))
    assert len(extra) == 5 and all(k.endswith("['input_beta']") for k in extra)
    assert params["LinenBlock_0"]["Conv_0"]["input_beta"].shape == (16,)


def test_dense_and_dense_general_values():
    x = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
    dense = bnn.quantize_linen(nn.Dense(4), [(".*", "ste_sign", "ste_sign")])
    v = dense.init(jax.random.key(0), x)
    w, b = (np.asarray(v["params"][k]) for k in ("kernel", "bias"))
    np.testing.assert_allclose(dense.apply(v, x), _sign(x) @ _sign(w) + b, rtol=1e-6)

    # DenseGeneral: per output unit of the (in, heads, dim) kernel, as a (in, heads*dim) matrix.
    dg = bnn.quantize_linen(nn.DenseGeneral((2, 3), use_bias=False),
                            [(".*", "magnitude_aware_sign", None)])
    v = dg.init(jax.random.key(0), x)
    k = np.asarray(v["params"]["kernel"], np.float64).reshape(5, 6)
    want = x.astype(np.float64) @ (_sign(k) * np.abs(k).mean(axis=0))
    np.testing.assert_allclose(dg.apply(v, x), want.reshape(3, 2, 3), rtol=1e-5)


def test_unmatched_and_full_precision_layers_are_untouched():
    x, _ = _images()
    v = LinenCNN().init(jax.random.key(0), x)
    q = bnn.quantize_linen(LinenCNN(), [(".*", None, None)])
    np.testing.assert_array_equal(q.apply(v, x, mutable=["batch_stats"])[0],
                                  LinenCNN().apply(v, x, mutable=["batch_stats"])[0])
    binar = bnn.quantize_linen(LinenCNN(), CNN_RULES)
    assert not np.allclose(binar.apply(v, x, mutable=["batch_stats"])[0],
                           LinenCNN().apply(v, x, mutable=["batch_stats"])[0])


def _train(module, variables, loss_of, steps=6, lr=3e-3):
    params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    tx = optax.adam(lr)
    opt = tx.init(params)

    @jax.jit
    def step(params, rest, opt):
        def loss_fn(p):
            out, new = module.apply({"params": p, **rest}, mutable=list(rest))
            return loss_of(out), new

        (loss, new), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        up, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, up), dict(new), opt, loss

    losses = []
    for _ in range(steps):
        params, rest, opt, loss = step(params, rest, opt)
        losses.append(float(loss))
    return params, losses


@pytest.mark.slow  # compiles a training step and the packed model (~30 s on a shared CPU)
@pytest.mark.parametrize("which", ["cnn", "lm"])
def test_unmodified_linen_models_train_freeze_save_load(which, tmp_path):
    if which == "cnn":
        x, y = _images()
        q = bnn.quantize_linen(LinenCNN(), CNN_RULES)
        watched = ("LinenBlock_0", "Conv_0")
    else:
        x, y = _tokens()
        q = bnn.quantize_linen(LinenLM(), LM_RULES)
        watched = ("layer_0", "MultiHeadDotProductAttention_0", "query")
    v = q.init(jax.random.key(0), x)

    def loss_of(logits):
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    params, losses = _train(_Closed(q, x), v, loss_of)
    assert losses[-1] < losses[0], losses
    before, after = v["params"], params
    for k in watched:
        before, after = before[k], after[k]
    assert not np.array_equal(np.asarray(before["kernel"]), np.asarray(after["kernel"]))

    # freeze -> the packed model computes the fake-quant output -> save/load.
    trained = {**v, "params": params}
    kw = dict(train=False) if which == "cnn" else {}
    fake = np.asarray(q.apply(trained, x, **kw))
    frozen, frozen_vars, records = export.freeze_linen(q, trained, x, **kw)
    assert records and all(r.frozen for r in records), [(r.path, r.reason) for r in records]
    out = np.asarray(frozen.apply(frozen_vars, x, **kw))
    np.testing.assert_allclose(out, fake, rtol=1e-5, atol=1e-4)
    assert np.any(np.abs(fake) > 1e-3)
    path = str(tmp_path / "frozen.npz")
    export.save(frozen.layers, path, records)
    loaded = export.load_linen(path, q, trained, x, **kw)
    np.testing.assert_array_equal(np.asarray(loaded.apply(frozen_vars, x, **kw)), out)


class _Closed:
    """``module.apply(variables, x, ...)`` with ``x`` fixed (keeps _train generic)."""

    def __init__(self, module, x):
        self.module, self.x = module, x

    def apply(self, variables, **kw):
        return self.module.apply(variables, self.x, **kw)


def test_lm_embedding_and_attention_are_quantized():
    x, _ = _tokens()
    q = bnn.quantize_linen(LinenLM(), LM_RULES)
    layers = bnn.linen_layers(q, x)
    assert layers["embed"] == ("Embed", 0)
    for proj in ("query", "key", "value", "out"):
        assert layers[f"layer_1/MultiHeadDotProductAttention_0/{proj}"] == ("DenseGeneral", 1)
    v = q.init(jax.random.key(0), x)
    table = np.asarray(v["params"]["embed"]["embedding"], np.float64)
    # The lookup returns BiPFT's row-wise binary table (m per row, e = global mean).
    m = np.abs(table).mean(axis=1, keepdims=True)
    want = np.where(table - table.mean() >= 0, 1.0, -1.0) * m
    # A bare Embed is the root: its path is "" (or the prefix).
    emb = bnn.quantize_linen(nn.Embed(24, 32), [("tok", *LM_RULES[0][1:])], prefix="tok")
    got = emb.apply({"params": {"embedding": v["params"]["embed"]["embedding"]}}, x)
    np.testing.assert_allclose(got, np.take(want, np.asarray(x), axis=0), rtol=1e-6)


def test_tonnx_wrapped_linen_is_quantized_by_quantize():
    x, _ = _tokens()

    class Wrapper(nnx.Module):
        def __init__(self, rngs):
            self.lm = nnx.bridge.ToNNX(LinenLM(), rngs=rngs)

        def __call__(self, ids):
            return self.lm(ids)

    model = Wrapper(nnx.Rngs(0))
    nnx.bridge.lazy_init(model.lm, x)
    variables = {"params": nnx.to_pure_dict(nnx.state(model.lm, nnx.Param))}
    rules = [("lm/embed", *LM_RULES[0][1:]), ("lm/.*", "ste_sign", "ste_sign")]
    report = bnn.quantize(model, rules, strict=True)
    assert not report.unused_rules
    assert "lm/layer_0/MultiHeadDotProductAttention_0/query" in {r.path for r in report.replaced}
    want = bnn.quantize_linen(LinenLM(), LM_RULES).apply(variables, x)
    np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(LinenLM().apply(variables, x), want)


def test_tonnx_learned_quantizer_needs_quantize_before_lazy_init():
    x, _ = _images()
    b = nnx.bridge.ToNNX(LinenCNN(), rngs=nnx.Rngs(0))

    class W(nnx.Module):
        def __init__(self):
            self.net = b

    w = W()
    nnx.bridge.lazy_init(b, x)
    with pytest.raises(ValueError, match="quantize it before lazy_init"):
        bnn.quantize(w, [("net/(stem|head)", None, None), (".*", "ste_sign", "rsign")])


def test_quantized_primitives_refuse_positional_quantizers():
    for fn in (bnn.quantized_dot_general, bnn.quantized_conv_general_dilated):
        with pytest.raises(TypeError, match="by keyword only"):
            fn("ste_sign", None)
    dg = bnn.quantized_dot_general(kernel_quantizer="ste_sign")
    assert dg.kernel_quantizer.name == "ste_sign" and dg.input_quantizer is None

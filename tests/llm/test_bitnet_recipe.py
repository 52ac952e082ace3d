"""BitNet b1.58 recipe: BitLinear placement against a numpy re-statement, size configs, the
two-stage schedule against its formula, and sharded training equal to one device."""

import importlib.util
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jax.sharding import PartitionSpec as P

from bnn_jax.models import llama
from bnn_jax.train import optimizers, sharding

ROOT = pathlib.Path(__file__).resolve().parents[2]


def bitnet_config(arg):
    spec = importlib.util.spec_from_file_location("bitnet_cfg", ROOT / "configs" / "bitnet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def np_ternary(w, median=False):
    a = np.abs(w).reshape(-1)
    gamma = np.sort(a)[(a.size - 1) // 2] if median else a.mean()
    s = 1.0 / max(gamma, 1e-5)
    return np.clip(np.round(w * s), -1, 1) / s


def np_act8(x, q=127.0):
    s = q / np.maximum(np.abs(x).max(-1, keepdims=True), 1e-5)
    return np.clip(np.round(x * s), -128, 127) / s


def np_norm(x, layer=False, eps=1e-6):
    if layer:
        x = x - x.mean(-1, keepdims=True)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)


@pytest.mark.parametrize("median", [False, True])
def test_bitlinear_mlp_normalizes_then_quantizes_activations_and_weights(median):
    fields = bitnet_config("median" if median else "").model
    mlp = llama.MLP(16, 24, bias=False, subln=fields.subln, rngs=nnx.Rngs(0),
                    quant=dict(kernel_quantizer=fields.kernel_quantizer.to_dict(),
                               input_quantizer=fields.input_quantizer.to_dict()))
    x = np.random.default_rng(0).normal(size=(2, 3, 16)).astype(np.float32) * 3
    q = 128.0 if median else 127.0
    w = {n: np.asarray(getattr(mlp, n).kernel[...]) for n in ("gate_proj", "up_proj", "down_proj")}
    xin = np_act8(np_norm(x, median), q)
    g, u = xin @ np_ternary(w["gate_proj"], median), xin @ np_ternary(w["up_proj"], median)
    h = g / (1 + np.exp(-g)) * u
    want = np_act8(np_norm(h, median), q) @ np_ternary(w["down_proj"], median)
    np.testing.assert_allclose(np.asarray(mlp(jnp.asarray(x))), want, rtol=1e-4, atol=1e-4)
    assert mlp.gate_proj.bias is None and mlp.down_proj.bias is None


def test_size_configs_build_the_published_shapes_without_biases():
    c = bitnet_config("size=3b")
    assert (c.model.hidden, c.model.intermediate, c.model.num_layers, c.model.num_heads) == \
        (3200, 8640, 26, 32)
    model = nnx.eval_shape(lambda: llama.Model(
        vocab_size=32000, max_len=2048, rngs=nnx.Rngs(0),
        **{k: v for k, v in c.model.to_dict().items() if k != "name"}))
    params = nnx.state(model, nnx.Param)
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    per_layer = 4 * 3200 ** 2 + 3 * 3200 * 8640 + 2 * 3200
    assert n == 26 * per_layer + 2 * 32000 * 3200 + 3200
    assert not any("bias" in sharding.path_str(p) for p, _ in
                   jax.tree_util.tree_flatten_with_path(params)[0])
    assert bitnet_config("size=tiny,median").model.kernel_quantizer.measure == "median"
    assert bitnet_config("size=tiny,float").model.get("kernel_quantizer") is None
    with pytest.raises(ValueError, match="valid sizes"):
        bitnet_config("size=7b")


def test_two_stage_learning_rate_and_weight_decay_follow_the_formula():
    cfg = dict(name="adamw", learning_rate=1e-2, schedule="two_stage", warmup_steps=4,
               stage_boundary=0.5, stage1_end_factor=0.5, stage2_factor=0.3, end_factor=0.0,
               weight_decay=0.1, stage2_weight_decay=0.0)
    total = 20
    lr = optimizers.schedule(cfg, total)

    def want(s):
        if s < 4:
            return 1e-2 * s / 4
        if s < 10:
            f = (s - 4) / 6
            return 5e-3 + (1e-2 - 5e-3) * 0.5 * (1 + math.cos(math.pi * f))
        return 3e-3 * 0.5 * (1 + math.cos(math.pi * (s - 10) / 10))

    for s in (0, 2, 4, 7, 9, 10, 15, 19):
        np.testing.assert_allclose(float(lr(s)), want(s), rtol=1e-5, atol=1e-9)
    # Zero gradients: Adam's direction is 0, so the update is the decoupled decay alone.
    tx, _ = optimizers.build(cfg, {"w": jnp.ones((2, 2))}, total)
    params = {"w": jnp.full((2, 2), 2.0)}
    state = tx.init(params)
    zero = {"w": jnp.zeros((2, 2))}
    for s in range(total):
        upd, state = tx.update(zero, state, params)
        decay = 0.1 if s < 10 else 0.0
        np.testing.assert_allclose(np.asarray(upd["w"]), -want(s) * decay * 2.0, atol=1e-9)


@pytest.mark.slow
def test_llama_partition_rules_shard_a_bitnet_decoder_and_match_one_device():
    assert jax.device_count() == 8
    mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "model": 2})
    fields = {k: v for k, v in bitnet_config("").model.to_dict().items() if k != "name"}
    fields.update(hidden=32, intermediate=48, num_heads=4)
    model = llama.Model(vocab_size=64, max_len=16, rngs=nnx.Rngs(0), **fields)
    graph, params = nnx.split(model, nnx.Param)
    specs = sharding.partition_specs(params, llama.PARTITION_RULES, mesh)
    flat = {sharding.path_str(k): v for k, v in jax.tree_util.tree_flatten_with_path(
        specs, is_leaf=lambda x: isinstance(x, P))[0]}
    assert flat["layers/0/self_attn/q_proj/kernel/value"] == P("fsdp", "model")
    assert flat["layers/0/mlp/down_proj/kernel/value"] == P("model", "fsdp")
    assert flat["embed_tokens/embedding/value"] == P("model", "fsdp")
    assert flat["layers/0/input_layernorm/scale/value"] == P()
    ids = jax.random.randint(jax.random.key(1), (4, 16), 0, 64)

    def loss(p, ids):
        logits = nnx.merge(graph, p)(ids[:, :-1])
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]))

    want_l, want_g = jax.jit(jax.value_and_grad(loss))(params, ids)
    shard = sharding.shardings(params, llama.PARTITION_RULES, mesh)
    sp = jax.device_put(params, shard)
    got_l, got_g = jax.jit(jax.value_and_grad(loss), in_shardings=(shard, None))(sp, ids)
    assert sp["layers"][0]["mlp"]["up_proj"]["kernel"][...].sharding.spec == P("fsdp", "model")
    np.testing.assert_allclose(float(got_l), float(want_l), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=2e-5)

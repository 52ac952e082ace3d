"""Binarization health check: output shares, gradient window, constant-sign warnings, flips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import nn as bnn
from bnn_jax.analysis import health


class Net(nnx.Module):
    """stem -> two residual convs whose inputs are ReLU'd (or not) -> head."""

    def __init__(self, rngs, relu):
        self.stem = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.blocks = nnx.List([nnx.Conv(8, 8, (3, 3), padding=[(1, 1), (1, 1)], rngs=rngs)
                                for _ in range(2)])
        self.head = nnx.Linear(8, 4, rngs=rngs)
        self.relu = relu

    def __call__(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = x + b(jax.nn.relu(x) if self.relu else x)
        return self.head(x.mean((1, 2)))


RULES = [("stem|head", None, None), (".*", "ste_sign", "ste_sign")]
X = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32))


def test_relu_then_sign_is_flagged():
    m = Net(nnx.Rngs(0), relu=True)
    bnn.quantize(m, RULES)
    warns = health.warnings_of(health.check(m, X))
    assert warns == [f"inputs of blocks/{i} are all >= 0: ste_sign gives +1 everywhere; use a "
                     "ReLU-free block, a learnable shift (rsign), or ste_heaviside"
                     for i in (0, 1)]
    assert "WARNING inputs of blocks/0" in health.format_report(health.check(m, X))


def test_healthy_model_is_quiet_and_model_untouched():
    m = Net(nnx.Rngs(0), relu=False)
    bnn.quantize(m, [("stem|head", None, None), (".*", "ste_sign", dict(name="rsign"))])
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(m)))
    rows = health.check(m, X)
    assert health.warnings_of(rows) == []
    assert "no binary quantizer is constant" in health.format_report(rows)
    assert {(r.path, r.role) for r in rows} == {(f"blocks/{i}", role) for i in (0, 1)
                                                for role in ("input", "weight")}
    # check() ran on a copy: the learned RSign shifts were not created on the model itself.
    assert bnn.pending_learned(m) == ["blocks/0", "blocks/1"]
    after = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(m)))
    jax.tree.map(np.testing.assert_array_equal, before, after)


def test_shares_and_gradient_window_match_numpy():
    class One(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(6, 3, rngs=rngs)

        def __call__(self, x):
            return self.fc(x)

    m = One(nnx.Rngs(0))
    bnn.quantize(m, [("fc", "ste_sign", "ste_sign")])
    x = np.random.default_rng(1).normal(scale=1.5, size=(50, 6)).astype(np.float32)
    x[0, :3] = 0.0
    by_role = {r.role: r for r in health.check(m, jnp.asarray(x))}
    r = by_role["input"]
    # larq's ste_sign: sign(0) = +1, gradient passed where |x| <= 1.
    assert r.positive == np.mean(x >= 0) and r.negative == np.mean(x < 0) and r.zero == 0
    assert r.in_window == np.mean(np.abs(x) <= 1)
    assert (r.minimum, r.maximum) == (x.min(), x.max()) and r.count == x.size
    w = np.asarray(m.fc.kernel[...])
    assert by_role["weight"].positive == np.mean(w >= 0)
    assert by_role["weight"].in_window == np.mean(np.abs(w) <= 1)


def test_scanned_layers_are_reported_by_path():
    class Block(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(4, 4, rngs=rngs)

        def __call__(self, x):
            return x + self.fc(x)

    class Stack(nnx.Module):
        def __init__(self, rngs):
            @nnx.split_rngs(splits=3)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def make(rngs):
                return Block(rngs)

            self.layers = make(rngs)

        def __call__(self, x):
            @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
            def step(x, b):
                return b(x)

            return step(x, self.layers)

    m = Stack(nnx.Rngs(0))
    bnn.quantize(m, [(".*", "ste_sign", "ste_sign")])
    rows = health.check(m, jnp.ones((2, 4)))
    assert {(r.path, r.role) for r in rows} == {("layers/fc", "input"), ("layers/fc", "weight")}
    w = next(r for r in rows if r.role == "weight")
    assert w.count == 3 * 16  # every layer of the stack


def test_flip_ratios_per_layer():
    m = Net(nnx.Rngs(0), relu=False)
    bnn.quantize(m, RULES)
    paths = health.binary_kernel_paths(m)
    assert paths == {"blocks/0": ("blocks", 0, "kernel"), "blocks/1": ("blocks", 1, "kernel")}
    p = nnx.to_pure_dict(nnx.state(m, nnx.Param))
    q = jax.tree.map(lambda a: a, p)
    k = np.asarray(p["blocks"][0]["kernel"]).copy()
    k.reshape(-1)[:100] *= -1
    q["blocks"][0]["kernel"] = jnp.asarray(k)
    got = jax.jit(lambda a, b: health.flip_ratios(paths, a, b))(p, q)
    n = k.size
    assert float(got["flip_ratio/blocks/0"]) == pytest.approx(100 / n, rel=1e-6)
    assert float(got["flip_ratio/blocks/1"]) == 0.0
    assert float(got["flip_ratio"]) == pytest.approx(100 / (2 * n), rel=1e-6)


def test_linen_model_relu_then_sign():
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3, name="fc2")(nn.relu(nn.Dense(8, name="fc1")(x)))

    q = bnn.quantize_linen(Net(), [("fc2", "ste_sign", "ste_sign")])
    x = jnp.asarray(np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32))
    rows = health.check_linen(q, q.init(jax.random.key(0), x), x)
    assert {(r.path, r.role) for r in rows} == {("fc2", "input"), ("fc2", "weight")}
    assert health.warnings_of(rows)[0].startswith("inputs of fc2 are all >= 0")

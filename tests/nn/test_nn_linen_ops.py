"""Quantized dot_general / conv_general_dilated inside flax.linen (and nnx) layers."""

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bnn_jax.nn.linen import quantized_conv_general_dilated, quantized_dot_general
from bnn_jax.quant.registry import Quantizer



def _sign(a):
    return np.where(np.asarray(a) >= 0, 1.0, -1.0).astype(np.float32)


class BinaryMLP(linen.Module):
    @linen.compact
    def __call__(self, x):
        x = linen.Dense(16, name="fc1")(x)  # full-precision first layer
        binary = quantized_dot_general(kernel_quantizer="ste_sign", input_quantizer="ste_sign")
        x = linen.Dense(16, name="fc2", dot_general=binary)(x)
        return linen.Dense(3, name="fc3")(x)


def test_linen_dense_forward_equals_hand_quantized_and_trains():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, 5)).astype(np.float32))
    labels = jnp.asarray(rng.integers(0, 3, 8))
    model = BinaryMLP()
    params = model.init(jax.random.key(0), x)["params"]
    p = jax.tree.map(np.asarray, params)
    h1 = np.asarray(x) @ p["fc1"]["kernel"] + p["fc1"]["bias"]
    h2 = _sign(h1) @ _sign(p["fc2"]["kernel"]) + p["fc2"]["bias"]
    want = h2 @ p["fc3"]["kernel"] + p["fc3"]["bias"]
    np.testing.assert_allclose(model.apply({"params": params}, x), want, rtol=1e-5, atol=1e-5)

    tx = optax.adam(1e-2)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        def loss_fn(params):
            logits = model.apply({"params": params}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, g = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(g, state)
        return optax.apply_updates(params, updates), state, loss, g

    losses = []
    for _ in range(5):
        params, state, loss, g = step(params, state)
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    # The binary layer's kernel is trained through the clipped STE, not frozen.
    assert np.any(np.asarray(g["fc2"]["kernel"]) != 0)
    assert not np.allclose(params["fc2"]["kernel"], p["fc2"]["kernel"])


def test_linen_conv_with_pad_values_and_stride_against_loops():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
    conv = linen.Conv(4, (3, 3), strides=2, padding="SAME", use_bias=False,
                      conv_general_dilated=quantized_conv_general_dilated(
                          kernel_quantizer="ste_sign", input_quantizer="ste_sign", pad_values=1.0))
    params = conv.init(jax.random.key(0), jnp.asarray(x))
    w = _sign(params["params"]["kernel"])
    y = conv.apply(params, jnp.asarray(x))
    # SAME with stride 2: out = ceil(in/2); total pad = max((out-1)*2 + 3 - in, 0), low = total//2
    pads = []
    for n in (5, 6):
        total = max((-(-n // 2) - 1) * 2 + 3 - n, 0)
        pads.append((total // 2, total - total // 2))
    xp = np.pad(_sign(x), [(0, 0), pads[0], pads[1], (0, 0)], constant_values=1.0)
    want = np.zeros(y.shape, np.float32)
    for i in range(y.shape[1]):
        for j in range(y.shape[2]):
            want[:, i, j] = np.einsum("nhwc,hwco->no", xp[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3], w)
    np.testing.assert_array_equal(y, want)


def test_same_functions_plug_into_nnx_layers():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 4, 4, 3)).astype(np.float32))
    lin = nnx.Linear(3, 2, dot_general=quantized_dot_general(kernel_quantizer="ste_sign",
                                                             input_quantizer="ste_sign"),
                     rngs=nnx.Rngs(0))
    want = _sign(x) @ _sign(lin.kernel[...]) + np.asarray(lin.bias[...])
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(lin, x), want, rtol=1e-6, atol=1e-6)
    conv = nnx.Conv(3, 2, (1, 1), conv_general_dilated=quantized_conv_general_dilated(
        kernel_quantizer="ste_sign"), use_bias=False, rngs=nnx.Rngs(0))
    want = np.einsum("nhwc,co->nhwo", np.asarray(x), _sign(conv.kernel[...])[0, 0])
    np.testing.assert_allclose(conv(x), want, rtol=1e-5, atol=1e-6)


def test_learned_quantizers_are_refused():
    q = Quantizer(fn=lambda x, *, a: x * a, name="scaled", learned=("a",),
                  init_fn=lambda x: {"a": 1.0})
    with pytest.raises(ValueError, match="learned arrays.*QuantLinear"):
        quantized_dot_general(input_quantizer=q)
    with pytest.raises(ValueError, match="unknown quantizer"):
        quantized_conv_general_dilated(input_quantizer="ste_sgn")


def test_schedule_values_reach_the_linen_primitives():
    # ReSTE's o, set with quant_params around the call, changes the kernel's surrogate gradient.
    from bnn_jax.nn import quant_params

    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((4, 6)).astype(np.float32))
    dense = linen.Dense(5, use_bias=False,
                        dot_general=quantized_dot_general(kernel_quantizer="reste"))
    params = dense.init(jax.random.key(0), x)
    w = np.asarray(params["params"]["kernel"], np.float64)

    @jax.jit
    def grad(params, o):
        with quant_params(kernel=dict(o=o)):
            return jax.grad(lambda p: jnp.sum(dense.apply(p, x)))(params)["params"]["kernel"]

    a = np.abs(w)
    for o in (1.0, 3.0):
        # ReSTE's derivative: (1/o)|w|^((1-o)/o), constant below 0.1, zero beyond 1.5.
        h = np.where(a <= 1.5, np.where(a <= 0.1, 0.1 ** (1 / o) / 0.1,
                                        (1 / o) * np.maximum(a, 0.1) ** ((1 - o) / o)), 0)
        want = np.asarray(x).sum(0)[:, None] * h
        np.testing.assert_allclose(grad(params, jnp.float32(o)), want, rtol=1e-5, atol=1e-6)

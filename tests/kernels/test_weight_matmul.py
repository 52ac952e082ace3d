"""packed_weight_matmul (W1A16 / W1.58A16): exact on integer-valued activations, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnn_jax import kernels as K


def _weights(rng, shape, encoding):
    if encoding == "binary":
        return np.where(rng.random(shape) < 0.5, -1, 1).astype(np.float32)
    w = rng.integers(-1, 2, shape).astype(np.float32)
    w.flat[0] = -1
    return w


@pytest.mark.parametrize("backend", ["xla", "pallas_gpu", "pallas_tpu"])
@pytest.mark.parametrize("encoding", ["binary", "ternary"])
def test_exact_on_integer_activations(encoding, backend):
    rng = np.random.default_rng(10)
    w = _weights(rng, (75, 130), encoding)
    x = rng.integers(-8, 9, (3, 75)).astype(np.float32)  # sums stay exact in f32 and bf16 inputs
    pw = K.pack(w, 0, encoding)
    for dtype in (jnp.float32, jnp.bfloat16):
        out = K.packed_weight_matmul(jnp.asarray(x, dtype), pw, preferred_element_type=jnp.float32,
                                     backend=backend)
        assert out.dtype == jnp.float32 and out.shape == (3, 130)
        np.testing.assert_array_equal(np.asarray(out), x @ w)


def test_float_activations_batch_axes_scale_and_dtype():
    rng = np.random.default_rng(11)
    w = _weights(rng, (40, 9), "binary")
    x = rng.normal(size=(2, 3, 40)).astype(np.float32)
    scale, bias = rng.uniform(0.5, 1.5, 9).astype(np.float32), rng.normal(size=9).astype(np.float32)
    out = K.packed_weight_matmul(x, K.pack_bits(w, 0), scale=scale, bias=bias, backend="xla")
    assert out.shape == (2, 3, 9) and out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), (x @ w) * scale + bias, rtol=1e-5, atol=1e-5)
    xb = jnp.asarray(x, jnp.bfloat16)
    assert K.packed_weight_matmul(xb, K.pack_bits(w, 0)).dtype == jnp.bfloat16


@pytest.mark.parametrize("backend", ["xla", "pallas_tpu"])
def test_gradients(backend):
    rng = np.random.default_rng(12)
    w = _weights(rng, (45, 7), "ternary")
    x = rng.normal(size=(4, 45)).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, 7).astype(np.float32)
    pw = K.pack_ternary(w, 0)
    gy = rng.normal(size=(4, 7)).astype(np.float32)

    def f(x, s):
        return jnp.sum(K.packed_weight_matmul(x, pw, scale=s, backend=backend) * gy)

    gx, gs = jax.grad(f, argnums=(0, 1))(x, scale)
    np.testing.assert_allclose(np.asarray(gx), (gy * scale) @ w.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gs), (gy * (x @ w)).sum(0), rtol=1e-5, atol=1e-5)


def test_bad_input():
    w = K.pack_bits(np.ones((40, 3)), 0)
    with pytest.raises(ValueError, match="floating point"):
        K.packed_weight_matmul(np.ones((2, 40), np.int32), w)
    with pytest.raises(ValueError, match="last axis must be K=40"):
        K.packed_weight_matmul(np.ones((2, 41), np.float32), w)
    with pytest.raises(ValueError, match="packed along K"):
        K.packed_weight_matmul(np.ones((2, 3), np.float32), K.pack_bits(np.ones((40, 3)), 1))
    with pytest.raises(ValueError, match="binary or ternary"):
        K.packed_weight_matmul(np.ones((2, 40), np.float32), K.pack_bool(np.ones((40, 3)), 0))
    with pytest.raises(ValueError, match="valid choices"):
        K.packed_weight_matmul(np.ones((2, 40), np.float32), w, backend="triton")

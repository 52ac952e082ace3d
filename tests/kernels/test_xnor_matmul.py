"""packed_matmul: every operand encoding bit-exact against numpy int32, on every backend."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnn_jax import kernels as K

BACKENDS = ["xla", "pallas_gpu", "pallas_tpu"]  # Pallas ones run in interpret mode on CPU


def _values(rng, shape, encoding):
    """Random entries of an encoding, never all zeros."""
    if encoding == "binary":
        return np.where(rng.random(shape) < 0.5, -1, 1).astype(np.int32)
    lo = 0 if encoding == "bool" else -1
    v = rng.integers(lo, 2, shape).astype(np.int32)
    v.flat[0] = 1
    return v


PAIRS = [("binary", "binary"), ("bool", "binary"), ("ternary", "binary"), ("ternary", "ternary"),
         ("binary", "ternary"), ("bool", "ternary"), ("bool", "bool")]


# Every pair on the XLA reference and on one Pallas kernel (each kernel sees both P/Q branches).
CASES = ([(a, b, "xla") for a, b in PAIRS]
         + [(a, b, "pallas_gpu") for a, b in PAIRS[0::2]]
         + [(a, b, "pallas_tpu") for a, b in PAIRS[1::2]])


@pytest.mark.parametrize("enc_a,enc_b,backend", CASES)
def test_matmul_exact(enc_a, enc_b, backend):
    # A fixed seed per pair: hash() of strings changes from one Python process to the next.
    rng = np.random.default_rng(PAIRS.index((enc_a, enc_b)))
    m, k, n = 19, 101, 150  # not multiples of 32 nor of the blocks (multiple grid cells)
    a, b = _values(rng, (m, k), enc_a), _values(rng, (k, n), enc_b)
    out = K.packed_matmul(K.pack(a, -1, enc_a), K.pack(b, 0, enc_b), backend=backend)
    assert out.dtype == jnp.int32 and out.shape == (m, n)
    np.testing.assert_array_equal(np.asarray(out), a @ b)


@pytest.mark.parametrize("k", [1, 31, 32, 33, 300])
def test_binary_matmul_boundary_sizes(k):
    rng = np.random.default_rng(k)
    a, b = _values(rng, (3, k), "binary"), _values(rng, (k, 5), "binary")
    pa, pb = K.pack_bits(a), K.pack_bits(b, axis=0)
    np.testing.assert_array_equal(np.asarray(K.packed_matmul(pa, pb, backend="xla")), a @ b)
    np.testing.assert_array_equal(
        np.asarray(K.packed_matmul(pa, pb, backend="pallas_gpu", block_m=16, block_n=16)), a @ b)


def test_all_agree_and_extremes():
    # All-equal and all-opposite rows hit +K and -K exactly.
    k = 77
    b = np.where(np.random.default_rng(3).random((k, 4)) < 0.5, -1, 1)
    a = np.stack([b[:, 0], -b[:, 0]])
    outs = [np.asarray(K.packed_matmul(K.pack_bits(a), K.pack_bits(b, 0), backend=be))
            for be in BACKENDS]
    for o in outs:
        np.testing.assert_array_equal(o[:, 0], [k, -k])
        np.testing.assert_array_equal(o, a @ b)


@pytest.mark.parametrize("backend", ["xla", "pallas_tpu"])
def test_batched_attention_shapes(backend):
    # BiBERT-style: {0,1} attention probabilities times ±1 values, batch and heads leading.
    rng = np.random.default_rng(4)
    probs, values = _values(rng, (2, 3, 5, 40), "bool"), _values(rng, (2, 3, 40, 7), "binary")
    out = K.packed_matmul(K.pack_bool(probs, -1), K.pack_bits(values, -2), backend=backend)
    np.testing.assert_array_equal(np.asarray(out), np.einsum("bhqk,bhkd->bhqd", probs, values))
    # Leading axes of a fold into M when b is a matrix.
    w = _values(rng, (40, 6), "binary")
    out = K.packed_matmul(K.pack_bool(probs, -1), K.pack_bits(w, 0), backend=backend)
    np.testing.assert_array_equal(np.asarray(out), probs @ w)


@pytest.mark.parametrize("backend", ["xla", "pallas_gpu"])
def test_scale_bias_and_their_gradient(backend):
    rng = np.random.default_rng(5)
    a, b = _values(rng, (4, 45), "binary"), _values(rng, (45, 6), "binary")
    scale = rng.uniform(0.5, 2, 6).astype(np.float32)
    bias = rng.normal(size=6).astype(np.float32)
    pa, pb = K.pack_bits(a), K.pack_bits(b, 0)
    out = K.packed_matmul(pa, pb, scale=scale, bias=bias, backend=backend)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), (a @ b) * scale + bias, rtol=1e-6)
    g = jax.grad(lambda s: jnp.sum(K.packed_matmul(pa, pb, scale=s, backend=backend) ** 2))(scale)
    np.testing.assert_allclose(np.asarray(g), 2 * scale * ((a @ b) ** 2).sum(0), rtol=1e-5)


def test_jit_and_bad_input():
    rng = np.random.default_rng(6)
    a, b = _values(rng, (2, 40), "binary"), _values(rng, (40, 3), "binary")
    pa, pb = K.pack_bits(a), K.pack_bits(b, 0)
    f = jax.jit(lambda x, y: K.packed_matmul(x, y, backend="xla"))
    np.testing.assert_array_equal(np.asarray(f(pa, pb)), a @ b)
    with pytest.raises(ValueError, match="valid choices"):
        K.packed_matmul(pa, pb, backend="cuda")
    with pytest.raises(ValueError, match="Packed"):
        K.packed_matmul(a, pb)
    with pytest.raises(ValueError, match="last axis"):
        K.packed_matmul(K.pack_bits(a, 0), pb)
    with pytest.raises(ValueError, match="packed along K"):
        K.packed_matmul(pa, K.pack_bits(b, 1))
    with pytest.raises(ValueError, match="contraction sizes differ"):
        K.packed_matmul(pa, K.pack_bits(b[:39], 0))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        K.packed_matmul(pa, pb, scale=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="floating"):
        K.packed_matmul(pa, pb, bias=np.ones(3, np.int32))
    with pytest.raises(ValueError, match="block_m must be a positive int"):
        K.packed_matmul(pa, pb, block_m=[8])
    with pytest.raises(ValueError, match="power-of-two blocks, got block_n=24"):
        K.packed_matmul(pa, pb, backend="pallas_gpu", block_n=24)
    with pytest.raises(ValueError, match="equal leading axes"):
        K.packed_matmul(K.pack_bits(np.ones((2, 3, 40))), K.pack_bits(np.ones((3, 40, 2)), 1))

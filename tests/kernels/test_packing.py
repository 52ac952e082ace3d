"""Bit packing: layout against numpy's packbits, exact round trips, zero pad bits, bad input."""

import jax.numpy as jnp
import numpy as np
import pytest

from bnn_jax import kernels as K


def _np_pack(bits, axis):
    """Independent packing: numpy packbits (little bit order) then 4 bytes -> uint32 LE."""
    bits = np.moveaxis(np.asarray(bits, bool), axis, -1)
    n = bits.shape[-1]
    bits = np.pad(bits, [(0, 0)] * (bits.ndim - 1) + [(0, -(-n // 32) * 32 - n)])
    by = np.packbits(bits, axis=-1, bitorder="little")
    words = by.reshape(*by.shape[:-1], -1, 4).astype(np.uint32)
    words = words[..., 0] | words[..., 1] << 8 | words[..., 2] << 16 | words[..., 3] << 24
    return np.moveaxis(words, -1, axis)


@pytest.mark.parametrize("shape,axis", [((3, 70), -1), ((45, 5), 0), ((2, 33, 4), 1), ((31,), 0),
                                        ((2, 3, 64), 2)])
def test_binary_layout_and_round_trip(shape, axis):
    rng = np.random.default_rng(0)
    x = np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)
    p = K.pack_bits(x, axis)
    assert p.encoding == "binary" and p.mask is None
    np.testing.assert_array_equal(np.asarray(p.sign), _np_pack(x < 0, axis))
    np.testing.assert_array_equal(np.asarray(K.unpack(p)), x)
    assert p.shape == shape


def test_sign_of_zero_and_reals_is_larq_sign():
    x = np.array([0.0, -0.0, 1e-30, -1e-30, 2.5, -3.0], np.float32)
    np.testing.assert_array_equal(np.asarray(K.unpack(K.pack_bits(x))), [1, 1, 1, -1, 1, -1])


@pytest.mark.parametrize("shape,axis", [((4, 37), -1), ((65, 3), 0)])
def test_ternary_and_bool_planes(shape, axis):
    rng = np.random.default_rng(1)
    t = rng.integers(-1, 2, shape).astype(np.int8)
    p = K.pack_ternary(t, axis)
    np.testing.assert_array_equal(np.asarray(p.mask), _np_pack(t != 0, axis))
    np.testing.assert_array_equal(np.asarray(p.sign), _np_pack(t < 0, axis))
    np.testing.assert_array_equal(np.asarray(K.unpack(p)), t)
    z = rng.integers(0, 2, shape)
    np.testing.assert_array_equal(np.asarray(K.pack_bool(z.astype(bool), axis).mask),
                                  _np_pack(z, axis))
    q = K.pack_bool(z, axis)
    assert q.sign is None and q.encoding == "bool"
    np.testing.assert_array_equal(np.asarray(K.unpack(q)), z)


def test_pad_bits_are_zero_and_storage_is_one_bit_per_weight():
    x = -np.ones((3, 33), np.float32)  # every real bit set
    words = np.asarray(K.pack_bits(x).sign)
    assert words.shape == (3, 2)
    np.testing.assert_array_equal(words[:, 0], 0xFFFFFFFF)
    np.testing.assert_array_equal(words[:, 1], 1)  # only bit 0 of the second word is real
    p = K.pack_bits(np.ones((4096, 256)), axis=0)
    assert K.storage_bits(p) == 4096 * 256
    assert K.pack_ternary(np.ones((64, 3)), 0).nbytes == 2 * 2 * 3 * 4


def test_popcounts_match_numpy():
    rng = np.random.default_rng(2)
    w = rng.integers(0, 2**32, (257,), dtype=np.uint32)
    w[:3] = [0, 0xFFFFFFFF, 0x80000001]
    expected = np.unpackbits(w.view(np.uint8)).reshape(-1, 32).sum(1)
    np.testing.assert_array_equal(np.asarray(K.popcount(jnp.asarray(w))), expected)
    np.testing.assert_array_equal(np.asarray(K.popcount_swar(jnp.asarray(w))), expected)


def test_bad_input():
    with pytest.raises(ValueError, match="valid choices"):
        K.pack(np.ones(3), encoding="int2")
    with pytest.raises(ValueError, match="scalar"):
        K.pack(np.float32(1.0))
    with pytest.raises(ValueError, match="out of range"):
        K.pack(np.ones((2, 3)), axis=2)
    with pytest.raises(ValueError, match="only be packed with encoding 'bool'"):
        K.pack(np.ones(3, bool))
    with pytest.raises(ValueError, match="numeric or boolean"):
        K.pack(np.array(["a", "b"]))
    with pytest.raises(ValueError, match="empty"):
        K.pack(np.ones((2, 0)))
    with pytest.raises(ValueError, match="Packed"):
        K.unpack(np.ones(3))

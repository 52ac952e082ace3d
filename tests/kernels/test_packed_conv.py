"""packed_conv2d bit-exact against a numpy int32 convolution (all paddings, strides, encodings)."""

import numpy as np
import pytest

from bnn_jax import kernels as K


def _np_conv(x, w, strides, padding, pad_value):
    """Direct NHWC x HWIO convolution in int64 numpy, TensorFlow SAME split, given border value."""
    n, h, wd, c = x.shape
    kh, kw, _, o = w.shape
    sh, sw = strides
    if padding == "SAME":
        ph = max((-(-h // sh) - 1) * sh + kh - h, 0)
        pw = max((-(-wd // sw) - 1) * sw + kw - wd, 0)
        x = np.pad(x, [(0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)],
                   constant_values=pad_value)
    ho = (x.shape[1] - kh) // sh + 1
    wo = (x.shape[2] - kw) // sw + 1
    out = np.zeros((n, ho, wo, o), np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :]
            out += np.einsum("nhwc,co->nhwo", patch.astype(np.int64), w[i, j].astype(np.int64))
    return out


def _pm1(rng, shape):
    return np.where(rng.random(shape) < 0.5, -1, 1)


CASES = [("SAME", 0.0, "xla"), ("SAME", 1.0, "xla"), ("SAME", -1.0, "xla"), ("VALID", 0.0, "xla"),
         ("SAME", 0.0, "pallas_gpu"), ("SAME", -1.0, "pallas_tpu")]  # Pallas in interpret mode


@pytest.mark.parametrize("padding,pad_value,backend", CASES)
def test_binary_conv_exact(padding, pad_value, backend):
    rng = np.random.default_rng(int(pad_value + 5) + len(padding))
    x, w = _pm1(rng, (2, 7, 6, 37)), _pm1(rng, (3, 3, 37, 5))
    for strides in [(1, 1), (2, 1)]:
        out = K.packed_conv2d(K.pack_bits(x, 3), K.pack_bits(w, 2), strides=strides,
                              padding=padding, pad_value=pad_value, backend=backend)
        np.testing.assert_array_equal(np.asarray(out), _np_conv(x, w, strides, padding, pad_value))


@pytest.mark.parametrize("enc_x,enc_w", [("ternary", "binary"), ("bool", "binary"),
                                         ("ternary", "ternary"), ("binary", "ternary")])
def test_other_encodings_and_kernel_sizes(enc_x, enc_w):
    rng = np.random.default_rng(7)
    x = _pm1(rng, (1, 6, 5, 33)) if enc_x == "binary" else rng.integers(
        0 if enc_x == "bool" else -1, 2, (1, 6, 5, 33))
    w = _pm1(rng, (1, 5, 33, 4)) if enc_w == "binary" else rng.integers(-1, 2, (1, 5, 33, 4))
    x.flat[0] = w.flat[0] = 1
    for pad_value in (0.0, 1.0):
        out = K.packed_conv2d(K.pack(x, 3, enc_x), K.pack(w, 2, enc_w), strides=2, padding="SAME",
                              pad_value=pad_value, backend="xla")
        np.testing.assert_array_equal(np.asarray(out), _np_conv(x, w, (2, 2), "SAME", pad_value))


def test_scale_bias_and_bad_input():
    rng = np.random.default_rng(8)
    x, w = _pm1(rng, (1, 4, 4, 8)), _pm1(rng, (3, 3, 8, 2))
    px, pw = K.pack_bits(x, 3), K.pack_bits(w, 2)
    scale, bias = np.array([0.5, 2.0], np.float32), np.array([1.0, -1.0], np.float32)
    out = K.packed_conv2d(px, pw, padding="SAME", scale=scale, bias=bias)
    np.testing.assert_allclose(np.asarray(out), _np_conv(x, w, (1, 1), "SAME", 0.0) * scale + bias)
    with pytest.raises(ValueError, match="NHWC packed along C"):
        K.packed_conv2d(K.pack_bits(x, 2), pw)
    with pytest.raises(ValueError, match="HWIO packed along I"):
        K.packed_conv2d(px, K.pack_bits(w, 3))
    with pytest.raises(ValueError, match="input channels differ"):
        K.packed_conv2d(px, K.pack_bits(w[:, :, :7], 2))
    for padding in ("FULL", [(1, 1), (1, 1)]):  # explicit pairs are unhashable under jit
        with pytest.raises(ValueError, match="'SAME', 'VALID'"):
            K.packed_conv2d(px, pw, padding=padding)
    for pad_value in (0.5, np.array([1.0, 0.0])):
        with pytest.raises(ValueError, match="pad_value must be one of"):
            K.packed_conv2d(px, pw, pad_value=pad_value)
    with pytest.raises(ValueError, match="cannot be padded with -1"):
        K.packed_conv2d(K.pack_bool(x > 0, 3), pw, padding="SAME", pad_value=-1.0)
    with pytest.raises(ValueError, match="does not fit"):
        K.packed_conv2d(px, K.pack_bits(_pm1(rng, (5, 5, 8, 2)), 2))
    with pytest.raises(ValueError, match="strides must be positive"):
        K.packed_conv2d(px, pw, strides=0)
    with pytest.raises(ValueError, match="valid choices"):
        K.packed_conv2d(px, pw, backend="gpu")

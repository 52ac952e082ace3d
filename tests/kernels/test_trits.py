"""W1.58A8 kernels: ternary weights as packed digits (2-bit and base-3) times int8 codes,
bit-exact against the integer product in numpy on every ISA body, and the XLA reference."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from bnn_jax.kernels import native, trits

ISAS = [i for i in native.ISAS if native.ISAS.index(i) <= native.ISAS.index(native.cpu_isa())]
# Off the 16-column chunks, the 16/20-row groups and the 8/4/2/1-row tiles.
SHAPES = [(1, 37, 21), (3, 100, 33), (8, 64, 80), (9, 61, 70), (2, 20, 16)]


@pytest.fixture
def isa_reset():
    yield
    native.set_isa("avx512")


def test_base3_digit_identity_all_bytes():
    # byte = ceil(256 v / 243); digit i = (byte * 3^i mod 256) * 3 >> 8 gives the base-3 digits
    # of v, most significant first, for every v < 243.
    for digits in itertools.product(range(3), repeat=5):
        v = int("".join(map(str, digits)), 3)
        byte = -(-256 * v // 243)
        assert byte < 256
        got = [((byte * 3 ** i) % 256) * 3 >> 8 for i in range(5)]
        assert got == list(digits), v


@pytest.mark.parametrize("fmt", list(trits.FORMATS))
def test_pack_roundtrip_and_size(fmt):
    rng = np.random.default_rng(0)
    w = rng.integers(-1, 2, (300, 50))
    p = trits.pack_trits(w, fmt)
    np.testing.assert_array_equal(np.asarray(trits.unpack_trits(p)), w)
    d = trits.FORMATS[fmt]
    assert p.nbytes == -(-50 // 16) * -(-300 // (4 * d)) * 64
    big = trits.pack_trits(np.zeros((4000, 160), np.int8), fmt)
    assert 8 * big.nbytes / (4000 * 160) == pytest.approx(8 / d, rel=1e-3)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", list(trits.FORMATS))
def test_native_bit_exact(isa, fmt, isa_reset):
    native.set_isa(isa)
    for i, (m, k, n) in enumerate(SHAPES):
        rng = np.random.default_rng(i)
        w = rng.integers(-1, 2, (k, n))
        x = rng.integers(-128, 128, (m, k))
        x[0, :3] = (-128, 127, -128)  # the extreme codes
        p = trits.pack_trits(w, fmt)
        want = x.astype(np.int64) @ w.astype(np.int64)
        got = trits.trit_matmul(jnp.asarray(x, jnp.int8), p, backend="cpu_native")
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=f"{isa} {fmt} {m, k, n}")


@pytest.mark.parametrize("fmt", list(trits.FORMATS))
def test_xla_reference_bit_exact(fmt):
    rng = np.random.default_rng(7)
    w, x = rng.integers(-1, 2, (61, 70)), rng.integers(-128, 128, (9, 61))
    got = trits.trit_matmul(jnp.asarray(x), trits.pack_trits(w, fmt), backend="xla")
    np.testing.assert_array_equal(np.asarray(got), x @ w)


def test_threads_do_not_change_results():
    rng = np.random.default_rng(3)
    w, x = rng.integers(-1, 2, (400, 300)), rng.integers(-128, 128, (3, 400))
    p = trits.pack_trits(w, "base3")
    try:
        native.set_num_threads(1)
        one = np.asarray(trits.trit_matmul(jnp.asarray(x, jnp.int8), p, backend="cpu_native"))
    finally:
        native.set_num_threads(None)
    many = np.asarray(trits.trit_matmul(jnp.asarray(x, jnp.int8), p, backend="cpu_native"))
    np.testing.assert_array_equal(one, x @ w)
    np.testing.assert_array_equal(many, one)


def test_bad_input():
    with pytest.raises(ValueError, match="valid choices"):
        trits.pack_trits(np.zeros((4, 4)), "base4")
    with pytest.raises(ValueError, match="-1, 0 or"):
        trits.pack_trits(np.full((4, 4), 2), "base3")
    p = trits.pack_trits(np.zeros((8, 4)), "2bit")
    with pytest.raises(ValueError, match=r"\(M, K=8\)"):
        trits.trit_matmul(jnp.zeros((1, 9), jnp.int8), p)


def test_absmax_codes_match_bitnet_act():
    from bnn_jax.quant.bitnet import bitnet_act

    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 50)), jnp.float32)
    codes, s = trits.absmax_codes(x)
    np.testing.assert_array_equal(np.asarray(codes / s), np.asarray(bitnet_act(x)))
    assert float(jnp.max(jnp.abs(codes))) <= 127

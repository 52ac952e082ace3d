"""The native CPU backend: bit-exact against numpy and the XLA path on every ISA body and thread
count, the packing kernel, the W1/W1.58 GEMV variants, and the fallback without a compiler."""

import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from bnn_jax import kernels as K
from bnn_jax.kernels import backend, native
from test_packed_conv import _np_conv

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ISAS = [i for i in native.ISAS if native.ISAS.index(i) <= native.ISAS.index(native.cpu_isa())]
PAIRS = [("binary", "binary"), ("bool", "binary"), ("ternary", "binary"), ("ternary", "ternary"),
         ("binary", "ternary"), ("bool", "ternary"), ("bool", "bool")]


def _values(rng, shape, encoding):
    if encoding == "binary":
        return np.where(rng.random(shape) < 0.5, -1, 1).astype(np.int32)
    v = rng.integers(0 if encoding == "bool" else -1, 2, shape).astype(np.int32)
    v.flat[0] = 1
    return v


@pytest.fixture
def isa_and_threads():
    """Restores the dispatch and the pool size after a test that changes them."""
    yield
    native.set_isa("avx512")
    native.set_num_threads(None)


def test_auto_is_native_on_cpu():
    assert native.available(), native.unavailable_reason()
    assert backend.resolve("auto") == ("cpu_native", False)
    assert native.num_threads() == native.machine_threads() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("isa", ISAS)
def test_matmul_every_encoding_and_isa(isa, isa_and_threads):
    assert native.set_isa(isa) == isa
    # Sizes off multiples of 32, of the 8/16-column vectors, of the 4-row tiles and of the
    # 256-column panels.
    shapes = [(19, 101, 150), (1, 77, 5), (6, 300, 277), (37, 33, 17)]
    for i, (enc_a, enc_b) in enumerate(PAIRS):
        rng = np.random.default_rng(i)
        m, k, n = shapes[i % len(shapes)]
        a, b = _values(rng, (m, k), enc_a), _values(rng, (k, n), enc_b)
        out = K.packed_matmul(K.pack(a, -1, enc_a), K.pack(b, 0, enc_b), backend="cpu_native")
        np.testing.assert_array_equal(np.asarray(out), a @ b, err_msg=f"{enc_a} x {enc_b}")


@pytest.mark.slow
@pytest.mark.parametrize("isa", ISAS)
def test_matmul_sweep_isa_threads_and_xla(isa, isa_and_threads):
    native.set_isa(isa)
    rng = np.random.default_rng(100)
    for trial in range(12):
        enc_a, enc_b = PAIRS[trial % len(PAIRS)]
        m, k, n = rng.integers(1, 90), rng.integers(1, 700), rng.integers(1, 600)
        a, b = _values(rng, (m, k), enc_a), _values(rng, (k, n), enc_b)
        pa, pb = K.pack(a, -1, enc_a, backend="xla"), K.pack(b, 0, enc_b)
        ref = np.asarray(K.packed_matmul(pa, pb, backend="xla"))
        np.testing.assert_array_equal(ref, a @ b)
        for threads in (1, 2, 5):
            native.set_num_threads(threads)
            np.testing.assert_array_equal(
                np.asarray(K.packed_matmul(pa, pb, backend="cpu_native")), ref,
                err_msg=f"{enc_a} x {enc_b} {(m, k, n)} threads {threads}")


def test_large_matmul_threads_agree(isa_and_threads):
    # Enough work to go through the thread pool (small products run inline).
    rng = np.random.default_rng(3)
    a, b = _values(rng, (70, 999), "binary"), _values(rng, (999, 301), "binary")
    pa, pb = K.pack(a, -1, backend="xla"), K.pack(b, 0)
    native.set_num_threads(1)
    one = np.asarray(K.packed_matmul(pa, pb, backend="cpu_native"))
    native.set_num_threads(4)
    four = np.asarray(K.packed_matmul(pa, pb, backend="cpu_native"))
    np.testing.assert_array_equal(one, a @ b)
    np.testing.assert_array_equal(four, one)


def test_batched_attention_and_epilogue():
    rng = np.random.default_rng(4)
    probs, values = _values(rng, (2, 3, 5, 40), "bool"), _values(rng, (2, 3, 40, 7), "binary")
    out = K.packed_matmul(K.pack_bool(probs, -1), K.pack_bits(values, -2), backend="cpu_native")
    np.testing.assert_array_equal(np.asarray(out), np.einsum("bhqk,bhkd->bhqd", probs, values))
    scale = rng.uniform(0.5, 2, 7).astype(np.float32)
    w = _values(rng, (40, 7), "binary")
    out = K.packed_matmul(K.pack_bool(probs, -1), K.pack_bits(w, 0), scale=scale,
                          backend="cpu_native")
    np.testing.assert_allclose(np.asarray(out), (probs @ w) * scale, rtol=1e-6)


def test_conv_pad_values_strides_and_ternary():
    rng = np.random.default_rng(7)
    x, w = _values(rng, (2, 7, 6, 37), "binary"), _values(rng, (3, 3, 37, 21), "binary")
    px, pw = K.pack_bits(x, 3), K.pack_bits(w, 2)
    for strides, padding, pad_value in [((2, 1), "SAME", 0.0), ((1, 1), "SAME", -1.0),
                                        ((1, 1), "VALID", 0.0)]:
        out = K.packed_conv2d(px, pw, strides=strides, padding=padding, pad_value=pad_value,
                              backend="cpu_native")
        np.testing.assert_array_equal(np.asarray(out),
                                      _np_conv(x, w, strides, padding, pad_value))
    xt, wt = _values(rng, (1, 6, 5, 33), "ternary"), _values(rng, (1, 5, 33, 4), "ternary")
    out = K.packed_conv2d(K.pack_ternary(xt, 3), K.pack_ternary(wt, 2), strides=2,
                          padding="SAME", backend="cpu_native")
    np.testing.assert_array_equal(np.asarray(out), _np_conv(xt, wt, (2, 2), "SAME", 0.0))


@pytest.mark.parametrize("encoding", ["binary", "bool", "ternary"])
def test_pack_equals_xla(encoding, isa_and_threads):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(3, 5, 70)).astype(np.float32)
    x[0, 0, :6] = [0.0, -0.0, np.nan, -np.inf, np.inf, -1e-30]  # edge values of x < 0, x != 0
    for isa in ISAS:
        native.set_isa(isa)
        got, ref = K.pack(x, -1, encoding, backend="cpu_native"), K.pack(x, -1, encoding,
                                                                            backend="xla")
        for g, r in zip((got.sign, got.mask), (ref.sign, ref.mask)):
            assert (g is None) == (r is None)
            if r is not None:
                np.testing.assert_array_equal(np.asarray(g), np.asarray(r))
    xi = np.concatenate([rng.integers(-3, 4, (3, 5, 69)), np.full((3, 5, 1), -2 ** 31)], -1)
    for v in (xi.astype(np.int32), xi.astype(np.int8).clip(-3, 3)):  # int32 natively, int8 widened
        np.testing.assert_array_equal(
            np.asarray(K.pack(v, -1, "ternary", backend="cpu_native").sign),
            np.asarray(K.pack(v, -1, "ternary", backend="xla").sign))
        np.testing.assert_array_equal(
            np.asarray(K.pack(v, -1, "bool", backend="cpu_native").mask),
            np.asarray(K.pack(v, -1, "bool", backend="xla").mask))
    xb = jnp.asarray(x, jnp.bfloat16)  # other dtypes are tested for sign / non-zero exactly
    np.testing.assert_array_equal(np.asarray(K.pack(xb, -1, "ternary", backend="cpu_native").mask),
                                  np.asarray(K.pack(xb, -1, "ternary", backend="xla").mask))


@pytest.mark.parametrize("encoding", ["binary", "ternary"])
def test_gemv_methods_exact_on_integer_activations(encoding, isa_and_threads):
    rng = np.random.default_rng(10)
    w = _values(rng, (75, 130), encoding).astype(np.float32)
    x = rng.integers(-8, 9, (3, 75)).astype(np.float32)  # every partial sum exact in f32
    pw = K.pack(w, 0, encoding)
    for isa in ISAS:
        native.set_isa(isa)
        for method in native.GEMV_METHODS:
            out = native.weight_matmul(jnp.asarray(x), pw.sign, pw.mask, method)
            np.testing.assert_array_equal(np.asarray(out), x @ w, err_msg=f"{isa} {method}")
    out = K.packed_weight_matmul(jnp.asarray(x, jnp.bfloat16), pw, backend="cpu_native",
                                 preferred_element_type=jnp.float32)
    np.testing.assert_array_equal(np.asarray(out), x @ w)


def test_gemv_float_activations_threads_and_int8(isa_and_threads):
    rng = np.random.default_rng(11)
    w = _values(rng, (300, 333), "ternary").astype(np.float32)
    x = rng.normal(size=(2, 300)).astype(np.float32)
    pw = K.pack_ternary(w, 0)
    outs = []
    for threads in (1, 3):
        native.set_num_threads(threads)
        outs.append(np.asarray(K.packed_weight_matmul(x, pw, backend="cpu_native")))
    np.testing.assert_array_equal(outs[1], outs[0])  # each column summed by one thread, in order
    np.testing.assert_allclose(outs[0], x @ w, rtol=1e-5, atol=1e-4)
    # W1.58A8: the same integer codes on both paths, so the same floats.
    q_nat = K.packed_weight_matmul(x, pw, backend="cpu_native", act_quant="int8")
    q_xla = K.packed_weight_matmul(x, pw, backend="xla", act_quant="int8")
    np.testing.assert_array_equal(np.asarray(q_nat), np.asarray(q_xla))
    step = np.abs(x).max(-1, keepdims=True) / 127
    np.testing.assert_allclose(np.asarray(q_nat), (np.round(x / step) @ w) * step, rtol=1e-5,
                               atol=1e-4)


def test_bad_input():
    with pytest.raises(ValueError, match="non-negative int"):
        native.set_num_threads(-1)
    with pytest.raises(ValueError, match="valid choices"):
        native.set_isa("sse2")
    with pytest.raises(ValueError, match="valid choices"):
        native.weight_matmul(jnp.ones((1, 32)), jnp.ones((1, 4), jnp.uint32), None, "fast")
    w = K.pack_bits(np.ones((40, 3)), 0)
    with pytest.raises(ValueError, match="act_quant must be one of"):
        K.packed_weight_matmul(np.ones((2, 40), np.float32), w, act_quant="int4")


def test_no_compiler_falls_back_with_one_warning(tmp_path):
    script = textwrap.dedent("""
        import warnings
        import numpy as np
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as caught:
            from bnn_jax import kernels as K
            from bnn_jax.kernels import backend, native
            a = np.where(np.random.default_rng(0).random((3, 40)) < 0.5, -1, 1)
            for _ in range(3):
                out = K.packed_matmul(K.pack(a, -1), K.pack(a.T, 0))
                assert (np.asarray(out) == a @ a.T).all()
            assert backend.resolve("auto") == ("xla", False)
        msgs = [str(w.message) for w in caught if "native CPU backend" in str(w.message)]
        assert len(msgs) == 1, msgs
        assert "no C++ compiler" in msgs[0] and "XLA path" in msgs[0], msgs[0]
        try:
            K.packed_matmul(K.pack(a, -1), K.pack(a.T, 0), backend="cpu_native")
        except RuntimeError as e:
            assert "cpu_native" in str(e) and "no C++ compiler" in str(e), e
        else:
            raise AssertionError("cpu_native without a build must raise")
        print("fallback ok")
    """)
    env = dict(os.environ, BNN_JAX_CXX=str(tmp_path / "no-such-g++"),
               BNN_JAX_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=REPO)
    env.pop("CXX", None)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "fallback ok" in proc.stdout, proc.stderr[-3000:]
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())

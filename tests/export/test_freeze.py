"""freeze/save/load: frozen outputs equal the fake-quant outputs; storage is the packed size."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from bnn_jax import export
from bnn_jax.nn import QuantConv, QuantLinear


class SmallCNN(nnx.Module):
    """Float stem, two binary convs (SAME zero / +1 padding, stride 2), BatchNorm, float head."""

    def __init__(self, rngs, *, c=40, kernel="magnitude_aware_sign", act="ste_sign"):
        self.stem = nnx.Conv(3, c, (3, 3), rngs=rngs)
        self.conv1 = QuantConv(c, 24, (3, 3), input_quantizer=act, kernel_quantizer=kernel,
                               use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(24, rngs=rngs)
        self.conv2 = QuantConv(24, 36, (3, 3), strides=2, pad_values=1.0, input_quantizer=act,
                               kernel_quantizer=kernel, rngs=rngs)
        self.head = nnx.Linear(36, 5, rngs=rngs)

    def __call__(self, x):
        x = self.bn(self.conv1(self.stem(x)))
        return self.head(jnp.mean(self.conv2(x), axis=(1, 2)))


class SmallMLP(nnx.Module):
    """A ternary-weight layer, a {0,1}-input layer and a float-activation (W1A32) layer."""

    def __init__(self, rngs):
        self.l1 = QuantLinear(20, 70, input_quantizer="ste_sign", kernel_quantizer="ste_tern",
                              rngs=rngs)
        self.l2 = QuantLinear(70, 33, input_quantizer="ste_heaviside", kernel_quantizer="ste_sign",
                              use_bias=False, rngs=rngs)
        self.l3 = QuantLinear(33, 6, kernel_quantizer="magnitude_aware_sign", rngs=rngs)

    def __call__(self, x):
        return self.l3(self.l2(self.l1(x)))


def _trained_like(model, seed):
    """Move the weights and BatchNorm statistics away from their init values (never zeros)."""
    rng = np.random.default_rng(seed)
    for _, v in nnx.iter_graph(model):
        if isinstance(v, nnx.Variable) and jnp.issubdtype(v[...].dtype, jnp.floating):
            v[...] = jnp.asarray(rng.uniform(0.5, 1.5, v[...].shape) *
                                 rng.choice([-1, 1], v[...].shape), v[...].dtype)
    for _, m in nnx.iter_graph(model):
        if isinstance(m, nnx.BatchNorm):
            m.var[...] = jnp.abs(m.var[...])
    model.eval()
    return model


def _np_binary_conv(x, w, strides, pads, pad_value):
    """Independent int64 convolution of ±1 NHWC x and HWIO w with explicit pads."""
    x = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=pad_value)
    kh, kw = w.shape[:2]
    ho = (x.shape[1] - kh) // strides[0] + 1
    wo = (x.shape[2] - kw) // strides[1] + 1
    out = np.zeros((x.shape[0], ho, wo, w.shape[-1]), np.int64)
    for i in range(kh):
        for j in range(kw):
            p = x[:, i:i + (ho - 1) * strides[0] + 1:strides[0], j:j + (wo - 1) * strides[1] + 1:
                  strides[1]]
            out += np.einsum("nhwc,co->nhwo", p.astype(np.int64), w[i, j].astype(np.int64))
    return out


@pytest.fixture(scope="module")
def cnn():
    """(fake-quant SmallCNN with trained-like weights, its frozen copy, the layer records)."""
    model = _trained_like(SmallCNN(nnx.Rngs(0), c=64), 1)  # conv2 has 24 (not 32k) inputs
    return (model, *export.freeze(model))


def test_cnn_frozen_equals_fake_quant_and_integer_part_is_exact(cnn):
    model, frozen, records = cnn
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 9, 7, 3)), jnp.float32)
    assert [r.frozen for r in records] == [True, True]
    assert all(r.encoding == "binary" and r.activations == "binary" for r in records)
    assert isinstance(frozen.conv1, export.FrozenConv) and isinstance(model.conv1, QuantConv)
    np.testing.assert_allclose(np.asarray(frozen(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-5)
    # Integer part of conv2 (stride 2, +1 border): the frozen accumulation before scaling.
    h = np.asarray(model.bn(model.conv1(model.stem(x))))
    acc = np.asarray(frozen.conv2(jnp.asarray(h)) - frozen.conv2.bias[...]) / \
        np.asarray(frozen.conv2.scale[...])
    w = np.where(np.asarray(model.conv2.kernel[...]) >= 0, 1, -1)
    pads = lax.padtype_to_pads(h.shape[1:3], (3, 3), (2, 2), "SAME")
    expected = _np_binary_conv(np.where(h >= 0, 1, -1), w, (2, 2), pads, 1)
    np.testing.assert_allclose(acc, expected, rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(np.rint(acc), expected)


def test_mlp_paths_ternary_bool_and_float_activations():
    model = _trained_like(SmallMLP(nnx.Rngs(1)), 3)
    model.l1.kernel[...] = model.l1.kernel[...] * jnp.asarray(  # some weights under threshold
        np.random.default_rng(4).choice([0.01, 1.0], (20, 70)), jnp.float32)
    x = jnp.asarray(np.random.default_rng(5).normal(size=(4, 20)), jnp.float32)
    frozen, records = export.freeze(model)
    got = {r.path: (r.encoding, r.activations) for r in records}
    assert got == {"l1": ("ternary", "binary"), "l2": ("binary", "bool"),
                   "l3": ("binary", "float")}
    # Scale 1 and integer inputs: the first two layers are exact integers.
    np.testing.assert_array_equal(np.asarray(frozen.l1(x)), np.asarray(model.l1(x)))
    h = model.l1(x)
    np.testing.assert_array_equal(np.asarray(frozen.l2(h)), np.asarray(model.l2(h)))
    np.testing.assert_allclose(np.asarray(frozen(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-4)
    # The same frozen layer on the Pallas TPU kernel (interpret mode on CPU).
    on_pallas, _ = export.freeze(model, backend="pallas_tpu")
    np.testing.assert_array_equal(np.asarray(on_pallas.l2(h)), np.asarray(frozen.l2(h)))


@pytest.mark.parametrize("act", [None, dict(name="dorefa", k_bit=2)])
def test_conv_with_float_or_multilevel_activations(act):
    # Packed weights, activations that are not ±1/{0,1}/ternary: the float conv path.
    model = _trained_like(SmallCNN(nnx.Rngs(3), c=8, kernel="ste_sign", act=act), 12)
    frozen, records = export.freeze(model)
    assert [(r.frozen, r.activations) for r in records] == [(True, "float")] * 2
    x = jnp.asarray(np.random.default_rng(13).normal(size=(2, 5, 6, 3)), jnp.float32)
    np.testing.assert_allclose(np.asarray(frozen(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-4)


def test_unsupported_layers_stay_float():
    class M(nnx.Module):
        def __init__(self, rngs):
            self.k2 = QuantLinear(8, 4, kernel_quantizer=dict(name="dorefa", k_bit=2,
                                                              mode="weights"), rngs=rngs)
            self.dilated = QuantConv(8, 8, (3, 3), kernel_dilation=2,
                                     kernel_quantizer="ste_sign", rngs=rngs)
            self.fp = QuantLinear(8, 4, rngs=rngs)

        def __call__(self, x):
            return self.k2(self.dilated(x))

    model = M(nnx.Rngs(0))
    frozen, records = export.freeze(model)
    assert not any(r.frozen for r in records)
    reasons = {r.path: r.reason for r in records}
    assert "not binary/ternary" in reasons["k2"] and "dilated" in reasons["dilated"]
    assert reasons["fp"] == "full-precision kernel"
    assert type(frozen.k2) is QuantLinear and type(frozen.dilated) is QuantConv


def test_storage_is_one_bit_per_weight_plus_scales(cnn):
    r = cnn[2][0]  # 3x3x64x24, no bias: 1 bit per weight + one float32 scale per channel
    assert r.bytes_after == 3 * 3 * 64 * 24 // 8 + 24 * 4
    assert r.bytes_before == 3 * 3 * 64 * 24 * 4


def test_save_load_round_trip_and_file_size(tmp_path, cnn):
    _, frozen, records = cnn
    x = jnp.asarray(np.random.default_rng(8).normal(size=(2, 6, 6, 3)), jnp.float32)
    path = str(tmp_path / "model.npz")
    size = export.save(frozen, path, records)
    assert size == os.path.getsize(path)
    with np.load(path) as f:
        entries = {k: f[k] for k in f.files}
    meta = entries.pop("__meta__")
    data = sum(v.nbytes for v in entries.values())
    assert data == export.state_bytes(frozen)
    # npz = zip of .npy files: per entry a zip header, a central directory record and an
    # .npy header (each under ~200 bytes plus twice the name) on top of the raw bytes.
    overhead = size - data - meta.nbytes
    assert 0 < overhead <= sum(400 + 2 * len(k) for k in [*entries, "__meta__"])
    assert entries["conv1/w_sign"].dtype == np.uint32
    # A fresh model of the same architecture (different init) becomes the frozen one.
    fresh = SmallCNN(nnx.Rngs(42), c=64)
    loaded = export.load(path, fresh)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(frozen(x)))
    assert export.read_meta(path)["layers"]["conv2"]["activations"] == "binary"


def test_save_is_atomic(tmp_path, monkeypatch):
    frozen, _ = export.freeze(_trained_like(SmallMLP(nnx.Rngs(0)), 9))
    path = tmp_path / "m.npz"
    export.save(frozen, str(path))
    before = path.read_bytes()

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        export.save(frozen, str(path))
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]  # no temporary left behind


def test_bad_input(tmp_path, cnn):
    with pytest.raises(ValueError, match="NNX Module"):
        export.freeze({"kernel": 1})
    with pytest.raises(ValueError, match="bare layer"):
        export.freeze(QuantLinear(4, 2, kernel_quantizer="ste_sign", rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="valid choices"):
        export.freeze(SmallMLP(nnx.Rngs(0)), backend="cuda")

    class Learned(nnx.Module):
        def __init__(self, rngs):
            self.l = QuantLinear(4, 2, input_quantizer="rsign", kernel_quantizer="ste_sign",
                                 rngs=rngs)

    with pytest.raises(ValueError, match="call the model once"):
        export.freeze(Learned(nnx.Rngs(0)))
    path = str(tmp_path / "cnn.npz")
    frozen = cnn[1]
    export.save(frozen, path)
    with pytest.raises(ValueError, match="does not match|no quantized layers"):
        export.load(path, SmallMLP(nnx.Rngs(0)))
    with pytest.raises(ValueError, match="shape"):
        export.load(path, SmallCNN(nnx.Rngs(0), c=48))
    np.savez(tmp_path / "plain.npz", a=np.ones(3))
    with pytest.raises(ValueError, match="not a frozen bnn_jax model"):
        export.load(str(tmp_path / "plain.npz"), SmallCNN(nnx.Rngs(0), c=64))


def test_jit_of_frozen_model():
    model = _trained_like(SmallMLP(nnx.Rngs(2)), 10)
    frozen, _ = export.freeze(model)
    x = jnp.asarray(np.random.default_rng(11).normal(size=(3, 20)), jnp.float32)
    graph, state = nnx.split(frozen)
    f = jax.jit(lambda s, x: nnx.merge(graph, s)(x))
    # Float last layer: fusion under jit may reorder float sums (ulp-level differences).
    np.testing.assert_allclose(np.asarray(f(state, x)), np.asarray(frozen(x)), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda s, x: nnx.merge(graph, s).l1(x))(
        state, x)), np.asarray(frozen.l1(x)))


class Shared(nnx.Module):
    """One binary layer reachable from two attributes (applied twice)."""

    def __init__(self, rngs):
        self.first = QuantLinear(36, 36, input_quantizer="ste_sign",
                                 kernel_quantizer="magnitude_aware_sign", rngs=rngs)
        self.again = self.first

    def __call__(self, x):
        return self.again(self.first(x))


def test_shared_layer_is_frozen_saved_and_loaded_once(tmp_path):
    model = _trained_like(Shared(nnx.Rngs(0)), 20)
    frozen, records = export.freeze(model)
    assert len(records) == 1 and frozen.first is frozen.again
    path = str(tmp_path / "shared.npz")
    export.save(frozen, path, records)
    loaded = export.load(path, Shared(nnx.Rngs(1)))
    assert isinstance(loaded.again, export.FrozenLinear) and loaded.first is loaded.again
    x = jnp.asarray(np.random.default_rng(21).normal(size=(3, 36)), jnp.float32)
    # Independently: the layer twice, sign(x) @ (mean|W| per column · sign(W)) + b.
    w, b = np.asarray(model.first.kernel[...]), np.asarray(model.first.bias[...])
    wq = np.where(w >= 0, 1.0, -1.0) * np.abs(w).mean(axis=0)
    h = np.where(np.asarray(x) >= 0, 1.0, -1.0) @ wq + b
    want = np.where(h >= 0, 1.0, -1.0) @ wq + b
    np.testing.assert_allclose(np.asarray(loaded(x)), want, rtol=1e-5, atol=1e-4)


def test_damaged_or_foreign_files_raise_clear_errors(tmp_path, cnn):
    path = tmp_path / "cnn.npz"
    export.save(cnn[1], str(path))
    data = path.read_bytes()
    truncated, text, single = tmp_path / "cut.npz", tmp_path / "text.npz", tmp_path / "one.npy"
    truncated.write_bytes(data[:len(data) // 2])
    text.write_text("not a model")
    np.save(single, np.ones(3))
    for p in (truncated, text, single):
        with pytest.raises(ValueError, match="not a readable frozen model|damaged|single .npy"):
            export.load(str(p), SmallCNN(nnx.Rngs(0), c=64))
    with pytest.raises(ValueError, match="valid choices"):
        export.load(str(path), SmallCNN(nnx.Rngs(0), c=64), backend="cuda")
    # Readable, but a layer record names no frozen layer kind.
    with np.load(path) as f:
        entries = {k: f[k] for k in f.files}
    meta = json.loads(entries["__meta__"].tobytes().decode())
    meta["layers"]["conv1"]["kind"] = "FrozenDense"
    entries["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "edited.npz", **entries)
    with pytest.raises(ValueError, match="record of layer 'conv1' is damaged"):
        export.load(str(tmp_path / "edited.npz"), SmallCNN(nnx.Rngs(0), c=64))

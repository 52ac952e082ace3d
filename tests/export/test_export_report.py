"""export.report: bits per weight of the weight planes alone, scales and biases as overhead."""

import os
import stat

import numpy as np
from flax import nnx

from bnn_jax import export
from bnn_jax.nn import QuantLinear


class Net(nnx.Module):
    def __init__(self, rngs):
        self.a = QuantLinear(64, 32, input_quantizer="ste_sign",
                             kernel_quantizer="magnitude_aware_sign", rngs=rngs)
        self.b = QuantLinear(40, 8, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                             rngs=rngs)
        self.t = QuantLinear(64, 16, input_quantizer="ste_sign", kernel_quantizer="ste_tern",
                             rngs=rngs)
        self.head = nnx.Linear(32, 10, rngs=rngs)


def test_report_counts_planes_and_overhead_by_hand():
    model = Net(nnx.Rngs(0))
    frozen, records = export.freeze(model)
    rec = {r.path: r for r in records}
    # a: 64 x 32 binary, packed along the 64 inputs: 2 words x 32 outputs x 4 bytes = 256 bytes
    # for 2048 weights (1 bit each); 32 float32 scales + 32 float32 biases = 256 bytes.
    # b: 40 inputs pad to 2 words: 2 x 8 x 4 = 64 bytes for 320 weights = 1.6 bits; 8 + 8 floats.
    # t: ternary = sign and mask planes: 2 x (2 x 16 x 4) = 256 bytes for 1024 weights = 2 bits.
    want = {"a": (2048, 8192 + 128, 256, 256), "b": (320, 1280 + 32, 64, 64),
            "t": (1024, 4096 + 64, 256, 128)}
    for path, (n, before, planes, overhead) in want.items():
        r = rec[path]
        assert (r.weights, r.bytes_before, r.plane_bytes, r.overhead_bytes) == \
            (n, before, planes, overhead), path
        assert r.bytes_after == planes + overhead
    assert rec["a"].bits_per_weight == 1.0
    assert rec["b"].bits_per_weight == 1.6
    assert rec["t"].bits_per_weight == 2.0
    before, after = export.state_bytes(model), export.state_bytes(frozen)
    head = 32 * 10 * 4 + 10 * 4
    assert before == 8320 + 1312 + 4160 + head
    assert after == 512 + 128 + 384 + head
    text = export.report(records, before, after)
    lines = {ln.split()[0]: ln.split() for ln in text.splitlines()[1:4]}
    # columns: layer kind weights before after bits/w overhead encoding
    assert lines["a"][2:7] == ["2048", "8320", "512", "1.000", "256"]
    assert lines["b"][2:7] == ["320", "1312", "128", "1.600", "64"]
    assert lines["t"][2:7] == ["1024", "4160", "384", "2.000", "128"]
    assert "W:ternary" in " ".join(lines["t"])
    # 3392 weights in 576 bytes of planes = 1.358 bits; 448 bytes of scales and biases.
    assert "frozen layers: 3392 weights in 576 bytes of planes (1.358 bits/weight) + 448 bytes" \
        in text
    assert (f"= 576 bytes of weight planes + {after - 576} bytes of overhead") in text


def test_kept_float_layer_has_no_bits_per_weight():
    class Kbit(nnx.Module):
        def __init__(self, rngs):
            self.q = QuantLinear(32, 4, kernel_quantizer=dict(name="dorefa", k_bit=2), rngs=rngs)

    model = Kbit(nnx.Rngs(0))
    # Spread latent weights so that all four 2-bit levels occur: not binary/ternary x scale.
    model.q.kernel[...] = np.linspace(-3, 3, 128, dtype=np.float32).reshape(32, 4)
    _, records = export.freeze(model)
    (r,) = records
    assert not r.frozen and r.plane_bytes == 0
    assert r.overhead_bytes == r.bytes_before == 32 * 4 * 4 + 4 * 4
    row = export.report(records).splitlines()[1].split()
    assert row[5] == "-" and row[6] == str(r.bytes_before)


def test_saved_file_gets_the_usual_permissions(tmp_path):
    frozen, records = export.freeze(Net(nnx.Rngs(0)))
    path = tmp_path / "net.npz"
    old = os.umask(0o022)
    try:
        export.save(frozen, str(path), records)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    back = export.load(str(path), Net(nnx.Rngs(1)))
    x = np.ones((2, 64), np.float32)
    np.testing.assert_array_equal(np.asarray(back.a(x)), np.asarray(frozen.a(x)))

"""Model summary: parameter counts, bit widths and memory against counts made by hand."""

from flax import nnx

from bnn_jax import models
from bnn_jax.analysis import summary


def test_binary_mlp_counts_bits_and_memory():
    model = models.build(dict(name="mlp", hidden=(16, 8), input_quantizer="ste_sign",
                              kernel_quantizer="ste_sign"),
                         num_classes=10, input_shape=(8, 8, 1), rngs=nnx.Rngs(0))
    rows = {r.path: r for r in summary.summarize(model)}
    assert set(rows) == {"stem", "stem_bn", "layers/0", "norms/0", "head"}
    binary = rows["layers/0"]
    assert (binary.kind, binary.input_bits, binary.kernel_bits) == ("QuantLinear", 1, 1)
    assert (binary.quantized_params, binary.float_params) == (16 * 8, 0)  # no bias
    assert (rows["stem"].kernel_bits, rows["stem"].float_params) == (None, 64 * 16 + 16)
    assert (rows["norms/0"].float_params, rows["norms/0"].non_trainable) == (2 * 8, 2 * 8)
    t = summary.totals(list(rows.values()))
    floats = (64 * 16 + 16) + 2 * 16 + 2 * 8 + (8 * 10 + 10)
    frozen = 2 * 16 + 2 * 8  # BatchNorm running mean and variance
    assert (t["params"], t["quantized_params"], t["non_trainable"]) == (128 + floats, 128, frozen)
    assert t["memory_bytes"] == (128 * 1 + (floats + frozen) * 32) / 8
    assert t["float32_bytes"] == (128 + floats + frozen) * 4
    table = summary.format_table(list(rows.values()))
    assert "| layers/0 | QuantLinear | 1 | 1 | 128 | 0 | 0 |" in table

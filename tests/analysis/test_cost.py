"""Cost analysis: larq-summary counts, ACE, BOPs and FLOPs on networks small enough to count by
hand, and the tiny binary model against the summary larq itself printed."""

import json
import pathlib
import re
import subprocess
import sys

import pytest
from flax import nnx

from bnn_jax.analysis import cost
from bnn_jax.nn import QuantConv, QuantLinear

DATA = pathlib.Path(__file__).parents[1] / "data"


class TinyBNN(nnx.Module):
    """The oracle's tiny_bnn: binary conv -> BN -> binary conv s2 -> flatten -> binary dense."""

    def __init__(self, rngs):
        b = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign")
        self.conv1 = QuantConv(16, 16, (3, 3), pad_values=1.0, use_bias=False, rngs=rngs, **b)
        self.bn1 = nnx.BatchNorm(16, rngs=rngs)
        self.conv2 = QuantConv(16, 4, (3, 3), strides=2, pad_values=1.0, use_bias=False,
                               rngs=rngs, **b)
        self.dense = QuantLinear(64, 32, rngs=rngs, **b)

    def __call__(self, x):
        x = self.conv2(self.bn1(self.conv1(x)))
        return self.dense(x.reshape(x.shape[0], -1))


def _larq_summary():
    """Numbers of larq's printed tiny_bnn summary (tests/data/tiny_model_summary.txt)."""
    text = (DATA / "tiny_model_summary.txt").read_text()
    total = re.search(r"\| Total\s+(\d+)\s+(\d+)\s+([\d.]+)\s+(\d+)", text).groups()
    return text, [float(v) for v in total]


def test_tiny_bnn_matches_larq_summary():
    text, (one_bit, fp, kb, macs) = _larq_summary()
    c = cost.analyze(TinyBNN(nnx.Rngs(0)), (8, 8, 16))
    t = c.totals()
    rows = {r.path: r for r in c.layers}
    assert rows["conv1"].params == {1.0: 2304} and rows["conv1"].macs == {1.0: 147456}
    assert rows["bn1"].params == {32.0: 32} and rows["bn1"].non_trainable == 32
    assert rows["dense"].params == {1.0: 2048, 32.0: 32} and rows["dense"].macs == {1.0: 2048}
    assert rows["conv2"].output_shape == (4, 4, 4)
    assert t["macs_by_precision"] == {"1": macs}
    assert sum(r.params.get(1.0, 0) for r in c.layers) == one_bit
    assert sum(r.params.get(32.0, 0) for r in c.layers) == fp
    assert round(t["memory_bytes"] * 8 / 8192, 2) == kb
    assert "Model size                        872.00 B" in text and t["memory_bytes"] == 872
    assert "680.00 B" in text and t["memory_8bit_bytes"] == 680
    assert "19.50 KiB" in text and t["float32_bytes"] == 19.5 * 1024
    assert "Non-trainable params              32 " in text and t["non_trainable_params"] == 32
    assert t["total_params"] == 4992 and t["binarized_mac_ratio"] == 1.0
    assert t["bops"] == macs and t["flops"] == macs / 64 and t["ace"] == macs


class Mixed(nnx.Module):
    """Float stem, grouped binary conv, depthwise conv, 8-bit/4-bit conv, 4-bit dense."""

    def __init__(self, rngs):
        self.stem = nnx.Conv(3, 8, (3, 3), strides=2, rngs=rngs)
        self.grouped = QuantConv(8, 16, (3, 3), feature_group_count=4, use_bias=False,
                                 input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                                 rngs=rngs)
        self.depthwise = QuantConv(16, 16, (5, 5), strides=2, feature_group_count=16,
                                   kernel_quantizer="ste_sign", use_bias=False, rngs=rngs)
        self.int8 = QuantConv(16, 12, (1, 1), input_quantizer=dict(name="aqt", bits=4),
                              kernel_quantizer=dict(name="aqt", bits=8), rngs=rngs)
        self.bn = nnx.BatchNorm(12, use_scale=False, rngs=rngs)
        self.head = QuantLinear(12, 5, input_quantizer=dict(name="aqt", bits=4),
                                kernel_quantizer=dict(name="aqt", bits=4), rngs=rngs)

    def __call__(self, x):
        x = self.bn(self.int8(self.depthwise(self.grouped(self.stem(x)))))
        return self.head(x.mean(axis=(1, 2)))


def test_mixed_precision_counts_by_hand():
    c = cost.analyze(Mixed(nnx.Rngs(0)), (16, 16, 3))
    rows = {r.path: r for r in c.layers}
    # stem: 16x16 SAME stride 2 -> 8x8; kernel 3*3*3*8 = 216 (+8 bias), float input and kernel
    assert rows["stem"].macs == {32.0: 216 * 64} and rows["stem"].params == {32.0: 224}
    # grouped: 3*3*(8/4)*16 = 288 binary weights at 8x8 -> binary MACs
    assert rows["grouped"].params == {1.0: 288} and rows["grouped"].macs == {1.0: 288 * 64}
    # depthwise 5x5, stride 2 -> 4x4: 5*5*1*16 = 400 binary weights, float input -> 32-bit MACs
    assert rows["depthwise"].macs == {32.0: 400 * 16}
    assert rows["depthwise"].output_shape == (4, 4, 16)
    # 1x1 8-bit kernel, 4-bit input: precision max(4, 8) = 8; bias 12 at 32 bits
    assert rows["int8"].params == {8.0: 192, 32.0: 12} and rows["int8"].macs == {8.0: 192 * 16}
    assert rows["bn"].params == {32.0: 24} and rows["bn"].trainable == 0  # bias folded
    assert rows["head"].macs == {4.0: 60} and rows["head"].params == {4.0: 60, 32.0: 5}
    t = c.totals()
    macs = 216 * 64 + 288 * 64 + 400 * 16 + 192 * 16 + 60
    assert t["macs"] == macs
    assert t["binarized_mac_ratio"] == pytest.approx(288 * 64 / macs)
    assert t["ace"] == (216 * 64 * 16 * 16 + 288 * 64 * 1 + 400 * 16 * 1 * 16
                        + 192 * 16 * 8 * 4 + 60 * 4 * 4)
    assert t["bops"] == 288 * 64
    assert t["flops"] == macs - 288 * 64 + 288 * 64 / 64
    params = 224 + 288 + 400 + 204 + 24 + 65
    assert (t["total_params"], t["non_trainable_params"]) == (params, 24)
    bits = 224 * 32 + 288 + 400 + 192 * 8 + 12 * 32 + 24 * 32 + 60 * 4 + 5 * 32
    assert t["memory_bytes"] == bits / 8
    assert t["memory_8bit_bytes"] == (bits - (224 + 12 + 24 + 5) * 24) / 8
    assert t["scalar_ops"] == 4 * 4 * 12  # the BatchNorm's outputs
    # float operands at 32 bits instead of 16 changes only the float terms
    c32 = cost.analyze(Mixed(nnx.Rngs(0)), (16, 16, 3), float_bits=32)
    assert c32.totals()["ace"] - t["ace"] == 216 * 64 * (32 * 32 - 16 * 16) + 400 * 16 * 16


def test_abstract_model_and_table():
    model = nnx.eval_shape(lambda: Mixed(nnx.Rngs(0)))
    c = cost.analyze(model, (16, 16, 3))
    assert c.totals()["macs"] == cost.analyze(Mixed(nnx.Rngs(0)), (16, 16, 3)).totals()["macs"]
    table = cost.format_table(c)
    assert "| grouped | QuantConv | 1 | (8, 8, 16) |" in table
    assert "Ratio of MACs that are binarized" in table


def test_cli_json_keys():
    # the real command line once, in a subprocess
    out = subprocess.run([sys.executable, "-m", "bnn_jax.analysis", "--model", "digits_cnn",
                          "--input-shape", "8,8,1", "--num-classes", "10", "--json"],
                         capture_output=True, text=True, check=True).stdout
    d = json.loads(out)
    for k in ("total_params", "trainable_params", "non_trainable_params", "memory_bytes",
              "macs", "binarized_mac_ratio", "ace", "bops", "flops"):
        assert k in d
    # digits_cnn defaults (width 64, depth 3, 2x2 max-pool after block 0), no quantizers: stem
    # 3x3x1x64 and block 0 at 8x8, blocks 1-2 at 4x4, head 64x10; every MAC at 32 bits.
    macs = 9 * 64 * 64 + 9 * 64 * 64 * 64 + 2 * 9 * 64 * 64 * 16 + 64 * 10
    assert d["macs"] == macs and d["binarized_mac_ratio"] == 0 and d["bops"] == 0
    assert d["flops"] == macs and d["ace"] == macs * 16 * 16


def test_cli_rejects_unknown_model(capsys):
    from bnn_jax.analysis.__main__ import main

    assert main(["--model", "nope", "--input-shape", "8,8,1", "--num-classes", "10"]) == 2
    assert "valid models" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", "mlp", "--input-shape", "8,x", "--num-classes", "10"])


def test_run_summary_carries_the_cost_table():
    import ml_collections

    from bnn_jax import models
    from bnn_jax.analysis import summary

    model = nnx.eval_shape(lambda: models.build(dict(name="binary_alexnet"), num_classes=10,
                                                input_shape=(64, 64, 3), rngs=nnx.Rngs(0)))
    rows = summary.summarize(model)
    assert rows.cost is not None
    cfg = ml_collections.ConfigDict(dict(model=dict(name="binary_alexnet"),
                                         data=dict(name="synthetic")))
    md = summary.run_summary_markdown(cfg, {"test_top1": 0.5}, rows)
    assert "## Cost (per example, larq summary accounting)" in md
    assert f"| Number of MACs | {cost._num(rows.cost.totals()['macs'])} |" in md
    # a model without input_shape (the digits CNN) keeps the old summary
    plain = summary.summarize(models.build(dict(name="digits_cnn"), num_classes=10,
                                           input_shape=(8, 8, 1), rngs=nnx.Rngs(0)))
    assert plain.cost is None


def test_cli_reads_the_model_from_a_config_file(capsys):
    from bnn_jax.analysis.__main__ import main

    config = pathlib.Path(__file__).parents[2] / "configs" / "reste.py"
    assert main(["--config", f"{config}:model=resnet20", "--input-shape", "32,32,3",
                 "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    # the config's ReSTE quantizers make the inner convs binary: binary MACs 40,108,032 (18
    # 3x3 convs at 32/16/8 px), float 442,368 (stem) + 640 (dense) -> 0.98908
    assert out.startswith("# resnet20 at (32, 32, 3)")
    binary = 6 * 1024 * 9 * 16 * 16 + 256 * 9 * (16 * 32 + 5 * 32 * 32) \
        + 64 * 9 * (32 * 64 + 5 * 64 * 64)
    ratio = binary / (binary + 32 * 32 * 27 * 16 + 640)
    assert f"| Ratio of MACs that are binarized | {ratio:.4f} |" in out
    assert "1-bit MACs" in out and "| Ratio of MACs that are binarized | 0.9891 |" in out

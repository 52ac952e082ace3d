"""The main text job at a few steps: BitNet b1.58 decoder on the offline corpus writes
validation perplexity and bits per byte under split ``test`` of metrics.jsonl."""

import importlib.util
import json
import math
import pathlib

from bnn_jax import data
from bnn_jax.train import run

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_bitnet_lm_writes_perplexity_and_bits_per_byte(tmp_path):
    spec = importlib.util.spec_from_file_location("c", ROOT / "configs" / "bitnet_lm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("quick,steps=3")
    c.tensorboard, c.mesh.num_devices, c.async_checkpoint = False, 1, False
    assert c.model.kernel_quantizer.name == "bitnet_weight"
    assert c.model.input_quantizer.name == "bitnet_act"
    run(c, str(tmp_path))
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    test = [x for x in lines if x["split"] == "test"][-1]
    assert math.isclose(test["perplexity"], math.exp(test["loss"]), rel_tol=1e-9)
    num_bytes = data.build(c.data).eval_num_bytes
    nats = test["loss"] * test["tokens"]
    assert math.isclose(test["bits_per_byte"], nats / math.log(2) / num_bytes, rel_tol=1e-9)
    assert 1.0 < test["perplexity"] < 259  # better than nothing, below the byte vocabulary

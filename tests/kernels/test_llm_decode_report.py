"""experiments/llm_decode.py: targets judged from the records, the kernels.md section rendered
from the committed records, and earlier records never overwritten."""

import importlib.util
import json
import pathlib

import pytest

from bnn_jax.kernels import bench

REPO = pathlib.Path(__file__).resolve().parents[2]
RECORDS = REPO / "experiments" / "results" / "llm_decode.json"


def _script():
    spec = importlib.util.spec_from_file_location("llm_decode",
                                                  REPO / "experiments" / "llm_decode.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _data(mod, base3_s, f32_s, bf16_s, base3_bytes):
    variants = list(mod.VARIANTS)
    times = {v: [1.0, 1.0, 1.0] for v in variants}
    times.update(f32=f32_s, bf16=bf16_s, w158a8_base3=base3_s)
    rec = dict(op="decode_step", batch=1, times_s=times)
    weights = 1000
    memory = {v: dict(layers_bytes=4 * weights, linear_plane_bytes=None) for v in variants}
    memory["bf16"]["layers_bytes"] = 2 * weights
    memory["w158a8_base3"] = dict(layers_bytes=base3_bytes, linear_plane_bytes=base3_bytes)
    return dict(meta=dict(linear_weights=weights), memory=memory, records=[rec])


def test_targets_are_judged_from_the_records():
    mod = _script()
    lines = mod.targets(_data(mod, [1.0, 1.0, 1.0], [2.0, 0.5, 3.0], [0.9, 0.8, 0.5], 200))
    assert "faster than f32 at batch 1: **met** (median 2.00x; 2 of 3" in lines[0]
    assert "faster than bf16 at batch 1: **NOT met** (median 0.80x; 0 of 3" in lines[1]
    assert "**met**" in lines[2] and "(10.00x, 1.600 bits/weight)" in lines[2]
    lines = mod.targets(_data(mod, [1.0] * 3, [2.0] * 3, [2.0] * 3, 201))
    assert "**NOT met**" in lines[2] and "9.95x" in lines[2]
    assert "not measured" in lines[3]


def test_committed_section_is_rendered_from_the_committed_records():
    mod = _script()
    data = json.loads(RECORDS.read_text())
    assert data["meta"]["format"] == mod.FORMAT and not data["meta"]["quick"]
    start, end = bench.MARKS["llm-decode"]
    text = (REPO / "experiments" / "kernels.md").read_text()
    block = text.split(start)[1].split(end)[0].strip()
    assert block == mod.markdown(data), ("stale: rerun `python experiments/llm_decode.py "
                                         "--render ... --md experiments/kernels.md`")
    decode = [r for r in data["records"] if r["op"] == "decode_step"]
    assert sorted(r["batch"] for r in decode) == list(mod.BATCHES)
    for r in data["records"]:
        for values in r["times_s"].values():
            assert len(values) == data["meta"]["rounds"]
    assert all(data["meta"]["checks"].values())


def test_earlier_records_are_never_overwritten(tmp_path):
    mod = _script()
    (tmp_path / mod.NAME).write_text("{}")
    with pytest.raises(SystemExit):
        mod.main(["--out", str(tmp_path), "--quick"])
    assert (tmp_path / mod.NAME).read_text() == "{}"

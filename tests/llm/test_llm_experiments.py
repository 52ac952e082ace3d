"""The LLM experiment reports are rendered from their committed json (no hand-typed number)."""

import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _module(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["llm_small", "bitnet_memory"])
def test_report_is_rendered_from_its_json(name):
    module = _module(name)
    data = json.loads((ROOT / "experiments" / "results" / f"{name}.json").read_text())
    assert (ROOT / "experiments" / f"{name}.md").read_text() == module.render(data)


def test_llm_small_compares_every_method_on_the_same_stream():
    data = json.loads((ROOT / "experiments" / "results" / "llm_small.json").read_text())
    rows = {r["model"]: r for r in data["rows"]}
    assert {"float", "BitNet b1.58", "GPTQ 2-bit", "PB-LLM GPTQ-PB 30 %"} <= set(rows)
    assert len({r["eval"]["tokens"] for r in data["rows"]}) == 1  # same scored tokens
    assert len({r["steps"] for r in data["rows"] if r["kind"] == "trained"}) == 1


def test_bitnet_memory_records_the_full_3b_shape_on_8_devices():
    data = json.loads((ROOT / "experiments" / "results" / "bitnet_memory.json").read_text())
    for r in data["rows"]:
        assert r["num_layers"] == 26 and 3.3e9 < r["params"] < 3.5e9
        n = r["mesh"]["data"] * r["mesh"]["fsdp"] * r["mesh"]["model"]
        assert n == 8
        # fp32 params + two Adam moments, split 8 ways, are most of the arguments
        assert 0.9 < r["argument_bytes"] / (12 * r["params"] / 8) < 1.1

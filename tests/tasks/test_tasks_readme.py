"""The README's task and distillation snippets run as written."""

from conftest import readme_python_blocks

from bnn_jax.train import distill


def test_readme_task_blocks_run_and_the_tbt_terms_validate():
    blocks = readme_python_blocks("### Tasks, text, diffusion and distillation",
                                  "<!-- section:train:end -->")
    assert len(blocks) == 2
    scope = {}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), scope)
    distill.validate(scope["kd"])
    assert [t["name"] for t in distill.terms(scope["kd"])[1]] == ["distribution", "hidden_mse"]


def test_readme_bitnet_table_is_rendered_from_the_committed_results():
    import importlib.util
    import json
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("bitnet_lm_exp",
                                                  root / "experiments" / "bitnet_lm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = json.loads((root / "experiments" / "results" / "bitnet_lm.json").read_text())
    assert {r["config"] for r in data["rows"]} == {"configs/bitnet_lm.py",
                                                   "configs/bitnet_lm.py:float"}
    assert all({"perplexity", "bits_per_byte"} <= set(r["test"]) for r in data["rows"])
    assert module.table(data) in (root / "README.md").read_text()
    assert module.table(data) in (root / "experiments" / "bitnet_lm.md").read_text()

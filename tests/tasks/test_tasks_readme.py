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

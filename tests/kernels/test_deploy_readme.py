"""The README section "Deploy: packed bits, ..." runs as written and computes what it says."""

import os

import numpy as np
from conftest import README, readme_python_blocks



LLM = "### Running a compressed LLM"


def _deploy_blocks():
    return readme_python_blocks("<!-- section:deploy:start -->", LLM)


def test_readme_deploy_section_runs(capsys):
    blocks = _deploy_blocks()
    assert len(blocks) == 2
    scope = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), scope)
    a, w, x, z = scope["a"], scope["w"], scope["x"], scope["z"]
    np.testing.assert_allclose(np.asarray(z), np.asarray(x, np.float32) @ w, rtol=1e-5,
                               atol=1e-4)
    assert "W:binary A:binary" in capsys.readouterr().out
    assert os.path.getsize("/tmp/net_frozen.npz") > 64 * 32 // 8
    assert a.shape == (8, 1000)


def test_readme_compressed_llm_example_runs():
    """The low-bit LLM example freezes, and its frozen logits equal the fake-quant ones."""
    blocks = readme_python_blocks(LLM, "<!-- section:deploy:end -->")
    assert blocks
    scope = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), scope)
    model, frozen, prompt = scope["model"], scope["frozen"], scope["prompt"]
    want = np.asarray(model(prompt))
    got = np.asarray(frozen(prompt))
    # BitNet's int8 activation codes can move across a rounding boundary in float32.
    np.testing.assert_allclose(got, want, atol=1e-3 * np.abs(want).max())
    assert scope["tokens"].shape == (1, 4)  # the new tokens

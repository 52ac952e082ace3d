"""The README section "Deploy: packed bits, ..." runs as written and computes what it says."""

import os

import numpy as np
from conftest import README, readme_python_blocks



def _deploy_blocks():
    return readme_python_blocks("<!-- section:deploy:start -->", "<!-- section:deploy:end -->")


def test_readme_deploy_section_runs(capsys):
    blocks = _deploy_blocks()
    # The third block ("Running a compressed LLM") runs on its own in tests/test_readme.py.
    assert len(blocks) == 3
    scope = {}
    for block in blocks[:2]:
        exec(compile(block, str(README), "exec"), scope)
    a, w, x, z = scope["a"], scope["w"], scope["x"], scope["z"]
    np.testing.assert_allclose(np.asarray(z), np.asarray(x, np.float32) @ w, rtol=1e-5,
                               atol=1e-4)
    assert "W:binary A:binary" in capsys.readouterr().out
    assert os.path.getsize("/tmp/net_frozen.npz") > 64 * 32 // 8
    assert a.shape == (8, 1000)

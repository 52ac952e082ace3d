"""The README section "Deploy: packed bits, ..." runs as written and computes what it says."""

import os
import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def _deploy_blocks():
    text = README.read_text()
    part = text[text.index("<!-- section:deploy:start -->"):
                text.index("<!-- section:deploy:end -->")]
    return re.findall(r"```python\n(.*?)```", part, flags=re.S)


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

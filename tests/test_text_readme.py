"""The README section on text data, import and generation runs as written."""

from conftest import README, readme_python_blocks


def test_readme_text_section_runs(capsys):
    blocks = readme_python_blocks("<!-- section:text:start -->", "<!-- section:text:end -->")
    assert len(blocks) == 3
    scope = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), scope)
    out = capsys.readouterr().out
    assert "{'vocab_size': 259, 'max_len': 64}" in out and "(8, 64)" in out
    assert scope["out"]["tokens"].shape == (1, 8)
    assert "'rouge1': 66.66" in out and "'f1': 80.0" in out

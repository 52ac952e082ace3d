"""The main-job numbers in README.md and experiments/kernels.md are the ones rendered from the
committed raw records (experiments/results/main_job.json), not typed by hand."""

import importlib.util
import json
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("main_job", REPO / "experiments" / "main_job.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _block(text, marker):
    return text.split(f"<!-- {marker}:start -->")[1].split(f"<!-- {marker}:end -->")[0].strip()


def test_readme_and_kernels_md_match_the_records():
    mj = _script()
    data = json.loads(mj.RESULTS.read_text())
    readme = (REPO / "README.md").read_text()
    kernels = (REPO / "experiments" / "kernels.md").read_text()
    stale = "stale: run `python experiments/main_job.py --render`"
    assert _block(readme, "main-job-table") == mj.readme_table(data), stale
    assert _block(readme, "export-claim") == mj.export_claim(data), stale
    assert _block(kernels, "export-table") == mj.export_table(data), stale
    assert "offline: " + mj.quickstart_claim(data) in readme, stale


def test_records_are_complete_full_runs():
    mj = _script()
    data = json.loads(mj.RESULTS.read_text())
    for name in mj.VARIANTS:
        runs = [r for r in data["runs"] if r["variant"] == name]
        assert sorted(r["seed"] for r in runs) == list(mj.SEEDS), name
        for r in runs:
            assert "BNN_JAX_MAX_STEPS" not in r["command"]
            assert 0 < r["loop_s"] < r["train"]["wall_s"]
            assert ("export" in r) == mj.VARIANTS[name][3]

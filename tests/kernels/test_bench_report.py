"""The benchmark: targets judged from the records, reports rendered from the committed records,
and a run writes only into the directory it is given."""

import json
import pathlib

import pytest

from bnn_jax.kernels import bench

REPO = pathlib.Path(__file__).resolve().parents[2]
RECORDS = REPO / "experiments" / "results" / "kernels.json"


def _rec(op, shape, packed, f32, bit_macs=None):
    return dict(op=op, shape=list(shape), bit_macs=bit_macs,
                times_s={"cpu_native": packed, "xla": [2 * t for t in packed], "f32": f32},
                cores={"cpu_native": [2.0] * len(packed), "xla": [1.0] * len(packed),
                       "f32": [2.0] * len(packed)})


def test_targets_are_judged_from_the_records():
    gemm = 256 * 4096 * 4096
    native = [gemm / 360e9, gemm / 360e9, gemm / 280e9]  # 0.9, 0.9, 0.7 of 400 Gbit-MAC/s
    records = [
        dict(op="ceiling", shape=[], isa="avx2", gbit_macs={"1": [200.0] * 3, "2": [400.0] * 3}),
        _rec("xnor_matmul", (256, 4096, 4096), native,
             [6 * native[0], 6 * native[1], 4 * native[2]], gemm),
        _rec("xnor_matmul", (1, 4096, 4096), [1.0, 1.0], [29.0, 31.0]),
        _rec("w158a32_gemv", (1, 4096, 4096), [1.0, 2.0, 1.0], [0.5, 1.0, 2.0]),
    ]
    lines = bench.targets(records)
    assert lines[0].endswith("M=256 **met** (median 0.90; 2 of 3 rounds >= 0.8)")
    assert lines[1].endswith("M=64 >= 5x f32: not measured in this run")
    assert lines[2].endswith("M=256 >= 5x f32: **met** (median 6.00; 2 of 3 rounds >= 5)")
    assert lines[3].endswith("M=1 >= 30x f32: **met** (median 30.00; 1 of 2 rounds >= 30)")
    assert lines[5].endswith("4096x4096 faster than f32: **NOT met** (median 0.50; "
                             "1 of 3 rounds >= 1)")
    assert "not measured in this run" in lines[-1] and "larq compute engine" in lines[-1]


def test_write_block_replaces_only_the_block(tmp_path):
    path = tmp_path / "kernels.md"
    path.write_text(f"# Title\n\n{bench.MARK_START}\nold numbers\n{bench.MARK_END}\n\nafter\n")
    bench.write_block(path, "new numbers")
    assert path.read_text() == f"# Title\n\n{bench.MARK_START}\nnew numbers\n{bench.MARK_END}" \
                               "\n\nafter\n"
    start, end = bench.MARKS["kernels-claim"]
    path.write_text(f"it is {start}slow{end}.\n")
    bench.write_block(path, "fast", "kernels-claim", inline=True)
    assert path.read_text() == f"it is {start}fast{end}.\n"
    with pytest.raises(ValueError, match="no <!-- bench:start -->"):
        bench.write_block(path, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kernels.md"]


def test_committed_reports_are_rendered_from_the_committed_records():
    data = json.loads(RECORDS.read_text())
    assert data["meta"]["format"] == bench.FORMAT and not data["meta"]["quick"]
    stale = "stale: rerun `python -m bnn_jax.kernels.bench --render ...` (experiments/kernels.md)"
    kernels = (REPO / "experiments" / "kernels.md").read_text()
    block = kernels.split(bench.MARK_START)[1].split(bench.MARK_END)[0].strip()
    assert block == bench.markdown(data), stale
    start, end = bench.MARKS["kernels-claim"]
    claim = (REPO / "README.md").read_text().split(start)[1].split(end)[0]
    assert claim == bench.readme_claim(data), stale
    # every workload of a full run is in the records, each with all its rounds
    measured = [r for r in data["records"] if r["op"] != "ceiling"]
    assert len(measured) == len(bench.workloads(quick=False))
    for r in data["records"]:
        for values in (r.get("times_s") or r["gbit_macs"]).values():
            assert len(values) == data["meta"]["rounds"]


def test_a_run_writes_only_into_out(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "workloads", lambda quick: [(bench.wl_matmul, (2, 64, 40))])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    before = sorted(p.name for p in (REPO / "kernels").iterdir())
    bench.main(["--quick", "--rounds", "1"])  # no --out: prints only
    assert list((tmp_path / "cwd").iterdir()) == []
    bench.main(["--quick", "--rounds", "2", "--out", str(tmp_path / "out")])
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["kernels.json"]
    assert list((tmp_path / "cwd").iterdir()) == []
    assert sorted(p.name for p in (REPO / "kernels").iterdir()) == before
    data = json.loads((tmp_path / "out" / "kernels.json").read_text())
    (rec,) = [r for r in data["records"] if r["op"] == "xnor_matmul"]
    assert set(rec["times_s"]) >= {"xla", "f32"} and all(len(v) == 2
                                                         for v in rec["times_s"].values())
    assert data["meta"]["machine"]["usable_cpus"] >= 1 and data["meta"]["load_1min"]
    with pytest.raises(SystemExit):
        bench.main(["--md", "x.md"])  # rendering options need --render

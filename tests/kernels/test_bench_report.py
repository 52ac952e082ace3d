"""The benchmark's report: targets judged from the records, the results block replaced in place."""

from bnn_jax.kernels import bench


def _rec(op, shape, packed_s, f32_s):
    return bench._record(op, shape, "binary", packed_s, f32_s, 2 * f32_s)


def test_targets_are_judged_from_the_f32_ratios():
    records = [_rec("xnor_matmul", (64, 4096, 4096), 1.0, 6.0),     # 6x  >= 5x
               _rec("xnor_matmul", (256, 4096, 4096), 1.0, 4.0),    # 4x  <  5x
               _rec("xnor_matmul", (1, 4096, 4096), 1.0, 12.0),     # 12x >= 12x
               _rec("xnor_matmul", (64, 1024, 1024), 1.0, 0.5)]     # not a target shape
    lines = bench.targets(records)
    assert lines[0] == ("- matmul >= 5x f32 at M=64-256, K=N=4096: **NOT met** "
                        "(measured 6.0x, 4.0x)")
    assert lines[1] == "- matmul >= 12x f32 at M=1, K=N=4096: **met** (measured 12.0x)"
    assert lines[2] == "- conv 3x3 28x28x256->256 batch 1 >= 2x f32: not measured in this run"


def test_write_markdown_replaces_only_the_results_block(tmp_path):
    path = tmp_path / "kernels.md"
    path.write_text(f"# Title\n\nintro\n\n{bench.MARK_START}\nold numbers\n{bench.MARK_END}\n"
                    "\nnotes after\n")
    bench.write_markdown(path, "new numbers")
    assert path.read_text() == (f"# Title\n\nintro\n\n{bench.MARK_START}\nnew numbers\n"
                                f"{bench.MARK_END}\n\nnotes after\n")
    fresh = tmp_path / "fresh.md"
    bench.write_markdown(fresh, "first")
    assert fresh.read_text().endswith(f"{bench.MARK_START}\nfirst\n{bench.MARK_END}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.md", "kernels.md"]

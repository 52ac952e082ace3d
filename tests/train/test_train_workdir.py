"""A run's workdir is never lost by a mistake: a resume with another config, damaged checkpoints,
a second run in the same directory, a finished run started again, a start that fails late."""

import json
import os
import re
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from test_train_loop import saved_state, tiny_config

from bnn_jax.sweep import set_dotted
from bnn_jax.train import checkpoint, run, workdir as workdir_lib
from bnn_jax.train.loop import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[2]


def snapshot(wd):
    """Every file of a workdir (path -> bytes), lock files aside."""
    return {str(p.relative_to(wd)): p.read_bytes() for p in sorted(pathlib.Path(wd).rglob("*"))
            if p.is_file() and not p.name.startswith(".lock")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-step run (checkpoints 2 and 4)."""
    wd = tmp_path_factory.mktemp("finished")
    run(tiny_config(steps=4), str(wd))
    return wd


@pytest.fixture
def copy(finished, tmp_path):
    wd = tmp_path / "run"
    shutil.copytree(finished, wd)
    return wd


# ------------------------------------------------------------------- 1. changed config --
@pytest.mark.parametrize("field,value,diff", [
    ("model.hidden", (16, 16), "model.hidden: [32, 32] -> [16, 16]"),
    ("optimizer.name", "momentum", 'optimizer.name: "adam" -> "momentum"'),
    ("seed", 3, "seed: 0 -> 3"),
])
def test_a_resume_with_another_config_is_refused_and_changes_nothing(copy, field, value, diff):
    before = snapshot(copy)
    c = tiny_config(steps=4)
    set_dotted(c, field, value)
    with pytest.raises(workdir_lib.WorkdirError, match="holds a run with a different config") as e:
        run(c, str(copy))
    assert diff in str(e.value) and "--config.allow_config_change=True" in str(e.value)
    assert f"--config.init_from={copy}" in str(e.value)
    assert snapshot(copy) == before  # every checkpoint, metric line and output as it was


def test_an_allowed_change_of_shapes_is_not_corruption(copy):
    before = snapshot(copy)
    c = tiny_config(steps=6)
    c.model.hidden, c.allow_config_change = (16, 16), True
    with pytest.raises(ConfigError, match=r"checkpoint 4 .* another model or optimizer: "
                                          r"params/.*params/layers/0/kernel has shape \(32, 32\), "
                                          r"this run's is \(16, 16\)"):
        run(c, str(copy))
    assert not [n for n in os.listdir(copy / "checkpoints") if "corrupt" in n]
    assert {k: v for k, v in snapshot(copy).items() if k != "config.json"} == {
        k: v for k, v in before.items() if k != "config.json"}


def test_an_allowed_longer_run_continues_and_keeps_the_earlier_outputs(copy):
    first = json.loads((copy / "result.json").read_text())
    c = tiny_config(steps=6)
    c.allow_config_change = True
    result = run(c, str(copy))
    assert result["step"] == 6 and sorted(os.listdir(copy / "checkpoints")) == ["2", "4", "6"]
    assert json.loads((copy / "history" / "step4" / "result.json").read_text()) == first
    assert json.loads((copy / "history" / "step4" / "config.json").read_text())[
        "total_steps"] == 4
    assert json.loads((copy / "config.json").read_text())["total_steps"] == 6


# ---------------------------------------------------------------------- 2. integrity --
def _flip_bytes(step_dir, n=16):
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
    f = max(files, key=lambda p: p.stat().st_size)  # the file holding the largest arrays
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n] = bytes(b ^ 0xFF for b in data[mid:mid + n])
    f.write_bytes(bytes(data))


def _unfinish(wd):
    # As if the run had died before writing its results (so that it resumes instead).
    for name in ("result.json", "summary.md"):
        (wd / name).unlink()


def test_flipped_bytes_are_detected_and_the_previous_checkpoint_resumes(copy, finished, capsys):
    _flip_bytes(copy / "checkpoints" / "4")
    _unfinish(copy)
    capsys.readouterr()
    run(tiny_config(steps=4), str(copy))
    out = capsys.readouterr().out
    # Flipped bytes that land in a compressed chunk fail the read itself; elsewhere they reach
    # the checksums. Either way the checkpoint must be found damaged and set aside.
    assert re.search(r"checkpoint 4 (is damaged: the data of .* does not match the checksums|"
                     r"cannot be read)", out), out
    assert f"moved aside from {copy}/checkpoints/4 to {copy}/checkpoints/4.corrupt" in out, out
    assert "Resuming from checkpoint at step 2" in out, out
    for a, b in zip(*(jax_leaves(saved_state(w, 4)) for w in (copy, finished))):
        np.testing.assert_array_equal(a, b)  # steps 3-4 recomputed exactly


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_a_record_whose_data_position_disagrees_is_damaged(copy, capsys):
    record = copy / "checkpoints" / "4" / "record" / "metadata"
    meta = json.loads(record.read_text())
    record.write_text(json.dumps({**meta, "data_position": 2}))
    _unfinish(copy)
    capsys.readouterr()
    run(tiny_config(steps=4), str(copy))
    out = capsys.readouterr().out
    assert "checkpoint 4 is inconsistent: its record says step 4 and data position 2" in out
    assert (copy / "checkpoints" / "4.corrupt").is_dir()


def test_when_every_checkpoint_is_damaged_the_run_stops_instead_of_starting_over(copy):
    for step in ("2", "4"):
        _flip_bytes(copy / "checkpoints" / step)
    _unfinish(copy)
    lines = (copy / "metrics.jsonl").read_text()
    for _ in range(2):  # and again: the set-aside checkpoints still count
        with pytest.raises(checkpoint.NoGoodCheckpoint, match="no good checkpoint left in .*"
                                                              "stopping rather than starting"):
            run(tiny_config(steps=4), str(copy))
    assert sorted(os.listdir(copy / "checkpoints")) == ["2.corrupt", "4.corrupt"]
    assert (copy / "metrics.jsonl").read_text() == lines


def test_non_finite_and_missing_metadata_checkpoints_are_damaged(tmp_path, capsys):
    import jax.numpy as jnp

    ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
    state = {"params": {"w": jnp.array([1.0, jnp.nan])}, "step": jnp.int32(1)}
    ckpt.save(1, state, {"data_position": 1})
    ckpt.save(2, {**state, "step": jnp.int32(2)}, {"data_position": 2})
    ckpt.close()
    (tmp_path / "checkpoints" / "2" / "state" / "_METADATA").unlink()
    ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
    with pytest.raises(checkpoint.NoGoodCheckpoint):
        ckpt.restore_latest(None)
    ckpt.close()
    out = capsys.readouterr().out
    assert "checkpoint 2 cannot be read: its array index state/_METADATA is missing" in out
    assert "checkpoint 1 is damaged: non-finite values in params/w" in out


def test_the_checksum_sees_any_one_word_changed():
    import jax.numpy as jnp

    x = np.arange(64, dtype=np.float32).reshape(8, 8)
    base, _ = checkpoint.digest({"x": jnp.asarray(x)})
    for i in range(x.size):
        y = x.copy().reshape(-1)
        y.view(np.uint32)[i] ^= 1 << (i % 32)  # one bit of one word
        assert checkpoint.digest({"x": jnp.asarray(y.reshape(8, 8))})[0] != base
    swapped = x.copy()
    swapped[[0, 1]] = swapped[[1, 0]]  # same words, other places
    assert checkpoint.digest({"x": jnp.asarray(swapped)})[0] != base


# ----------------------------------------------------------------- 3. one run per workdir --
HOLDER = textwrap.dedent("""
    import sys, time
    from bnn_jax.train.workdir import RunLock
    lock = RunLock(sys.argv[1])
    lock.acquire()
    print("LOCKED", flush=True)
    time.sleep(120)
""")


def test_a_second_run_in_a_busy_workdir_is_refused_naming_the_holder(copy, tmp_path):
    before = snapshot(copy)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(copy)], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        c = tiny_config(steps=6)
        c.allow_config_change = True
        with pytest.raises(workdir_lib.WorkdirError,
                           match=rf"is in use by another run \(process {holder.pid} on host"):
            run(c, str(copy))
        assert snapshot(copy) == before
    finally:
        holder.kill()
        holder.wait()
    # The holder died without cleaning up: its lock is free, and the next run takes it over.
    assert json.loads((copy / ".lock").read_text())["pid"] == holder.pid
    c = tiny_config(steps=6)
    c.allow_config_change = True
    assert run(c, str(copy))["step"] == 6
    assert json.loads((copy / ".lock").read_text())["pid"] == os.getpid()


def test_a_filesystem_without_locks_warns_and_runs_unguarded(tmp_path, monkeypatch, capsys):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    lock = workdir_lib.RunLock(str(tmp_path))
    lock.acquire()
    assert "the filesystem cannot lock files (No locks available)" in capsys.readouterr().out
    lock.release()


# ------------------------------------------------------------------- 4. finished runs --
def test_a_finished_run_started_again_keeps_its_results(copy):
    before = snapshot(copy)
    result = run(tiny_config(steps=4), str(copy))
    assert result == json.loads(before["result.json"])
    assert snapshot(copy) == before


def test_a_run_resumed_at_its_end_writes_complete_results_once(copy):
    first = json.loads((copy / "result.json").read_text())
    _unfinish(copy)  # died after its last checkpoint, before the results
    result = run(tiny_config(steps=4), str(copy))
    lines = [json.loads(x) for x in (copy / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["split"] == "test"] == [4]  # no second final line
    last_train = [x for x in lines if x["split"] == "train"][-1]
    assert result["train_loss"] == last_train["loss"] == first["train_loss"]
    assert result["train_accuracy"] == first["train_accuracy"]
    assert result["test_loss"] == pytest.approx(first["test_loss"], rel=1e-6)
    # The seconds of the session that trained count, not only this one's evaluation.
    record = json.loads((copy / "checkpoints" / "4" / "record" / "metadata").read_text())
    assert result["seconds"] >= record["seconds"] > 0
    assert json.loads((copy / "result.json").read_text()) == result


def test_a_total_steps_below_the_checkpoint_is_refused(copy):
    before = snapshot(copy)
    c = tiny_config(steps=3)
    c.allow_config_change = True
    with pytest.raises(workdir_lib.WorkdirError, match=r"has a checkpoint at step 4, past "
                                                       r"total_steps=3"):
        run(c, str(copy))
    assert snapshot(copy) == before


# ---------------------------------------------------------- 5. a start that fails late --
@pytest.mark.parametrize("field,value,message", [
    ("mesh.num_devices", 999, "num_devices"),
    ("data.batch_size", 3, "must be divisible by the 2 devices"),
])
def test_a_start_that_fails_after_validation_leaves_the_workdir_as_it_was(copy, tmp_path, field,
                                                                          value, message):
    _unfinish(copy)  # a run to resume (a finished one is not started at all)
    before = snapshot(copy)
    for wd in (copy, tmp_path / "new"):
        c = tiny_config(steps=6)
        c.allow_config_change = True
        c.mesh.num_devices = 2
        set_dotted(c, field, value)
        with pytest.raises(ConfigError, match=message):
            run(c, str(wd))
    assert snapshot(copy) == before  # config.json included
    assert not (tmp_path / "new").exists()  # a directory it created is gone again


# ------------------------------------------------------------------ 6. values, not names --
@pytest.mark.parametrize("field,value,message", [
    ("optimizer.learning_rate", -1.0, r"config.optimizer.learning_rate must be a finite number "
                                      r">= 0, got -1.0"),
    ("optimizer.learning_rate", float("nan"), r"learning_rate must be a finite number .*got nan"),
    ("optimizer.b1", 1.5, r"config.optimizer.b1 must be a finite number >= 0 and < 1"),
    ("optimizer.groups", [("stem", dict(weight_decay=-0.1))],
     r"optimizer group 'stem'.weight_decay must be a finite number >= 0"),
    ("model.kernel_quantizer", "weight_clip", r"config.model.kernel_quantizer='weight_clip' is a "
                                              r"constraint, but this field takes a quantizer"),
    ("model.kernel_constraint", "ste_sign", r"config.model.kernel_constraint='ste_sign' is a "
                                            r"quantizer, but this field takes a constraint; "
                                            r"valid: \['weight_clip'\]"),
    ("model.hidden", (32, 0), r"mlp: hidden must be one or more positive integer widths"),
    ("loss.label_smoothing", 1.5, r"label_smoothing must be a finite number >= 0 and < 1"),
])
def test_bad_values_are_rejected_before_anything_is_compiled_or_written(
        tmp_path, monkeypatch, field, value, message):
    import jax

    def no_compiling(*a, **k):
        raise AssertionError("compiled before rejecting the config")

    monkeypatch.setattr(jax, "jit", no_compiling)
    c = tiny_config()
    set_dotted(c, field, value)
    with pytest.raises(ConfigError, match=message):
        run(c, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


def _digits_bnn(arg="quick"):
    from test_train_loop import load_config

    c = load_config("digits_bnn", arg)
    c.tensorboard, c.mesh.num_devices = False, 1
    return c


@pytest.mark.parametrize("field,value,message", [
    ("width", 0, r"config.model: digits_cnn: width must be an integer >= 1, got 0"),
    ("depth", -1, r"digits_cnn: depth must be an integer >= 1, got -1"),
])
def test_the_model_checks_its_own_field_values(tmp_path, field, value, message):
    c = _digits_bnn()
    c.model[field] = value
    with pytest.raises(ConfigError, match=message):
        run(c, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


# ------------------------------------------------------------ 7. the command line --
def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "bnn_jax.main", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("args,message", [
    (["--config", "configs/digits_bnn.py:quick,steps=abc"],
     "error: config argument 'steps=abc': steps takes an integer (default 0), got 'abc'"),
    (["--config", "configs/digits_bnn.py:quick", "--config.total_steps=abc"],
     "error: --config.total_steps=abc: total_steps takes an integer (now 60)"),
    (["--config", "configs/digits_bnn.py:quick", "--config.optimizer.learning_rate=-1"],
     "error: config.optimizer.learning_rate must be a finite number >= 0, got -1.0"),
])
def test_cli_mistakes_end_with_one_error_line(tmp_path, args, message):
    proc = _cli(*args, "--workdir", str(tmp_path / "wd"), cwd=ROOT)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == message and "Traceback" not in proc.stderr
    assert not (tmp_path / "wd").exists()


def test_cli_workdir_that_is_a_file_or_not_writable(tmp_path, monkeypatch):
    f = tmp_path / "afile"
    f.write_text("mine")
    proc = _cli("--config", "configs/digits_mlp.py:quick", "--workdir", str(f), cwd=ROOT)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: --workdir {f} is a file, not a directory; give a directory (it is created if "
        "missing)")
    assert f.read_text() == "mine"
    # Permission bits do not stop root (the test user here); a read-only mount reads the same.
    monkeypatch.setattr(workdir_lib.os, "access", lambda path, mode: False)
    with pytest.raises(ConfigError, match=r"--workdir .*/ro cannot be created \(.* is not "
                                          r"writable\); fix its permissions"):
        run(tiny_config(), str(tmp_path / "ro"))


CLI_CONFIG = textwrap.dedent("""
    import sys
    sys.path.insert(0, {test_dir!r})
    from test_train_loop import tiny_config

    def get_config(arg=None):
        return tiny_config(steps=4)
""")


def test_cli_with_no_good_checkpoint_left_says_where_they_went(copy, tmp_path):
    config = tmp_path / "tiny.py"
    config.write_text(CLI_CONFIG.format(test_dir=os.path.dirname(__file__)))
    for step in ("2", "4"):
        _flip_bytes(copy / "checkpoints" / step)
    _unfinish(copy)
    proc = _cli("--config", str(config), "--workdir", str(copy))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: no good checkpoint left in {copy}/checkpoints (damaged, kept for inspection: "
        "2.corrupt, 4.corrupt)")
    assert f"moved aside from {copy}/checkpoints/4 to {copy}/checkpoints/4.corrupt" in proc.stdout


def test_a_partly_built_tfds_dataset_is_a_clear_error(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from bnn_jax.data import tfds_pipeline

    (tmp_path / "mnist" / "3.0.1").mkdir(parents=True)  # what an interrupted `tfds build` leaves
    with pytest.raises(ValueError, match=r"dataset 'mnist' under data_dir=.* is incomplete .*"
                                         r"Rebuild it with `tfds build mnist"):
        tfds_pipeline.TfdsDataset("mnist", global_batch_size=8, eval_batch_size=8,
                                  data_dir=str(tmp_path))


def _garbage(step_dir):
    for path in (step_dir / "state").glob("ocdbt.process_*/d/*"):  # the array data files
        path.write_bytes(b"\x00garbage")


@pytest.mark.slow  # two trainings from the command line; the strays depend on timing
def test_cli_resume_past_unreadable_checkpoints_prints_no_stray_tracebacks(tmp_path):
    wd = tmp_path / "run"
    args = ["--config", "configs/digits_mlp.py:quick", "--workdir", str(wd),
            "--config.total_steps=6", "--config.checkpoint_every=2", "--config.tensorboard=False"]
    assert _cli(*args, cwd=ROOT).returncode == 0
    for step in ("4", "6"):
        _garbage(wd / "checkpoints" / step)
    _unfinish(wd)
    proc = _cli(*args, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Resuming from checkpoint at step 2" in proc.stdout
    assert "checkpoint 6 cannot be read: OUT_OF_RANGE" in proc.stdout  # TensorStore's reason
    assert "TensorStore(" not in proc.stdout  # ... without its spec
    for stray in ("Traceback", "Exception ignored", "Event loop is closed"):
        assert stray not in proc.stderr


MULTI_CHILD = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, {test_dir!r})
    from test_train_multiprocess import small_config
    from bnn_jax.train import run
    from bnn_jax.train.workdir import WorkdirError

    c = small_config()
    c.distributed = dict(enabled=True, coordinator_address={address!r}, num_processes=2,
                         process_id=int(sys.argv[1]))
    try:
        run(c, {workdir!r})
    except WorkdirError as e:
        print("REFUSED", e, flush=True)
""")


@pytest.mark.slow  # two jax.distributed processes
def test_a_multi_host_run_whose_one_lock_is_taken_stops_on_every_process(tmp_path):
    from test_train_multiprocess import _free_port

    wd = tmp_path / "multi"
    wd.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.replace(
        "RunLock(sys.argv[1])", "RunLock(sys.argv[1], 1)"), str(wd)], stdout=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    script = tmp_path / "child.py"
    script.write_text(MULTI_CHILD.format(test_dir=os.path.dirname(__file__),
                                         address=f"localhost:{_free_port()}", workdir=str(wd)))
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        procs = [subprocess.Popen([sys.executable, str(script), str(i)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
        try:
            outs = [p.communicate(timeout=300)[0] for p in procs]  # no process hangs
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    finally:
        holder.kill()
        holder.wait()
    assert f"REFUSED workdir {wd} is in use by another run (process {holder.pid}" in outs[1]
    assert "REFUSED workdir" in outs[0] and "another process of this run" in outs[0]
    assert sorted(os.listdir(wd)) == [".lock", ".lock.1"]  # nothing else written

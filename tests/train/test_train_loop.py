"""The training loop: the main job at quick size, outputs, resume past a corrupt checkpoint,
NaN stop, and config errors reported before anything is built."""

import importlib.util
import json
import os
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from bnn_jax import models

from bnn_jax.train import checkpoint, config as config_lib, run
from bnn_jax.train.loop import NonFiniteLossError

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load_config(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def tiny_config(steps=6, every=2):
    c = config_lib.defaults()
    c.total_steps, c.log_every, c.checkpoint_every = steps, 1, every
    c.async_checkpoint, c.tensorboard = False, False
    c.mesh.num_devices = 1  # one device is enough here; the sharding tests use eight
    c.data = dict(name="digits", batch_size=32, eval_batch_size=120)
    c.model = dict(name="mlp", hidden=(32, 32), input_quantizer="ste_sign",
                   kernel_quantizer="ste_sign", kernel_constraint="weight_clip")
    c.optimizer = dict(name="adam", learning_rate=1e-2, schedule="constant")
    return c


def saved_state(workdir, step):
    ckpt = checkpoint.Checkpointer(str(workdir), async_save=False, read_only=True)
    try:
        return ckpt.restore(step, None)[0]
    finally:
        ckpt.close()


def assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_main_job_at_quick_size_learns_and_writes_its_outputs(tmp_path):
    c = load_config("digits_bnn", "quick")
    c.tensorboard, c.mesh.num_devices = False, 1
    result = run(c, str(tmp_path))
    assert result["test_top1"] > 0.5  # chance is 0.1
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]
    assert {"learning_rate", "steps_per_sec", "examples_per_sec", "eta_sec"} <= set(train[0])
    summary = (tmp_path / "summary.md").read_text()
    assert "QuantConv" in summary and "Total parameters" in summary and "test_top1" in summary
    assert os.listdir(tmp_path / "checkpoints") == [str(c.total_steps)]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """An uninterrupted 6-step run (checkpoints at 2, 4, 6)."""
    wd = tmp_path_factory.mktemp("straight")
    run(tiny_config(), str(wd))
    return wd


# orbax's reader leaves an asyncio callback behind when a damaged file fails to load.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_corrupt_latest_checkpoint_is_set_aside_and_the_previous_one_resumes(
        straight_run, tmp_path, capsys):
    c = tiny_config(steps=4)
    run(c, str(tmp_path))
    # Damage every data file of the newest checkpoint (4), as a failing disk would.
    damaged = 0
    for path in (tmp_path / "checkpoints" / "4" / "state").rglob("*"):
        if path.is_file() and "metadata" not in path.name.lower():
            path.write_bytes(b"\x00garbage" * 3)
            damaged += 1
    assert damaged
    capsys.readouterr()
    longer = tiny_config()
    longer.allow_config_change = True  # 4 -> 6 steps (a constant learning rate: same run)
    run(longer, str(tmp_path))
    out = capsys.readouterr().out
    assert "checkpoint 4 cannot be read" in out and "Resuming from checkpoint at step 2" in out
    assert f"moved aside from {tmp_path}/checkpoints/4 to {tmp_path}/checkpoints/4.corrupt" in out
    assert (tmp_path / "checkpoints" / "4.corrupt").is_dir()  # kept for inspection, not deleted
    # Resuming from 2 reproduces the uninterrupted run exactly.
    assert_trees_equal(saved_state(tmp_path, 6), saved_state(straight_run, 6))


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    c = tiny_config(steps=8, every=2)
    # The learning rate becomes 1e38 x 1e-2 at step 5 (index 4): parameters overflow there.
    c.optimizer = dict(name="sgd", learning_rate=1e-2, schedule="step", boundaries=(4,),
                       decay_factor=1e38)
    # Only the updated parameters overflow: the message names what was not finite.
    with pytest.raises(NonFiniteLossError, match=r"non-finite parameter norm at step 5 \(loss "
                                                 r"\d[^,]*, gradient norm \d[^,]*, parameter "
                                                 r"norm inf\); training stopped.*checkpoint is "
                                                 r"step 4"):
        run(c, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
    state = saved_state(tmp_path, 4)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


@pytest.mark.parametrize("field,value,message", [
    ("model.name", "resnet99", r"unknown model 'resnet99'; valid models: .*mlp"),
    ("data.name", "digitz", r"unknown dataset 'digitz'; valid datasets: .*digits"),
    ("model.input_quantizer", "ste_sine", r"unknown quantizer 'ste_sine'; valid names: .*ste_sign"),
    ("optimizer.name", "adamm", r"unknown optimizer 'adamm'; valid optimizers: .*adamw"),
    ("learning_rate", 0.1, r"unknown field\(s\) \['learning_rate'\] in the config; valid "
                           r"fields: .*total_steps"),
    ("model.widht", 3, r"unknown field\(s\) \['widht'\] in config.model .*valid fields: .*hidden"),
    ("log_every", 0, r"config.log_every must be a positive integer, got 0"),
    ("checkpoint_every", 0, r"config.checkpoint_every must be a positive integer, got 0"),
    ("eval_every", -1, r"config.eval_every must be a non-negative integer, got -1"),
    ("constraints", [("kernel", "weight_clipp")],
     r"unknown quantizer 'weight_clipp'; valid names: .*weight_clip"),
])
def test_config_errors_are_reported_before_anything_is_built(tmp_path, field, value, message):
    c = tiny_config()
    *parents, leaf = field.split(".")
    node = c
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ValueError, match=message):
        run(c, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()  # failed before creating the workdir or compiling


def test_init_from_starts_a_second_stage_from_the_first_stage_parameters(straight_run, tmp_path):
    c = tiny_config(steps=1, every=1)
    c.init_from = str(straight_run)
    c.optimizer = dict(name="sgd", learning_rate=0.0)  # a step that leaves the params as loaded
    c.model.kernel_constraint = None
    run(c, str(tmp_path))
    assert_trees_equal(saved_state(tmp_path, 1)["params"], saved_state(straight_run, 6)["params"])
    # ... which are not what this run's own initialization would have given.
    own = nnx.to_pure_dict(nnx.split(models.build(
        c.model, num_classes=10, input_shape=(8, 8, 1), rngs=nnx.Rngs(c.seed)), nnx.Param, ...)[1])
    stage1 = saved_state(straight_run, 6)["params"]
    assert own["stem"]["kernel"].shape == stage1["stem"]["kernel"].shape
    assert not np.array_equal(np.asarray(own["stem"]["kernel"]), stage1["stem"]["kernel"])


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_partial_latest_checkpoint_is_skipped(straight_run, tmp_path, capsys):
    import shutil

    wd = tmp_path / "run"
    shutil.copytree(straight_run, wd)
    shutil.rmtree(wd / "checkpoints" / "6" / "state")  # a step directory without its arrays
    (wd / "result.json").unlink()  # ... of a run that died before it finished
    # ... and what a save interrupted before its rename leaves behind.
    shutil.copytree(wd / "checkpoints" / "4", wd / "checkpoints" / "8.orbax-checkpoint-tmp-99")
    capsys.readouterr()
    c = tiny_config()
    c.data.eval_batch_size = 100  # 360 test digits: the last eval batch has 40 padded rows
    result = run(c, str(wd))
    out = capsys.readouterr().out
    assert "checkpoint 6 cannot be read" in out and "Resuming from checkpoint at step 4" in out
    assert not (wd / "checkpoints" / "8.orbax-checkpoint-tmp-99").exists()
    assert (wd / "checkpoints" / "6.corrupt").is_dir()  # moved aside, not deleted
    assert_trees_equal(saved_state(wd, 6), saved_state(straight_run, 6))
    # The same final state evaluated in unpadded batches of 120: padded rows do not count.
    straight = json.loads((straight_run / "result.json").read_text())
    for k in ("test_loss", "test_top1", "test_top5"):
        np.testing.assert_allclose(result[k], straight[k], rtol=1e-5)


def test_learned_input_quantizer_arrays_are_created_once_and_trained(tmp_path):
    c = tiny_config(steps=4, every=2)
    model = c.model.to_dict()
    model["input_quantizer"] = dict(name="lsq", bits=2, signed=True)
    c.model = model
    run(c, str(tmp_path))
    early, late = saved_state(tmp_path, 2), saved_state(tmp_path, 4)
    steps_early = {k: v for k, v in _flat(early["params"]).items() if k.endswith("input_step")}
    steps_late = {k: v for k, v in _flat(late["params"]).items() if k.endswith("input_step")}
    assert steps_early and steps_early.keys() == steps_late.keys()
    # The optimizer owns them: they move between checkpoints instead of being re-initialized.
    assert any(not np.array_equal(steps_early[k], steps_late[k]) for k in steps_early)


def _flat(tree):
    return {"/".join(str(getattr(p, "key", p)) for p in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_bop_group_trains_the_binary_kernels_without_latent_weights(tmp_path):
    c = tiny_config(steps=2, every=1)
    c.optimizer = dict(name="adam", learning_rate=1e-2,
                       groups=[(r"layers/\d+/kernel$", dict(name="bop", threshold=0.0,
                                                          gamma=1.0))])
    run(c, str(tmp_path))
    one, two = (_flat(saved_state(tmp_path, s)["params"]) for s in (1, 2))
    binary = [k for k in one if k.startswith("layers/") and k.endswith("/kernel")]
    assert binary
    for p in (one, two):
        assert all(set(np.unique(p[k])) == {-1.0, 1.0} for k in binary)
        assert len(np.unique(p["stem/kernel"])) > 2  # the float stem keeps Adam
    # threshold 0, gamma 1: a weight flips wherever w * g > 0, so some of them do.
    assert any((one[k] != two[k]).any() for k in binary)

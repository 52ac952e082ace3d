"""``python -m bnn_jax.export --workdir``: freezes the newest checkpoint of a (small) run."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import data as data_lib
from bnn_jax import export, models
from bnn_jax.export.__main__ import main
from bnn_jax.nn import initialize, quant_params
from bnn_jax.train import checkpoint as ckpt_lib
from bnn_jax.train.config import defaults


def _config(scheduled=False, act="ste_sign"):
    c = defaults()
    c.data = dict(name="digits", batch_size=16, eval_batch_size=24)
    c.model = dict(name="digits_cnn", width=32, depth=1, pool_after=(), input_quantizer=act,
                   kernel_quantizer="ste_tern" if scheduled else "magnitude_aware_sign")
    if scheduled:
        # ste_tern's threshold rises 0.05 -> 1.05 over 10 steps: 0.75 at the checkpoint (7).
        c.total_steps = 10
        c.schedules = dict(input={}, kernel=dict(threshold_value=dict(start=0.05, end=1.05)))
    return c


def _accuracy(model, ds, values=None):
    """Top-1 over the test split (padding masked), computed here from the fake-quant model."""
    right = seen = 0
    for batch in ds.eval_batches():
        with quant_params(**(values or {})):
            pred = np.asarray(model(jnp.asarray(batch["image"]))).argmax(-1)
        m = np.asarray(batch["mask"], bool)
        right += int(((pred == np.asarray(batch["label"])) & m).sum())
        seen += int(m.sum())
    return right / seen, seen


def _write_run(workdir, step, scheduled=False, act="ste_sign"):
    """A workdir as the training loop leaves it: config.json and an orbax checkpoint."""
    config = _config(scheduled, act)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort(indent=2))
    ds = data_lib.build(config.data, seed=config.seed)
    model = models.build(config.model, num_classes=ds.num_classes, input_shape=ds.image_shape,
                         rngs=nnx.Rngs(3))
    initialize(model, jnp.asarray(next(iter(ds.train_batches(0)))["image"]))  # as the loop
    rng = np.random.default_rng(0)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    params = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype),
                          nnx.to_pure_dict(params))
    state = {"params": params, "rest": nnx.to_pure_dict(rest), "step": jnp.int32(step),
             "opt_state": {}, "rng": jnp.zeros((2,), jnp.uint32)}
    ckpt = ckpt_lib.Checkpointer(workdir, async_save=False)
    ckpt.save(step, state, {"data": 0})
    ckpt.close()
    return config, ds, params, nnx.to_pure_dict(rest)


def test_cli_freezes_latest_checkpoint(tmp_path, capsys, caplog):
    workdir = str(tmp_path)
    config, ds, params, rest = _write_run(workdir, 7)
    assert main(["--workdir", workdir]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "checkpoint step 7" in out and "convs/0" in out and "W:binary A:binary" in out
    assert "bytes before" in out and "same argmax 100.0%" in out
    path = os.path.join(workdir, "frozen.npz")
    assert f"wrote {path}: {os.path.getsize(path)} bytes" in out
    # The file holds the checkpoint's model, frozen: compare with the fake-quant model.
    fake = models.build(config.model, num_classes=ds.num_classes, input_shape=ds.image_shape,
                        rngs=nnx.Rngs(0))
    graph, _, _ = nnx.split(fake, nnx.Param, ...)
    fake = nnx.merge(graph, params, rest)
    fake.eval()
    loaded = export.load(path, models.build(config.model, num_classes=ds.num_classes,
                                            input_shape=ds.image_shape, rngs=nnx.Rngs(9)))
    images = jnp.asarray(next(iter(ds.eval_batches()))["image"])
    np.testing.assert_allclose(np.asarray(loaded(images)), np.asarray(fake(images)),
                               rtol=1e-5, atol=1e-5)
    assert json.loads(json.dumps(export.read_meta(path)))["layers"]["convs/0"]["kind"] == \
        "FrozenConv"
    # The accuracy line: the fake-quant number computed here, the file on its own (no model).
    acc, n = _accuracy(fake, ds)
    alone = export.load(path)
    np.testing.assert_array_equal(np.asarray(alone(images)), np.asarray(loaded(images)))
    frozen_acc, _ = _accuracy(alone, ds)
    assert n == 360 and f"test accuracy on {n} images: fake-quant {acc:.4f}, frozen (loaded " \
        f"from frozen.npz) {frozen_acc:.4f}" in out
    # The same numbers in frozen.json; the files get the usual permissions; orbax's notices
    # about the deliberately read-only checkpoint directory are not shown.
    report = json.loads((tmp_path / "frozen.json").read_text())
    assert (report["fake_quant_top1"], report["frozen_top1"], report["test_examples"]) == \
        (acc, frozen_acc, 360)
    assert report["step"] == 7 and report["file_bytes"] == os.path.getsize(path)
    assert report["plane_bytes"] == sum(r["plane_bytes"] for r in report["layers"]) > 0
    umask = os.umask(0)
    os.umask(umask)
    for name in ("frozen.npz", "frozen.json"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask, name
    shown = captured.err + "".join(r.getMessage() for r in caplog.records)
    assert "read only" not in shown and "read_only" not in shown


def test_cli_freezes_at_the_checkpoint_schedule_values(tmp_path, capsys):
    workdir = str(tmp_path)
    config, ds, params, rest = _write_run(workdir, 7, scheduled=True)
    assert main(["--workdir", workdir]) == 0
    out = capsys.readouterr().out
    assert "W:ternary A:binary" in out and "same argmax 100.0%" in out
    fake = models.build(config.model, num_classes=ds.num_classes, input_shape=ds.image_shape,
                        rngs=nnx.Rngs(0))
    fake = nnx.merge(nnx.split(fake, nnx.Param, ...)[0], params, rest)
    fake.eval()
    values = dict(kernel=dict(threshold_value=0.75))
    acc, n = _accuracy(fake, ds, values)
    assert f"fake-quant {acc:.4f}" in out
    images = jnp.asarray(next(iter(ds.eval_batches()))["image"])
    with quant_params(**values):
        want = np.asarray(fake(images))
    got = np.asarray(export.load(os.path.join(workdir, "frozen.npz"))(images))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert not np.allclose(np.asarray(fake(images)), want, atol=1e-2)  # the schedule matters


def test_cli_errors(tmp_path, capsys):
    assert main(["--workdir", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err
    with open(tmp_path / "config.json", "w", encoding="utf-8") as f:
        f.write(_config().to_json_best_effort())
    assert main(["--workdir", str(tmp_path)]) == 2
    assert "no checkpoint found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--workdir", str(tmp_path), "--backend", "cuda"])


def test_cli_restores_learned_input_arrays(tmp_path, capsys):
    """RSign shifts live in the checkpoint, not in a freshly built model: they must be used."""
    workdir = str(tmp_path)
    config, ds, params, rest = _write_run(workdir, 3, act="rsign")
    assert np.abs(params["convs"][0]["input_beta"]).min() > 0  # trained-like, not the init 0
    assert main(["--workdir", workdir]) == 0
    out = capsys.readouterr().out
    assert "W:binary A:binary" in out and "same argmax 100.0%" in out
    fake = models.build(config.model, num_classes=ds.num_classes, input_shape=ds.image_shape,
                        rngs=nnx.Rngs(0))
    images = jnp.asarray(next(iter(ds.eval_batches()))["image"])
    initialize(fake, images)
    fake = nnx.merge(nnx.split(fake, nnx.Param, ...)[0], params, rest)
    fake.eval()
    got = np.asarray(export.load(os.path.join(workdir, "frozen.npz"))(images))
    np.testing.assert_allclose(got, np.asarray(fake(images)), rtol=1e-5, atol=1e-4)
    acc, n = _accuracy(fake, ds)
    assert f"test accuracy on {n} images: fake-quant {acc:.4f}" in out

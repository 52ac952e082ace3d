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
from bnn_jax.train import checkpoint as ckpt_lib
from bnn_jax.train.config import defaults


def _config():
    c = defaults()
    c.data = dict(name="digits", batch_size=16, eval_batch_size=24)
    c.model = dict(name="digits_cnn", width=32, depth=1, pool_after=(), input_quantizer="ste_sign",
                   kernel_quantizer="magnitude_aware_sign")
    return c


def _write_run(workdir, step):
    """A workdir as the training loop leaves it: config.json and an orbax checkpoint."""
    config = _config()
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort(indent=2))
    ds = data_lib.build(config.data, seed=config.seed)
    model = models.build(config.model, num_classes=ds.num_classes, input_shape=ds.image_shape,
                         rngs=nnx.Rngs(3))
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


def test_cli_freezes_latest_checkpoint(tmp_path, capsys):
    workdir = str(tmp_path)
    config, ds, params, rest = _write_run(workdir, 7)
    assert main(["--workdir", workdir]) == 0
    out = capsys.readouterr().out
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


def test_cli_errors(tmp_path, capsys):
    assert main(["--workdir", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err
    with open(tmp_path / "config.json", "w", encoding="utf-8") as f:
        f.write(_config().to_json_best_effort())
    assert main(["--workdir", str(tmp_path)]) == 2
    assert "no checkpoint found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--workdir", str(tmp_path), "--backend", "cuda"])

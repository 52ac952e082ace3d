"""The vision transformers and their recipes train through train.run at a tiny size; CGA's
optimizer wrapper freezes exactly the weights OFQ's rule freezes."""

import importlib.util
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnn_jax.train import config as config_lib
from bnn_jax.train import loop
from bnn_jax.train.optimizers import cga

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"
TINY_VIT = dict(name="vit", patch_size=4, hidden=16, depth=1, num_heads=2, mlp_dim=32)


def _config(name, arg):
    spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _losses(c, workdir, steps=12):
    c.total_steps, c.log_every, c.checkpoint_every, c.tensorboard = steps, 1, steps, False
    c.data = dict(name="digits", batch_size=32, eval_batch_size=120, data_dir="")
    config_lib.validate(c)
    loop.run(c, str(workdir))
    lines = [json.loads(s) for s in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [m["loss"] for m in lines if m["split"] == "train"]


def _falls(losses):
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses


@pytest.mark.slow
@pytest.mark.parametrize("fields", [
    dict(TINY_VIT), dict(TINY_VIT, distilled=True, attention="sab"),
    dict(name="swin", patch_size=2, embed_dim=16, depths=(1, 1), num_heads=(1, 2),
         window_size=2)], ids=["vit", "deit_distilled_sab", "swin"])
def test_models_train_and_loss_falls(fields, tmp_path):
    c = config_lib.defaults()
    c.model = fields
    c.optimizer = dict(name="adam", learning_rate=3e-3, schedule="constant")
    _falls(_losses(c, tmp_path / "run"))


@pytest.mark.slow
def test_ofq_and_bivit_recipes_train_in_stages(tmp_path):
    qat = _config("ofq", "quick")
    qat.model.update(depth=1, hidden=16, mlp_dim=32)
    _falls(_losses(qat, tmp_path / "qat"))
    cga_stage = _config("ofq", "quick,stage=cga")
    cga_stage.model.update(depth=1, hidden=16, mlp_dim=32)
    cga_stage.init_from = str(tmp_path / "qat")
    _losses(cga_stage, tmp_path / "cga", steps=2)
    one = _config("bivit", "quick")
    one.model.update(depth=1, hidden=16, mlp_dim=32)
    _falls(_losses(one, tmp_path / "b1"))
    two = _config("bivit", "quick,stage=2")  # same parameter tree: starts from stage 1
    two.model.update(depth=1, hidden=16, mlp_dim=32)
    two.init_from = str(tmp_path / "b1")
    _losses(two, tmp_path / "b2", steps=2)


def _np_cga_keep(w, bits, br):
    """OFQ's freeze_outside_boundary_weight_idx (cga.py 450-469), as 1 = keeps training."""
    s = 2 * np.abs(w).mean(0, keepdims=True)
    b = np.clip(w / s, -1, np.float32(1 - 1e-6)) * 2 ** (bits - 1) - 0.5
    r = np.round(b)
    keep = np.zeros(w.shape, bool)
    for i in np.arange(r.min(), r.max()):
        keep |= ((b - i) <= 0.5 + br) & ((b - i) >= 0.5 - br)
    return keep


def test_cga_wrapper_freezes_confident_weights_only_at_the_end():
    rng = np.random.default_rng(0)
    params = {"blocks": {"0": {"mlp": {"fc1": {"kernel": jnp.asarray(
        rng.standard_normal((16, 8)), jnp.float32), "bias": jnp.zeros(8)}}}}}
    tx = cga(optax.adamw(0.1, weight_decay=0.05), params, total_steps=4, steps=2, bits=2,
             boundary_range=0.1)
    state = tx.init(params)
    grads = {"blocks": {"0": {"mlp": {"fc1": {"kernel": jnp.ones((16, 8)),
                                              "bias": jnp.ones(8)}}}}}
    for step in range(4):
        updates, state = tx.update(grads, state, params)
        u = np.asarray(updates["blocks"]["0"]["mlp"]["fc1"]["kernel"])
        w = np.asarray(params["blocks"]["0"]["mlp"]["fc1"]["kernel"])
        if step < 2:
            assert np.all(u != 0)
        else:
            keep = _np_cga_keep(w, 2, 0.1)
            assert 0 < keep.sum() < keep.size
            assert np.all(u[~keep] == 0) and np.all(u[keep] != 0)
        assert np.all(np.asarray(updates["blocks"]["0"]["mlp"]["fc1"]["bias"]) != 0)
        params = optax.apply_updates(params, updates)
    with pytest.raises(ValueError, match="matches no kernel"):
        cga(optax.sgd(0.1), params, total_steps=4, steps=2, pattern="nothing")

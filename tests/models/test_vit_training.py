"""The vision transformers and their recipes train through train.run at a tiny size; CGA's
optimizer wrapper freezes exactly the weights OFQ's rule freezes, in OFQ's order with gradient
clipping, and the QK-reparameterized weight needs no CGA variant."""

import importlib.util
import json
import pathlib

import jax
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
    # W4A4: at this width W2A2 moves too little in a few steps for "loss falls" to be reliable;
    # and the recipe warms up over 5 epochs, which a few steps never leave, so shorten it here.
    qat = _config("ofq", "quick,bits=4")
    qat.model.update(depth=1, hidden=16, mlp_dim=32)
    qat.optimizer.update(learning_rate=3e-3, warmup_steps=1)
    _falls(_losses(qat, tmp_path / "qat", steps=24))
    cga_stage = _config("ofq", "quick,bits=4,stage=cga")
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


def _ref_qk_cga_quant(w_qk_rows, bits, br, *, head_average=False):
    """OFQ's StatsQuantizer_specific_4_qkreparam_cga.forward in training (statsq.py 164-193),
    re-stated with jax.lax.stop_gradient for torch's .detach(), on the ``(H·C, C)`` matrix
    the attention passes it (2-D: per-row scale; ``head_average``: its 3-D branch)."""
    sg = jax.lax.stop_gradient
    if head_average:
        s = 2 * jnp.mean(jnp.mean(jnp.abs(w_qk_rows), -1, keepdims=True), 0, keepdims=True)
    else:
        s = 2 * jnp.mean(jnp.abs(w_qk_rows), axis=1, keepdims=True)
    s = sg(s)
    n = float(2 ** (bits - 1))
    b = jnp.clip(w_qk_rows / s, -1.0, 1.0 - 1e-6) * n - 0.5
    keep = jnp.zeros_like(b)
    for i in np.arange(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1):
        keep = keep + (((b - i) <= 0.5 + br) & ((b - i) >= 0.5 - br)).astype(b.dtype)
    freeze = 1.0 - keep
    b = sg(b) * freeze + b * (1 - freeze)
    q = s * ((jnp.round(b) + 0.5) / n)
    return sg(q) - sg(w_qk_rows) + w_qk_rows, freeze


def test_qk_reparam_equals_ofqs_cga_quantizer_in_value_and_gradient():
    """OFQ's in-forward freeze of W_qk during CGA changes neither the quantized W_qk nor its
    gradient, so the QKR attention needs no CGA variant: bnn_jax's qk_reparam (per-row
    scale, identity STE) equals the reference's CGA quantizer in both."""
    from bnn_jax.quant.ofq import qk_reparam

    rng = np.random.default_rng(3)
    heads, c, bits, br = 2, 8, 2, 0.05
    w_q, w_k = (jnp.asarray(rng.standard_normal((c, c)), jnp.float32) for _ in range(2))
    cot = jnp.asarray(rng.standard_normal((heads, c, c)), jnp.float32)

    def ref(wq, wk, **kw):
        # torch layout (out, in): weight = kernel^T; per head W_q,h^T W_k,h as (H·C, C) rows.
        tq, tk = wq.T.reshape(heads, c // heads, c), wk.T.reshape(heads, c // heads, c)
        rows = jnp.einsum("hdc,hde->hce", tq, tk).reshape(heads * c, c)
        q, freeze = _ref_qk_cga_quant(rows, bits, br, **kw)
        return q.reshape(heads, c, c), freeze

    want, freeze = ref(w_q, w_k)
    assert 0 < float(freeze.mean()) < 1  # some entries are "frozen" by the reference
    got = qk_reparam(w_q, w_k, num_heads=heads, bits=bits)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    g_ref = jax.grad(lambda a, b: jnp.sum(ref(a, b)[0] * cot), argnums=(0, 1))(w_q, w_k)
    g_got = jax.grad(lambda a, b: jnp.sum(qk_reparam(a, b, num_heads=heads, bits=bits) * cot),
                     argnums=(0, 1))(w_q, w_k)
    for a, b in zip(g_got, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    # The head-averaged scale (the quantizer's 3-D branch, which the attention never takes)
    # would give other levels.
    assert not np.allclose(np.asarray(got), np.asarray(ref(w_q, w_k, head_average=True)[0]))


def test_cga_clips_the_masked_gradients_as_ofq():
    """cga.py masks the gradients (lines 956-980), then clips their global norm (982-985),
    then steps: with SGD the update is -lr·clip(mask·g)."""
    from bnn_jax.train.optimizers import build

    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.standard_normal((16, 8)), jnp.float32)
    params = {"mlp": {"fc1": {"kernel": w}}}
    g = jnp.asarray(rng.standard_normal((16, 8)), jnp.float32)
    cfg = dict(name="sgd", learning_rate=0.1, schedule="constant", grad_clip_norm=0.5,
               cga=dict(bits=2, boundary_range=0.1, steps=1, pattern="fc1/kernel$"))
    tx, _ = build(cfg, params, total_steps=1)
    updates, _ = tx.update({"mlp": {"fc1": {"kernel": g}}}, tx.init(params), params)
    keep = _np_cga_keep(np.asarray(w), 2, 0.1)
    masked = np.asarray(g) * keep
    want = -0.1 * masked * min(1.0, 0.5 / np.linalg.norm(masked))
    assert np.linalg.norm(masked) > 0.5  # the clip acts
    np.testing.assert_allclose(np.asarray(updates["mlp"]["fc1"]["kernel"]), want, rtol=1e-5,
                               atol=1e-7)

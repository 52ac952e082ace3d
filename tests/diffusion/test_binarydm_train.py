"""BinaryDM through ``train.run``: a tiny binarized U-Net trains (loss falls) and samples; the
two-stage recipe (float teacher, then progressive binarization with LRM) runs end to end."""

import importlib.util
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from bnn_jax import sample as sample_lib
from bnn_jax.models import unet
from bnn_jax.train import distill, run

CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "binarydm.py"


def get_config(arg):
    spec = importlib.util.spec_from_file_location("binarydm_config", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def tiny(c, steps):
    small = dict(model_channels=8, num_head_channels=8, channel_mult=(1, 1))
    c.model.update(small)
    if c.kd.enabled:
        c.kd.teacher_model.update(small)
    c.total_steps, c.checkpoint_every, c.log_every = steps, steps, 1
    c.async_checkpoint, c.tensorboard = False, False
    c.data.batch_size = 16
    return c


def train_losses(workdir):
    lines = [json.loads(x) for x in (pathlib.Path(workdir) / "metrics.jsonl").open()]
    return [x["loss"] for x in lines if x.get("split") == "train" and "loss" in x]


@pytest.mark.slow
def test_tiny_binarized_unet_trains_and_samples(tmp_path):
    # BinaryDM quantizers (A8) and the progressive hook, trained from scratch: the loss falls.
    c = tiny(get_config("quick,stage=binarydm,act_bits=8"), 16)
    c.kd, c.init_from = dict(enabled=False), ""
    c.optimizer.learning_rate = 1e-2
    run(c, str(tmp_path))
    loss = train_losses(tmp_path)
    assert len(loss) == 16 and np.all(np.isfinite(loss))
    assert np.mean(loss[-4:]) < 0.8 * np.mean(loss[:3]), loss
    model, config, _ = sample_lib.restore(str(tmp_path))
    # after 16 iterations every group is binary and attention quantization is on
    assert all(bool(layer.binary[...]) for _, layer in unet.switched_layers(model))
    x = sample_lib.draw(model, config, 3, steps=4, seed=1)
    assert x.shape == (3, 8, 8, 1) and np.all((x >= 0) & (x <= 1))
    np.testing.assert_array_equal(x, sample_lib.draw(model, config, 3, steps=4, seed=1))


def test_lrm_projection_computed_once_from_the_first_batch_and_reused():
    kd = dict(enabled=True, task_weight=1.0,
              terms=[dict(name="lrm", weight=1e-4, student=r"b/\d+/hidden")])
    names = ["b/0/hidden", "b/1/hidden"]
    d = distill.Distiller(kd, names, names)
    rng = np.random.default_rng(0)
    first = {n: jnp.asarray(rng.normal(size=(2, 4, 4, 8)), jnp.float32) for n in names}
    d.setup(first)
    later_t = {n: jnp.asarray(rng.normal(size=(2, 4, 4, 8)), jnp.float32) for n in names}
    later_s = {n: jnp.asarray(rng.normal(size=(2, 4, 4, 8)), jnp.float32) for n in names}
    got = d(jnp.asarray(0.0), None, None, None, later_s, later_t)
    # The bases of the FIRST batch's teacher features (numpy SVD re-stated here), not the later.
    def basis(t):
        a = np.asarray(t, np.float64).reshape(-1, 8)
        return np.linalg.svd(a - a.mean(0), full_matrices=False)[2][:2].T
    want = np.mean([np.mean((np.asarray(later_s[n]).reshape(-1, 8) @ basis(first[n])
                             - np.asarray(later_t[n]).reshape(-1, 8) @ basis(first[n])) ** 2)
                    for n in names])
    # SVD signs are arbitrary, but the squared projection difference does not depend on them.
    np.testing.assert_allclose(float(got), 1e-4 * want, rtol=1e-4)
    other = np.mean([np.mean((np.asarray(later_s[n]).reshape(-1, 8) @ basis(later_t[n])
                              - np.asarray(later_t[n]).reshape(-1, 8) @ basis(later_t[n])) ** 2)
                     for n in names])
    assert abs(1e-4 * other - float(got)) > 1e-3 * float(got)
    assert [k.shape for k in d.projections[0]] == [(8, 2), (8, 2)]


@pytest.mark.slow
def test_two_stage_binarydm_recipe(tmp_path, capsys):
    fp = tiny(get_config("quick,stage=fp"), 6)
    run(fp, str(tmp_path / "fp"))
    c = tiny(get_config(f"quick,stage=binarydm,act_bits=8,teacher={tmp_path / 'fp'}"), 7)
    result = run(c, str(tmp_path / "bdm"))
    out = capsys.readouterr().out
    assert "Derived kernel quantizer arrays" in out
    assert np.isfinite(result["test_loss"])
    model, config, _ = sample_lib.restore(str(tmp_path / "bdm"), ema=False)
    x = sample_lib.draw(model, config, 2, steps=3)
    assert np.all(np.isfinite(x))
    base = tiny(get_config(f"quick,stage=sign,teacher={tmp_path / 'fp'}"), 3)
    assert np.isfinite(run(base, str(tmp_path / "sign"))["test_loss"])


def test_lsun_recipe_says_what_is_missing_and_bad_arguments():
    with pytest.raises(ValueError, match="VQ-f4 first stage"):
        get_config("recipe=lsun_ldm4")
    with pytest.raises(ValueError, match="stage must be one of"):
        get_config("stage=ternary")
    with pytest.raises(ValueError, match="act_bits must be"):
        get_config("act_bits=3")
    c = get_config("stage=binarydm,act_bits=4")
    assert c.model.input_quantizer.to_dict() == dict(name="binarydm_act", bits=4)
    assert c.kd.terms[0]["weight"] == 1e-4 and c.optimizer.name == "adamw"
    assert c.hooks[0]["name"] == "binarydm_progressive"


def test_experiment_table_is_rendered_from_its_results():
    root = pathlib.Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("diffusion_small",
                                                  root / "experiments/diffusion_small.py")
    exp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exp)
    results = json.loads((root / "experiments/results/diffusion_small.json").read_text())
    assert exp.markdown(results) == (root / "experiments/diffusion_small.md").read_text()
    assert "fp" in results["runs"] and set(results["runs"]) <= set(exp.VARIANTS)
    for variant in results["runs"]:
        assert (root / f"experiments/diffusion_small_{variant}.png").exists()

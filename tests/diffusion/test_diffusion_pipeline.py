"""The diffusion pipeline end to end: data range, the recipe's schedule, the U-Net's use of t,
and DDIM with an exact noise predictor."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import data, diffusion, models, tasks
from bnn_jax.train import config as config_lib

ROOT = pathlib.Path(__file__).parents[2]


def recipe(arg):
    spec = importlib.util.spec_from_file_location("binarydm_cfg", ROOT / "configs/binarydm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_digits_unnormalized_are_sklearn_pixels_over_16():
    from sklearn.datasets import load_digits

    ds = data.build(dict(name="digits", batch_size=32, eval_batch_size=120, normalize=False))
    x = np.concatenate([ds.train_images, ds.test_images]).reshape(-1)
    ref = load_digits().images.reshape(-1) / 16.0  # sklearn's pixels are 0..16
    np.testing.assert_allclose(np.sort(x), np.sort(ref), rtol=0, atol=1e-7)
    assert x.min() == 0.0 and x.max() == 1.0


def test_bad_normalize_value_is_refused():
    with pytest.raises(ValueError, match="normalize must be True"):
        data.validate(dict(name="digits", batch_size=32, eval_batch_size=120, normalize="no"))


def test_centering_standardized_pixels_is_refused():
    c = config_lib.defaults()
    c.data = dict(name="digits", batch_size=32, eval_batch_size=120)
    c.task = dict(name="denoising", center=True)
    with pytest.raises(ValueError, match="normalize=False"):
        tasks.build(c.task, spec={}, config=c)


@pytest.mark.parametrize("arg", ["quick", "recipe=cifar10"])
def test_recipes_keep_unit_range_and_end_near_pure_noise(arg):
    c = recipe(arg)
    assert c.data.normalize is False
    t = c.task
    betas = np.linspace(t.get("beta_start", 1e-4), t.get("beta_end", 0.02), t.num_timesteps)
    abar_last = np.prod(1.0 - betas)  # x_T keeps sqrt(abar_T) of the image
    assert abar_last < 1e-3
    np.testing.assert_allclose(diffusion.task_abar(t)[-1], abar_last, rtol=1e-10)


def test_narrow_unet_output_depends_on_t():
    # Abstract build (no initializer compiles), then random weights everywhere: the
    # zero-initialized output convs would hide any t. The rest is the float/binary switches.
    m = nnx.eval_shape(lambda: models.build(
        dict(name="unet", model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
             attention_resolutions=(2,), num_head_channels=16),
        rngs=nnx.Rngs(0), input_shape=(8, 8, 1), num_classes=10))
    graph, params, rest = nnx.split(m, nnx.Param, ...)
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda s: 0.3 * rng.standard_normal(s.shape).astype(np.float32),
                          params)
    rest = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), rest)

    @jax.jit
    def out(params, rest, x, t):
        return nnx.merge(graph, params, rest)(x, t)

    x = rng.standard_normal((2, 8, 8, 1)).astype(np.float32)
    a, b = (out(params, rest, x, np.full((2,), t, np.int32)) for t in (0, 150))
    assert float(jnp.mean(jnp.abs(a - b))) > 1e-2 * float(jnp.mean(jnp.abs(a)))


class ExactDenoiser(nnx.Module):
    """The optimal ε for data made of the points ``X``: ``x̂_0 = E[x_0 | x_t]`` is a softmax
    over ``−‖x_t − √ᾱ_t·X_i‖² / (2(1−ᾱ_t))``, ``ε = (x_t − √ᾱ_t·x̂_0)/√(1−ᾱ_t)``."""

    def __init__(self, points, abar):
        self.points = nnx.Variable(jnp.asarray(points, jnp.float32))
        self.abar = nnx.Variable(jnp.asarray(abar, jnp.float32))

    def __call__(self, x, t):
        a = self.abar[...][t][:, None]
        pts = self.points[...].reshape(self.points[...].shape[0], -1)
        xf = x.reshape(x.shape[0], -1)
        d = jnp.sum((xf[:, None] - jnp.sqrt(a)[:, None] * pts[None]) ** 2, -1) / (2 * (1 - a))
        x0 = jax.nn.softmax(-d, -1) @ pts
        return ((xf - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)).reshape(x.shape)


def test_ddim_with_exact_denoiser_lands_on_data_points():
    rng = np.random.default_rng(0)
    points = np.sign(rng.standard_normal((20, 4, 4, 1)))  # 20 far-apart corners of [-1, 1]^16
    abar = diffusion.task_abar(dict(name="denoising", num_timesteps=200, beta_start=5e-4,
                                    beta_end=0.1))
    x = diffusion.sample(ExactDenoiser(points, abar), (8, 4, 4, 1), jax.random.key(0),
                         abar=abar, steps=50, clip=(-1.0, 1.0))
    d = np.abs(np.asarray(x).reshape(8, 1, -1) - points.reshape(1, 20, -1)).max(-1)
    assert d.min(1).max() < 1e-3


def test_fid_classifier_of_another_pixel_range_is_refused(tmp_path):
    import json

    from bnn_jax import sample

    for name, normalize in (("run", False), ("cls_std", True), ("cls_unit", False)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(
            {"data": {"name": "digits", "normalize": normalize}}))
    sample.check_classifier_range(str(tmp_path / "run"), str(tmp_path / "cls_unit"))
    with pytest.raises(ValueError, match="normalize=False"):
        sample.check_classifier_range(str(tmp_path / "run"), str(tmp_path / "cls_std"))

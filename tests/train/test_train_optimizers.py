"""Optimizer construction: schedules against their formulas, parameter groups, weight-decay
masks, clipping, Bop routing and constraints, checked against numpy arithmetic."""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnn_jax.train import optimizers


def test_warmup_cosine_and_warmup_linear_follow_their_formulas():
    lr, w, total, end = 0.1, 10, 110, 0.01
    cos = optimizers.schedule(dict(learning_rate=lr, schedule="warmup_cosine", warmup_steps=w,
                                   end_factor=end / lr), total)
    lin = optimizers.schedule(dict(learning_rate=lr, schedule="warmup_linear", warmup_steps=w,
                                   end_factor=end / lr), total)
    for s in (0, 3, 10, 37, 60, 109, 110):
        warm = lr * s / w
        frac = (s - w) / (total - w)
        want_cos = warm if s < w else end + (lr - end) * 0.5 * (1 + math.cos(math.pi * frac))
        want_lin = warm if s < w else lr + (end - lr) * frac
        np.testing.assert_allclose(float(cos(s)), want_cos, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(float(lin(s)), want_lin, rtol=1e-5, atol=1e-8)
    step = optimizers.schedule(dict(learning_rate=1.0, schedule="step", boundaries=(0.5, 80),
                                    decay_factor=0.1), 100)
    assert [float(step(s)) for s in (49, 50, 79, 80)] == pytest.approx([1, 0.1, 0.1, 0.01])


def _params():
    return {"conv": {"kernel": jnp.array([[0.5, -0.25], [0.75, 1.0]]),
                     "bias": jnp.array([0.2, -0.2])},
            "bn": {"scale": jnp.array([1.0, 2.0])}}


GRADS = {"conv": {"kernel": jnp.array([[0.1, -0.3], [0.2, 0.4]]),
                  "bias": jnp.array([0.5, -0.1])},
         "bn": {"scale": jnp.array([0.3, 0.3])}}


def test_groups_give_each_parameter_its_own_settings():
    cfg = dict(name="adam", learning_rate=1e-3,
               groups=[(r"^bn/", dict(learning_rate=0.0)),
                       (r"kernel", dict(name="sgd", learning_rate=0.5))])
    params = _params()
    tx, _ = optimizers.build(cfg, params, 10)
    updates, _ = tx.update(GRADS, tx.init(params), params)
    np.testing.assert_allclose(updates["conv"]["kernel"],
                               -0.5 * np.asarray(GRADS["conv"]["kernel"]), rtol=1e-6)
    np.testing.assert_array_equal(updates["bn"]["scale"], [0.0, 0.0])
    g = np.asarray(GRADS["conv"]["bias"])  # Adam's first step: -lr * g / (|g| + eps)
    np.testing.assert_allclose(updates["conv"]["bias"], -1e-3 * g / (np.abs(g) + 1e-8), rtol=1e-5)


def test_adamw_decays_matrices_but_not_vectors_and_clipping_bounds_the_norm():
    params = _params()
    # A learned per-channel quantizer scale in keepdims form (BinaryDM's sigma on a conv).
    params["conv"]["kernel_sigma1"] = jnp.array([0.5, 1.5]).reshape(1, 1, 1, 2)
    zero = {k: {n: jnp.zeros_like(v) for n, v in d.items()} for k, d in params.items()}
    for name in ("adamw", "adam"):  # decoupled decay, and L2 decay added to the gradient
        tx, _ = optimizers.build(dict(name=name, learning_rate=0.1, weight_decay=0.5), params, 10)
        updates, _ = tx.update(zero, tx.init(params), params)
        if name == "adamw":
            np.testing.assert_allclose(updates["conv"]["kernel"],
                                       -0.1 * 0.5 * np.asarray(params["conv"]["kernel"]),
                                       rtol=1e-6)
        else:  # Adam's first step on the decay gradient 0.5 w: -lr * sign(w)
            np.testing.assert_allclose(updates["conv"]["kernel"],
                                       -0.1 * np.sign(params["conv"]["kernel"]), rtol=1e-5)
        np.testing.assert_array_equal(updates["conv"]["bias"], [0.0, 0.0])
        np.testing.assert_array_equal(updates["bn"]["scale"], [0.0, 0.0])
        np.testing.assert_array_equal(updates["conv"]["kernel_sigma1"], np.zeros((1, 1, 1, 2)))

    tx, _ = optimizers.build(dict(name="sgd", learning_rate=1.0, grad_clip_norm=0.1), params, 10)
    updates, _ = tx.update(GRADS, tx.init(params), params)
    flat = np.concatenate([np.ravel(v) for d in GRADS.values() for v in d.values()])
    scale = 0.1 / np.linalg.norm(flat)
    np.testing.assert_allclose(updates["conv"]["kernel"],
                               -scale * np.asarray(GRADS["conv"]["kernel"]), rtol=1e-5)


def test_bop_group_flips_binary_kernels_and_constraints_clip_latent_weights():
    cfg = dict(name="adam", learning_rate=1e-3,
               groups=[(r"kernel", dict(name="bop", threshold=0.15, gamma=1.0))])
    params = optimizers.binarize_bop_params(cfg, _params())
    np.testing.assert_array_equal(params["conv"]["kernel"], [[1, -1], [1, 1]])
    np.testing.assert_array_equal(params["conv"]["bias"], _params()["conv"]["bias"])  # not Bop
    tx, _ = optimizers.build(cfg, params, 10)
    updates, _ = tx.update(GRADS, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    # gamma=1: m = g; flip where w*m > threshold: w*g = [[.1, .3], [.2, .4]].
    np.testing.assert_array_equal(new["conv"]["kernel"], [[1, 1], [-1, -1]])

    clip = optimizers.build_constraints([(r"conv/kernel", dict(name="weight_clip"))])
    out = clip({"conv": {"kernel": jnp.array([1.5, -0.3, -2.0]), "bias": jnp.array([3.0])}})
    np.testing.assert_array_equal(out["conv"]["kernel"], np.float32([1.0, -0.3, -1.0]))
    np.testing.assert_array_equal(out["conv"]["bias"], [3.0])


def test_bad_optimizer_configs_list_the_valid_choices():
    with pytest.raises(ValueError, match=r"unknown optimizer 'adan'; valid optimizers: .*'bop'"):
        optimizers.validate(dict(name="adan"))
    with pytest.raises(ValueError, match=r"unknown schedule 'cosin'; valid schedules"):
        optimizers.validate(dict(name="sgd", schedule="cosin"))
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['lr'\] in optimizer group"):
        optimizers.validate(dict(groups=[("bn", dict(lr=0.1))]))
    with pytest.raises(ValueError, match=r"'ste_sign' is a quantizer, not a constraint"):
        optimizers.build_constraints([("kernel", "ste_sign")])

"""Bop and case_optimizer against larq 0.14's Bop, step by step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnn_jax.train.bop import bop, case_optimizer, path_regex_predicate
from conftest import ORACLE

CASES = [(1e-8, 1e-4), (0.05, 0.5)]


@pytest.mark.parametrize("threshold,gamma", CASES)
def test_bop_matches_larq(threshold, gamma):
    tag = f"bop/threshold={threshold}__gamma={gamma}"
    w = jnp.asarray(ORACLE[f"{tag}/w0"])
    tx = bop(threshold=threshold, gamma=gamma)
    state = tx.init(w)
    step = jax.jit(tx.update)
    for t, g in enumerate(ORACLE[f"{tag}/grads"]):
        before = w
        updates, state = step(jnp.asarray(g), state, w)
        w = optax.apply_updates(w, updates)
        np.testing.assert_array_equal(w, ORACLE[f"{tag}/w"][t])
        np.testing.assert_allclose(state.m, ORACLE[f"{tag}/m"][t], rtol=1e-6, atol=1e-9)
        assert int(jnp.sum(w != before)) == ORACLE[f"{tag}/num_flips"][t]
    assert set(np.unique(np.asarray(w))) <= {-1.0, 1.0}


def test_bop_accepts_schedules():
    w = jnp.asarray(ORACLE["bop/threshold=0.05__gamma=0.5/w0"])
    grads = ORACLE["bop/threshold=0.05__gamma=0.5/grads"]
    # constant schedules must reproduce the constant run exactly
    tx = bop(threshold=optax.constant_schedule(0.05), gamma=optax.constant_schedule(0.5))
    state = tx.init(w)
    for t, g in enumerate(grads):
        u, state = tx.update(jnp.asarray(g), state, w)
        w = optax.apply_updates(w, u)
        np.testing.assert_array_equal(w, ORACLE["bop/threshold=0.05__gamma=0.5/w"][t])
    # a huge threshold from step 0 on freezes every weight
    tx = bop(threshold=lambda c: jnp.where(c >= 0, 1e9, 0.0), gamma=0.5)
    w0 = jnp.asarray(ORACLE["bop/threshold=0.05__gamma=0.5/w0"])
    u, _ = tx.update(jnp.asarray(grads[0]) * 100, tx.init(w0), w0)
    np.testing.assert_array_equal(optax.apply_updates(w0, u), w0)


def test_case_optimizer_routes_by_predicate():
    params = {"conv": {"kernel": jnp.ones((3, 4))}, "bn": {"scale": jnp.ones((4,))}}
    grads = {"conv": {"kernel": -jnp.ones((3, 4))}, "bn": {"scale": jnp.ones((4,))}}
    tx = case_optimizer(path_regex_predicate(r"kernel$"), bop(threshold=0.0, gamma=1.0),
                        optax.sgd(0.1))
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    # Bop: w*m = 1*(-1) < 0 so no flip... with gamma=1 m=g=-1: w*m-t = -1 < 0 -> keep +1
    np.testing.assert_array_equal(new["conv"]["kernel"], jnp.ones((3, 4)))
    np.testing.assert_allclose(new["bn"]["scale"], 0.9 * jnp.ones(4))
    grads["conv"]["kernel"] = jnp.ones((3, 4))  # now w*m = 1 > 0: every weight flips
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(optax.apply_updates(params, updates)["conv"]["kernel"],
                                  -jnp.ones((3, 4)))


def test_bop_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="threshold"):
        bop(threshold=-1.0)
    with pytest.raises(ValueError, match="params"):
        tx = bop()
        tx.update(jnp.ones(2), tx.init(jnp.ones(2)))

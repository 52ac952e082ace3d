"""BiPer against numpy implementations of its reference code (methods.md §3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnn_jax.quant as q
from binarizer_oracles import SHAPES, edges, np_sign, rand, vjp


@pytest.mark.parametrize("omega0", [20.0, 30.0])
def test_biper_weight(omega0):
    for w in [rand(s, i, scale=0.1) for i, s in enumerate(SHAPES)] + [edges(0.0)]:
        y, (dw,), g = vjp(q.get("biper_weight", omega0=omega0), w)
        s = np.sin(omega0 * w.astype(np.float64))
        np.testing.assert_array_equal(y, np_sign(s))  # sin(0) = 0 -> +1
        np.testing.assert_allclose(dw, g * omega0 * np.cos(omega0 * w.astype(np.float64)),
                                   rtol=1e-5, atol=1e-5)
        y1, (dw1,), g1 = vjp(q.get("biper_weight_stage1", omega0=omega0), w)
        np.testing.assert_allclose(y1, s, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dw1, g1 * omega0 * np.cos(omega0 * w), rtol=1e-5,
                                   atol=1e-5)


def test_biper_weight_defaults_to_the_scripts_omega():
    assert q.get("biper_weight").params["omega0"] == 20.0


def test_biper_act_training_normalization_and_gradient():
    for x in [rand((3, 4, 4, 2), 1), rand((2, 5), 2, scale=0.2)]:
        y, (dx,), g = vjp(q.get("biper_act", training=True), x)
        np.testing.assert_array_equal(y, np_sign(x))
        x64, axes = x.astype(np.float64), tuple(range(1, x.ndim))
        n = np.prod(x.shape[1:])
        mu = x64.mean(axes, keepdims=True)
        sd = np.sqrt(((x64 - mu) ** 2).sum(axes, keepdims=True) / (n - 1) + 1e-5)
        a0 = x64 / sd
        u = g * np.maximum(0, 2 - 2 * np.abs(a0))
        # d/dx of x / sqrt(var_unbiased(x) + eps), applied to u
        expect = u / sd - (u * x64).sum(axes, keepdims=True) * (x64 - mu) / ((n - 1) * sd**3)
        np.testing.assert_allclose(dx, expect, rtol=1e-4, atol=1e-6)


def test_biper_act_eval_is_plain_approx_sign():
    x = np.concatenate([rand((9,), 3), edges(0.0, 1.0, -1.0)]).reshape(3, -1)
    y, (dx,), g = vjp(q.get("biper_act", training=False), x)
    np.testing.assert_array_equal(y, np_sign(x))
    np.testing.assert_allclose(dx, g * np.maximum(0, 2 - 2 * np.abs(x.astype(np.float64))),
                               rtol=1e-6, atol=1e-7)


def test_biper_regularizer_value_and_gradient():
    ws = [rand((4, 3), 5, scale=0.1), rand((2, 2, 3), 6, scale=0.1)]
    tau, omega0 = 0.037, 20.0
    val, grads = jax.value_and_grad(
        lambda a, b: q.biper_regularizer([a, b], omega0=omega0, tau=tau), argnums=(0, 1))(*ws)
    expect = sum(tau * np.mean(np.sin(omega0 * w.astype(np.float64)) ** 2) for w in ws)
    np.testing.assert_allclose(val, expect, rtol=1e-5)
    for w, gr in zip(ws, grads):
        np.testing.assert_allclose(gr, tau * omega0 * np.sin(2 * omega0 * w) / w.size,
                                   rtol=1e-4, atol=1e-8)


def test_biper_two_stage_recipe():
    s1, s2 = q.biper_two_stage("cifar10")
    assert (s1["weight"], s2["weight"]) == ("biper_weight_stage1", "biper_weight")
    assert (s1["epochs"], s2["epochs"], s1["tau"], s2["tau"]) == (600, 300, 0.037, 0.0468)
    params = {"w": jnp.asarray(rand((3, 2), 7, scale=0.1)), "alpha": jnp.ones(2)}
    p2 = q.biper_stage2_params(params)
    np.testing.assert_array_equal(p2["w"], params["w"])
    assert p2["w"] is not params["w"]
    # stage 2's first binary weights are the signs of stage 1's effective weights
    np.testing.assert_array_equal(q.get("biper_weight")(p2["w"]),
                                  np_sign(np.asarray(q.get("biper_weight_stage1")(params["w"]))))
    with pytest.raises(ValueError, match="cifar10"):
        q.biper_two_stage("mnist")

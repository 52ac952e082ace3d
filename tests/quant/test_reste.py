"""ReSTE against a numpy implementation of its reference backward (methods.md §2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnn_jax.quant as q
from binarizer_oracles import SHAPES, edges, np_sign, rand, vjp

EDGES = edges(0.0, 0.1, -0.1, 1.5, -1.5, 1.0)


def np_reste_grad(x, o, t=1.5, interval=0.1):
    """DravenALG/ReSTE ``Binary_ReSTE.backward``, written out on float64 magnitudes."""
    a = np.abs(x.astype(np.float64))
    # the reference compares float32 inputs with the float32-rounded thresholds
    inside = np.abs(x) <= np.float32(interval)
    within = np.abs(x) <= np.float32(t)
    power = (1.0 / o) * np.power(np.maximum(a, interval), (1.0 - o) / o)
    secant = interval ** (1.0 / o) / interval
    return np.where(within, np.where(inside, secant, power), 0.0)


@pytest.mark.parametrize("o", [1.0, 1.5, 2.0, 3.0])
def test_reste_forward_and_gradient(o):
    quant = q.get("reste", o=o)
    for x in [rand(s, i, scale=0.8) for i, s in enumerate(SHAPES)] + [EDGES]:
        y, (dx,), g = vjp(quant, x)
        np.testing.assert_array_equal(y, np_sign(x))  # sign(0) = +1
        np.testing.assert_allclose(dx, g * np_reste_grad(x, o), rtol=2e-6, atol=1e-7)


def test_reste_known_values():
    # methods.md: for o = 3 the surrogate is 4.64 inside |x| <= 0.1 and 1.55 just outside.
    x = jnp.asarray(edges(0.1))
    d = np.asarray(jax.grad(lambda v: jnp.sum(q.get("reste", o=3.0)(v)))(x))
    np.testing.assert_allclose(d[[0, 2]], 0.1 ** (1 / 3) / 0.1, rtol=1e-6)
    np.testing.assert_allclose(d[1], (1 / 3) * 0.1 ** (-2 / 3), rtol=1e-5)
    assert d[0] == pytest.approx(4.6416, abs=1e-3) and d[1] == pytest.approx(1.5472, abs=1e-3)
    # o = 1 is a clipped STE at 1.5, not 1
    x = jnp.asarray(edges(1.5, 1.0))
    d = np.asarray(jax.grad(lambda v: jnp.sum(q.get("reste", o=1.0)(v)))(x))
    np.testing.assert_array_equal(d, [1, 0, 1, 1, 1, 1])


def test_reste_traced_o_from_schedule():
    x = rand((4, 3), 5, scale=0.7)

    @jax.jit
    def grad_at(step):
        o = q.schedules.reste_o(step, 100, o_end=3.0)
        return jax.grad(lambda v: jnp.sum(q.get("reste")(v, o=o)))(x)

    for step in (0, 50, 100):
        o = 1 + 2 * (1 - np.cos(np.pi / 2 * step / 100))
        np.testing.assert_allclose(grad_at(step), np_reste_grad(x, o), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("scale_gradient", [True, False])
def test_reste_weight_scale(scale_gradient):
    o = 2.0
    for w in [rand((5, 3), 2, scale=0.6), rand((3, 3, 2, 2), 3, scale=0.6)]:
        y, (dw,), g = vjp(q.get("reste_weight", o=o, scale_gradient=scale_gradient), w)
        s = np.mean(np.abs(w.astype(np.float64)))
        np.testing.assert_allclose(y, s * np_sign(w), rtol=1e-6)
        expect = s * g * np_reste_grad(w, o)
        if scale_gradient:  # d mean|W| / dW = sign(W) / N, as the reference (no detach)
            expect = expect + np.sign(w) * np.sum(g * np_sign(w)) / w.size
        np.testing.assert_allclose(dw, expect, rtol=1e-5, atol=1e-6)


def test_reste_weight_scale_gradient_at_exact_zeros():
    """binarized_modules.py line 41 differentiates torch.mean(torch.abs(w0)); torch's
    d|w|/dw is sign(w), 0 at w = 0, so zero weights get no gradient through the scale."""
    o = 3.0
    w = rand((4, 6), 5, scale=0.6)
    w.reshape(-1)[[0, 7, 13]] = 0.0
    y, (dw,), g = vjp(q.get("reste_weight", o=o), w)
    b = np_sign(w)  # the framework's forward sign (sign(0) = +1, see the reste docstring)
    s = np.mean(np.abs(w.astype(np.float64)))
    expect = s * g * np_reste_grad(w, o) + np.sign(w) * np.sum(g * b) / w.size
    np.testing.assert_allclose(y, s * b, rtol=1e-6)
    np.testing.assert_allclose(dw, expect, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dw.reshape(-1)[[0, 7, 13]], (s * g * np_reste_grad(w, o))
                               .reshape(-1)[[0, 7, 13]], rtol=1e-6)


@pytest.mark.parametrize("bad", [dict(o=0.5), dict(t=-1.0), dict(interval=2.0)])
def test_reste_rejects_bad_parameters(bad):
    with pytest.raises(ValueError):
        q.get("reste", **bad)

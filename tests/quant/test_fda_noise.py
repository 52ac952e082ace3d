"""FDA's noise-adaption layers (BiBench fda.py; methods.md §1.9, §14) against numpy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnn_jax.quant as q
from binarizer_oracles import edges, np_sign, rand, vjp
from bnn_jax.quant import schedules


def np_fda_grad(x, n, omega=0.1):
    total = sum(np.cos((2 * i + 1) * omega * x) for i in range(n + 1))
    return np.where(np.abs(x) > 1, 0.0, 4 * omega / math.pi * total)


def np_noise(rows, fc1, fc2, g):
    """e = relu(R fc1) fc2 + 0.1 sin R and its VJP for the cotangent g (same shape as R)."""
    pre = rows @ fc1
    hid = np.maximum(pre, 0)
    e = hid @ fc2 + 0.1 * np.sin(rows)
    dfc2 = hid.T @ g
    dpre = (g @ fc2.T) * (pre > 0)
    dfc1 = rows.T @ dpre
    drows = dpre @ fc1.T + 0.1 * np.cos(rows) * g
    return e, drows, dfc1, dfc2


def weights(d, hidden, seed):
    r = np.random.default_rng(seed)
    return (r.uniform(-0.5, 0.5, (d, hidden)).astype(np.float32),
            r.uniform(-0.5, 0.5, (hidden, d)).astype(np.float32))


@pytest.mark.parametrize("shape,n,alpha", [((3, 4, 5), 9, 0.1), ((8, 6), 13, 0.03),
                                           ((2, 2, 3, 4), 18, 0.0)])
def test_fda_weight_forward_and_gradients(shape, n, alpha):
    w = rand(shape, 3, scale=0.8)
    w.reshape(-1)[:6] = edges(1.0, -1.0)  # the FDA gradient passes at |w| = 1, not beyond
    out = shape[-1]
    d = int(np.prod(shape[:-1]))
    fc1, fc2 = weights(d, d // 4, 5)
    quant = q.get("fda_weight", n=n, alpha=alpha, reduction=4)
    assert quant.learned == ("fc1", "fc2")
    y, (dw, d1, d2), g = vjp(lambda a, b, c: quant(a, fc1=b, fc2=c), w, fc1, fc2)

    w64, g64 = w.astype(np.float64), g.astype(np.float64)
    scale = np.abs(w64).reshape(-1, out).mean(0)  # per output channel (last axis)
    rows = w64.reshape(-1, out).T
    gs = (g64 * scale).reshape(-1, out).T  # cotangent of the pre-scale value, in rows
    e, drows, dfc1, dfc2 = np_noise(rows, fc1.astype(np.float64), fc2.astype(np.float64),
                                    alpha * gs)
    expect = (np_sign(w) + alpha * e.T.reshape(shape)) * scale
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-6)
    edw = (g64 * scale) * np_fda_grad(w64, n) + drows.T.reshape(shape)
    np.testing.assert_allclose(dw, edw, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(d1, dfc1, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(d2, dfc2, rtol=1e-4, atol=1e-6)


def test_fda_weight_without_scale_and_traced_schedule():
    w = rand((6, 4), 8)
    fc1, fc2 = weights(6, 3, 9)
    quant = q.get("fda_weight", reduction=2, scale=False)
    run = jax.jit(lambda a, al, nn: quant(a, fc1=fc1, fc2=fc2, alpha=al, n=nn))
    for epoch in (0, 7):
        alpha = schedules.fda_noise_weight(epoch, 10)
        got = run(jnp.asarray(w), alpha, schedules.fda_terms(epoch, 10))
        e = np_noise(w.T.astype(np.float64), fc1, fc2, np.zeros((4, 6)))[0]
        a = 0.05 * (1 + math.cos(math.pi * (epoch + 1) / 10))
        np.testing.assert_allclose(got, np_sign(w) + a * e.T, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 3, 8), (5, 12)])
def test_fda_act_forward_and_gradients(shape):
    x = rand(shape, 11)
    x.reshape(-1)[:6] = edges(1.0, -1.0)
    c = shape[-1]
    fc1, fc2 = weights(c, c // 4, 12)
    quant = q.get("fda_act", alpha=0.07, reduction=4)
    y, (dx, d1, d2), g = vjp(lambda a, b, cc: quant(a, fc1=b, fc2=cc), x, fc1, fc2)
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    rows, grows = x64.reshape(-1, c), g64.reshape(-1, c)
    e, drows, dfc1, dfc2 = np_noise(rows, fc1.astype(np.float64), fc2.astype(np.float64),
                                    0.07 * grows)
    np.testing.assert_allclose(y, np_sign(x) + 0.07 * e.reshape(shape), rtol=1e-5, atol=1e-6)
    edx = g64 * np_fda_grad(x64, 9) + drows.reshape(shape)
    np.testing.assert_allclose(dx, edx, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(d1, dfc1, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(d2, dfc2, rtol=1e-4, atol=1e-6)


def test_fda_noise_init():
    w = rand((3, 3, 16, 8), 2)  # d = 144 per output channel
    init = q.get("fda_weight").init(jnp.asarray(w))
    assert init["fc1"].shape == (144, 2) and init["fc2"].shape == (2, 144)
    assert np.abs(init["fc1"]).max() <= 1 / 12 and np.abs(init["fc2"]).max() <= 1 / math.sqrt(2)
    assert np.abs(init["fc1"]).max() > 0.5 / 12  # spread over torch's U(-1/sqrt(d), 1/sqrt(d))
    again = q.get("fda_weight").init(jnp.asarray(w))
    np.testing.assert_array_equal(init["fc1"], again["fc1"])
    other = q.get("fda_weight", seed=1).init(jnp.asarray(w))
    assert not np.array_equal(init["fc1"], other["fc1"])
    # Fewer channels than the reduction (64): a zero-width MLP, only the 0.1·sin term is left.
    x = rand((4, 16), 3)
    act = q.get("fda_act", alpha=0.5)
    init = act.init(jnp.asarray(x))
    assert init["fc1"].shape == (16, 0) and init["fc2"].shape == (0, 16)
    np.testing.assert_allclose(act(jnp.asarray(x), **init), np_sign(x) + 0.05 * np.sin(x),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bad", [dict(reduction=0), dict(alpha=-0.1), dict(n=40),
                                 dict(scale="yes"), dict(seed=-1)])
def test_fda_noise_rejects_bad_parameters(bad):
    name = "fda_act" if "scale" not in bad else "fda_weight"
    with pytest.raises(ValueError):
        q.get(name, **bad)

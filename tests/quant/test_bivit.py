"""BiViT's SAB and learned-scale weights against numpy (methods.md §7)."""

import jax.numpy as jnp
import numpy as np
import pytest

import bnn_jax.quant as q
from binarizer_oracles import np_sign, rand, vjp


def np_softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_sab_forward_and_softmax_gradient():
    for s in [rand((2, 3, 6), 1, scale=2.0), rand((4, 5), 2, scale=3.0)]:
        y, (ds,), g = vjp(q.get("sab_binarize"), s)
        p = np_softmax(s.astype(np.float64))
        np.testing.assert_array_equal(y, (p >= 0.25 * p.max(-1, keepdims=True)).astype(float))
        assert set(np.unique(y)) <= {0.0, 1.0} and (y.max(-1) == 1).all()
        # exact softmax Jacobian: P ⊙ (g − Σ_j g_j P_j)
        expect = p * (g - (g * p).sum(-1, keepdims=True))
        np.testing.assert_allclose(ds, expect, rtol=1e-5, atol=1e-7)


def test_sab_threshold_edge():
    lo = np.nextafter(np.float32(0.1), np.float32(0))
    p = np.array([[0.4, 0.1, lo, 0.4 - 0.1 - lo]], np.float32)
    # 0.25·0.4 rounds to float32(0.1) exactly, which is kept (>=); the float below is dropped
    np.testing.assert_array_equal(q.sab_threshold_mask(jnp.asarray(p)), [[1, 1, 0, 1]])
    np.testing.assert_array_equal(q.sab_threshold_mask(jnp.asarray(p), ratio=0.5),
                                  [[1, 0, 0, 1]])


@pytest.mark.parametrize("boundary", ["exclusive", "inclusive"])
def test_bivit_weight_forward_gradients_and_init(boundary):
    quant = q.get("bivit_weight", boundary=boundary)
    assert quant.learned == ("alpha",)
    for w in [rand((6, 4), 3), rand((3, 2, 5), 4)]:
        axes = tuple(range(w.ndim - 1))
        init = quant.init(w)
        np.testing.assert_allclose(init["alpha"], np.abs(w).mean(axes), rtol=1e-6)  # uncentred
        alpha = rand(w.shape[-1:], 5)
        y, (dw, dalpha), g = vjp(lambda a, b: quant(a, alpha=b), w, alpha)
        c = w.astype(np.float64) - w.mean(axes, keepdims=True)
        np.testing.assert_allclose(y, alpha * np_sign(c), rtol=1e-6)
        inside = np.abs(c) < 1 if boundary == "exclusive" else np.abs(c) <= 1
        u = g * alpha * inside
        np.testing.assert_allclose(dw, u - u.mean(axes, keepdims=True), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dalpha, (g * np_sign(c)).sum(axes), rtol=1e-5, atol=1e-6)


def test_bivit_weight_clip_edge():
    w = np.array([[1.0], [-1.0], [0.5], [-0.5]], np.float32)  # mean 0: centred = w
    for boundary, expect in [("exclusive", [0, 0, 1, 1]), ("inclusive", [1, 1, 1, 1])]:
        _, (dw, _), _ = vjp(lambda a, b: q.get("bivit_weight", boundary=boundary)(a, alpha=b),
                            w, np.ones(1, np.float32), cotangent=np.array([[1.], [0], [0], [0]]))
        e = np.array(expect, float)[:, None] * np.array([[1.], [0], [0], [0]])
        np.testing.assert_allclose(dw, e - e.mean(0), atol=1e-7)

"""FID and precision/recall against independent scipy/numpy computations; penultimate taps."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from flax import nnx

from bnn_jax.analysis import fid


def scipy_fid(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6))
    b = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) * 0.5 + 0.3
    assert fid.fid(a, b) == pytest.approx(scipy_fid(a, b), rel=1e-6)
    assert fid.fid(a, a) == pytest.approx(0.0, abs=1e-8)
    # 1-d Gaussians by hand: (m1 - m2)^2 + (s1 - s2)^2
    assert fid.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_precision_recall_brute_force():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(40, 3))
    fake = rng.normal(size=(30, 3)) + np.array([1.5, 0, 0])
    k = 3

    def radii(x):
        return [sorted(np.linalg.norm(x - p, axis=1))[k] for p in x]

    rr, rf = radii(real), radii(fake)
    prec = np.mean([any(np.linalg.norm(f - r) <= rad for r, rad in zip(real, rr)) for f in fake])
    rec = np.mean([any(np.linalg.norm(r - f) <= rad for f, rad in zip(fake, rf)) for r in real])
    assert fid.precision_recall(real, fake, k) == pytest.approx((prec, rec))
    assert fid.precision_recall(real, real, k) == (1.0, 1.0)
    with pytest.raises(ValueError, match="needs more than 3"):
        fid.precision_recall(real[:3], fake, 3)


class Net(nnx.Module):
    def __init__(self):
        self.body = nnx.Linear(4, 5, rngs=nnx.Rngs(0))
        self.head = nnx.Linear(5, 2, rngs=nnx.Rngs(1))

    def __call__(self, x):
        return self.head(jnp.tanh(self.body(x.reshape(x.shape[0], -1))))


def test_penultimate_features_are_the_head_input():
    net = Net()
    x = np.random.default_rng(2).normal(size=(7, 2, 2, 1)).astype(np.float32)
    got = fid.penultimate(net, batch_size=3)(x)
    want = np.tanh(np.asarray(net.body(jnp.asarray(x.reshape(7, 4)))))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert isinstance(net.head, nnx.Linear)  # the model itself is not changed


def test_unknown_features_and_missing_classifier():
    with pytest.raises(ValueError, match="valid features"):
        fid.extractor("clip")
    with pytest.raises(ValueError, match="--classifier DIR"):
        fid.extractor("classifier")

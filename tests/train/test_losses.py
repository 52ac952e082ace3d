"""Distillation and task losses against numpy; student-only gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnn_jax.train import losses

RNG = np.random.default_rng(7)
f32 = np.float32


def np_log_softmax(z):
    z = z.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def logits(*shape):
    return (RNG.normal(size=shape) * 2).astype(f32)


@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 6)])
def test_softmax_cross_entropy(shape):
    z = logits(*shape)
    labels = RNG.integers(0, shape[-1], size=shape[:-1])
    expected = -np.mean(np.take_along_axis(np_log_softmax(z), labels[..., None], -1))
    np.testing.assert_allclose(losses.softmax_cross_entropy(jnp.asarray(z), jnp.asarray(labels)),
                               expected, rtol=1e-5)
    mask = np.zeros(shape[:-1], bool)
    mask.reshape(-1)[:2] = True
    nll = -np.take_along_axis(np_log_softmax(z), labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(losses.softmax_cross_entropy(jnp.asarray(z), jnp.asarray(labels),
                                                            mask=jnp.asarray(mask)),
                               nll[mask].mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="integer"):
        losses.softmax_cross_entropy(jnp.asarray(z), jnp.asarray(labels, f32))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_loss(temperature):
    s, t = logits(6, 5), logits(6, 5)
    ls, lt = np_log_softmax(s / temperature), np_log_softmax(t / temperature)
    expected = np.mean(np.sum(np.exp(lt) * (lt - ls), -1)) * temperature ** 2
    np.testing.assert_allclose(losses.kd_loss(jnp.asarray(s), jnp.asarray(t),
                                              temperature=temperature), expected, rtol=1e-5)
    assert abs(float(losses.kd_loss(jnp.asarray(t), jnp.asarray(t)))) < 1e-6


def test_distribution_and_soft_cross_entropy():
    s, t = logits(4, 7), logits(4, 7)
    ls, lt = np_log_softmax(s), np_log_softmax(t)
    ce = -np.mean(np.sum(np.exp(lt) * ls, -1))
    np.testing.assert_allclose(losses.distribution_loss(jnp.asarray(s), jnp.asarray(t)), ce,
                               rtol=1e-5)
    kl = np.mean(np.sum(np.exp(lt) * (lt - ls), -1))
    np.testing.assert_allclose(losses.distribution_loss(jnp.asarray(s), jnp.asarray(t),
                                                        kind="kl"), kl, rtol=1e-5)
    np.testing.assert_allclose(losses.soft_cross_entropy(jnp.asarray(s), jnp.asarray(t),
                                                         reduction="elementmean"), ce / 7,
                               rtol=1e-5)
    # Same student gradient for both kinds; none for the teacher.
    g_ce = jax.grad(losses.distribution_loss, argnums=(0, 1))(jnp.asarray(s), jnp.asarray(t))
    g_kl = jax.grad(lambda a, b: losses.distribution_loss(a, b, kind="kl"),
                    argnums=(0, 1))(jnp.asarray(s), jnp.asarray(t))
    np.testing.assert_allclose(g_ce[0], g_kl[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(g_ce[1], 0)
    np.testing.assert_array_equal(g_kl[1], 0)


def np_normalized_diff(s, t, threshold=None):
    if threshold is not None:
        s, t = np.where(s <= threshold, 0, s), np.where(t <= threshold, 0, t)
    return np.linalg.norm((s / np.linalg.norm(s) - t / np.linalg.norm(t)).reshape(-1))


def test_dmd_loss_matches_numpy_zero_and_student_only_gradients():
    s_layers = [RNG.normal(size=(2, 2, 4, 3)).astype(f32) for _ in range(2)]
    t_layers = [RNG.normal(size=(2, 2, 4, 3)).astype(f32) for _ in range(2)]
    pattern = lambda f: np.einsum("...id,...jd->...ij", f, f) / np.sqrt(3)
    expected = sum(np_normalized_diff(pattern(s), pattern(t), -100.0)
                   for s, t in zip(s_layers, t_layers))
    sj, tj = [list(map(jnp.asarray, ls)) for ls in (s_layers, t_layers)]
    np.testing.assert_allclose(losses.dmd_loss(sj, tj), expected, rtol=1e-5)
    assert float(losses.dmd_loss(sj, tj)) > 0
    assert float(losses.dmd_loss(tj, tj)) == pytest.approx(0.0, abs=1e-6)
    gs, gt = jax.grad(losses.dmd_loss, argnums=(0, 1))(sj, tj)
    assert all(np.abs(np.asarray(g)).max() > 0 for g in gs)
    assert all(np.all(np.asarray(g) == 0) for g in gt)
    g_same = jax.grad(losses.dmd_loss)(tj, tj)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in g_same)


def test_dmd_threshold_zeroes_masked_scores():
    s = jnp.asarray(np.array([[[[1.0, -500.0], [2.0, 3.0]]]], f32))
    t = jnp.asarray(np.array([[[[1.0, 0.0], [2.0, 3.0]]]], f32))
    assert float(losses.normalized_difference(s, t, threshold=-100.0)) == 0.0
    assert float(losses.normalized_difference(s, t)) > 0.1


def test_hidden_state_loss():
    s = [jnp.asarray(RNG.normal(size=(2, 3, 4)).astype(f32)) for _ in range(3)]
    t = [jnp.asarray(RNG.normal(size=(2, 3, 4)).astype(f32)) for _ in range(3)]
    expected = sum(np_normalized_diff(np.asarray(a), np.asarray(b)) for a, b in zip(s, t))
    np.testing.assert_allclose(losses.hidden_state_loss(s, t), expected, rtol=1e-5)
    # Direction only: scaling the student does not change the loss.
    np.testing.assert_allclose(losses.hidden_state_loss([3 * a for a in s], t), expected,
                               rtol=1e-5)
    gs, gt = jax.grad(losses.hidden_state_loss, argnums=(0, 1))(s, t)
    assert all(np.abs(np.asarray(g)).max() > 0 for g in gs)
    assert all(np.all(np.asarray(g) == 0) for g in gt)  # the teacher gets no gradient


@pytest.mark.parametrize("axis", [-1, 2])
def test_lrm_projection_and_loss(axis):
    teacher = RNG.normal(size=(2, 4, 5, 8)).astype(f32)
    teacher[..., 0] *= 5  # a dominant direction along the channel axis
    k = np.asarray(losses.lrm_projection(jnp.asarray(teacher), axis=axis))
    c = teacher.shape[axis]
    assert k.shape == (c, max(c // 4, 2))
    np.testing.assert_allclose(k.T @ k, np.eye(k.shape[1]), atol=1e-5)  # orthonormal basis
    flat = np.moveaxis(teacher, axis, -1).reshape(-1, c).astype(np.float64)
    flat -= flat.mean(0)
    eigval, eigvec = np.linalg.eigh(flat.T @ flat)
    top = eigvec[:, ::-1][:, : k.shape[1]]
    np.testing.assert_allclose(np.abs(top.T @ k), np.eye(k.shape[1]), atol=1e-4)  # same space

    student = teacher + RNG.normal(size=teacher.shape).astype(f32) * 0.1
    sj, tj, kj = jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(k)
    ps = np.moveaxis(student, axis, -1) @ k
    pt = np.moveaxis(teacher, axis, -1) @ k
    np.testing.assert_allclose(losses.lrm_loss([sj], [tj], [kj], axis=axis),
                               np.mean((ps - pt) ** 2), rtol=1e-4)
    assert float(losses.lrm_loss([tj], [tj], [kj], axis=axis)) == 0.0
    assert float(losses.lrm_loss([sj], [tj], [kj], axis=axis)) > 0
    gs, gt = jax.grad(lambda a, b: losses.lrm_loss([a], [b], [kj], axis=axis),
                      argnums=(0, 1))(sj, tj)
    assert np.abs(np.asarray(gs)).max() > 0 and np.all(np.asarray(gt) == 0)


@pytest.mark.parametrize("beta", [0.0, 2.0])
@pytest.mark.parametrize("normalize", [True, False])
def test_dad_loss(beta, normalize):
    s, t = logits(3, 4, 6), logits(3, 4, 6)
    mask = RNG.random((3, 4)) > 0.3
    ls, lt = np_log_softmax(s), np_log_softmax(t)
    kl = np.sum(np.exp(lt) * (lt - ls), -1)
    w = 1 + beta * (-np.sum(np.exp(lt) * lt, -1)) / np.log(6)
    if normalize:
        expected = np.sum(w * kl * mask) / np.sum(w * mask)
    else:
        expected = np.sum(w * kl * mask) / np.sum(mask)
    got = losses.dad_loss(jnp.asarray(s), jnp.asarray(t), beta=beta, mask=jnp.asarray(mask),
                          normalize=normalize)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    if beta == 0.0:  # plain token KD
        np.testing.assert_allclose(got, kl[mask].mean(), rtol=1e-5)
    gt = jax.grad(lambda b: losses.dad_loss(jnp.asarray(s), b, beta=beta))(jnp.asarray(t))
    np.testing.assert_array_equal(gt, 0)


def test_binarydm_scale_l2():
    sig = [RNG.normal(size=(1, 3)).astype(f32), RNG.normal(size=(1, 1, 1, 2)).astype(f32)]
    expected = 0.09 * sum(np.sum(a.astype(np.float64) ** 2) for a in sig)
    np.testing.assert_allclose(losses.binarydm_scale_l2(list(map(jnp.asarray, sig))), expected,
                               rtol=1e-6)

"""DeiT's distillation heads: with ``distilled_training`` the class head learns from the labels
and the distillation head from the teacher, each with its own loss, as DeiT's
``DistillationLoss`` (re-stated here in numpy); evaluation averages the heads."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from bnn_jax import models
from bnn_jax.models.vit import HeadLogits
from bnn_jax.tasks.classification import Task
from bnn_jax.train import distill

FIELDS = dict(num_classes=5, input_shape=(8, 8, 1), patch_size=4, hidden=8, depth=1,
              num_heads=2, mlp_dim=16, distilled=True, distilled_training=True)
ALPHA = 0.5  # DeiT's --distillation-alpha default (main.py line 146)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _ce(z, y):
    return float(np.mean(-np.log(_softmax(z)[np.arange(len(y)), y])))


def _setup():
    model = models.get("vit")(rngs=nnx.Rngs(0), **FIELDS)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((6, 8, 8, 1)).astype(np.float32)
    labels = rng.integers(0, 5, 6).astype(np.int32)
    teacher = rng.standard_normal((6, 5)).astype(np.float32)
    return model, images, labels, teacher


def _heads(model, images):
    """The two heads by hand from the model's token features."""
    x = np.asarray(model.features(images))
    w, b = np.asarray(model.head.kernel[...]), np.asarray(model.head.bias[...])
    wd, bd = np.asarray(model.head_dist.kernel[...]), np.asarray(model.head_dist.bias[...])
    return x, x[:, 0] @ w + b, x[:, 1] @ wd + bd


def test_training_returns_both_heads_and_evaluation_their_mean():
    model, images, _, _ = _setup()
    out = model(images)
    assert isinstance(out, HeadLogits) and out.shape == (6, 5)
    _, cls, dist = _heads(model, images)
    np.testing.assert_allclose(np.asarray(out.cls), cls, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.dist), dist, rtol=1e-5, atol=1e-5)
    model.eval()
    np.testing.assert_allclose(np.asarray(model(images)), (cls + dist) / 2, rtol=1e-5,
                               atol=1e-5)
    plain = models.get("vit")(rngs=nnx.Rngs(0), **{**FIELDS, "distilled_training": False})
    assert not isinstance(plain(images), HeadLogits)  # timm's default: the mean also trains
    with pytest.raises(ValueError, match="distilled_training=True needs distilled=True"):
        models.get("vit")(rngs=nnx.Rngs(0), **{**FIELDS, "distilled": False})


def _deit_loss(cls, dist, labels, teacher):
    """DeiT losses.py DistillationLoss, 'hard': base on the class head, CE to the teacher's
    argmax on the distillation head, (1 - alpha)·base + alpha·distillation."""
    return (1 - ALPHA) * _ce(cls, labels) + ALPHA * _ce(dist, teacher.argmax(-1))


def _kd():
    return ml_collections.ConfigDict(dict(
        enabled=True, task_weight=1 - ALPHA, terms=[dict(name="hard", weight=ALPHA)]))


def _total(model, images, labels, teacher):
    """The training loss as train/loop.py composes it: task loss, then the KD terms on
    task.distill_logits of student and teacher."""
    task = Task({}, spec={}, config=None)
    batch = {"image": images, "label": labels}
    out = model(images)
    loss, aux = task.loss(out, batch)
    s, mask = task.distill_logits(out, batch)
    t, _ = task.distill_logits(jnp.asarray(teacher), batch)
    return distill.Distiller(_kd())(loss, s, t, mask, {}, {}), aux


def test_per_head_losses_and_gradients_equal_deits():
    model, images, labels, teacher = _setup()
    distill.validate(_kd())
    total, aux = _total(model, images, labels, teacher)
    x, cls, dist = _heads(model, images)
    np.testing.assert_allclose(float(total), _deit_loss(cls, dist, labels, teacher), rtol=1e-5)
    np.testing.assert_allclose(float(aux["accuracy"]),
                               np.mean(((cls + dist) / 2).argmax(-1) == labels))

    # Each head's gradient comes from its own loss alone: d/dW of alpha-weighted CE of a
    # linear head is x^T (softmax - onehot) / B times its weight.
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    grads = jax.grad(lambda p: _total(nnx.merge(graph, p, rest), images, labels, teacher)[0])(
        params)
    onehot = np.eye(5)
    want_head = (1 - ALPHA) * x[:, 0].T @ (_softmax(cls) - onehot[labels]) / 6
    want_dist = ALPHA * x[:, 1].T @ (_softmax(dist) - onehot[teacher.argmax(-1)]) / 6
    np.testing.assert_allclose(np.asarray(grads["head"]["kernel"][...]), want_head, atol=1e-5)
    np.testing.assert_allclose(np.asarray(grads["head_dist"]["kernel"][...]), want_dist,
                               atol=1e-5)


def test_distilled_training_without_a_teacher_is_a_clear_error():
    model, images, labels, _ = _setup()
    config = ml_collections.ConfigDict(dict(kd=dict(enabled=False)))
    with pytest.raises(ValueError, match="distilled_training=True trains the distillation "
                                         "head from a teacher only; enable config.kd"):
        Task({}, spec={}, config=config).check_batch({"image": images, "label": labels}, model)
    Task({}, spec={}, config=ml_collections.ConfigDict(dict(kd=_kd()))).check_batch(
        {"image": images, "label": labels}, model)


@pytest.mark.slow
def test_distilled_student_trains_through_the_loop_from_a_teacher_run(tmp_path):
    import json

    from bnn_jax.train import config as config_lib
    from bnn_jax.train import loop

    tiny = dict(name="vit", patch_size=4, hidden=16, depth=1, num_heads=2, mlp_dim=32)

    def run(c, workdir, steps):
        c.total_steps, c.log_every, c.checkpoint_every, c.tensorboard = steps, 1, steps, False
        c.data = dict(name="digits", batch_size=32, eval_batch_size=120, data_dir="")
        c.optimizer = dict(name="adam", learning_rate=3e-3, schedule="constant")
        config_lib.validate(c)
        loop.run(c, str(workdir))
        lines = [json.loads(s) for s in (workdir / "metrics.jsonl").read_text().splitlines()]
        return [m["loss"] for m in lines if m["split"] == "train"]

    teacher = config_lib.defaults()
    teacher.model = dict(tiny)
    run(teacher, tmp_path / "teacher", 8)
    student = config_lib.defaults()
    student.model = dict(tiny, distilled=True, distilled_training=True)
    student.kd = dict(enabled=True, teacher_model=dict(tiny),
                      teacher_workdir=str(tmp_path / "teacher"), task_weight=1 - ALPHA,
                      terms=[dict(name="hard", weight=ALPHA)])
    losses = run(student, tmp_path / "student", 12)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses

"""Knowledge distillation from a teacher run: the loss the loop optimizes is ReActNet's
distributional loss, checked against a numpy computation on the same batch and models."""

import json

import numpy as np
import pytest
from flax import nnx

from bnn_jax import data, models, tasks
from bnn_jax.train import checkpoint, config as config_lib, run


def base_config(model, steps):
    c = config_lib.defaults()
    c.total_steps, c.log_every, c.checkpoint_every = steps, 1, 100
    c.tensorboard, c.async_checkpoint = False, False
    c.mesh.num_devices = 1
    c.data = dict(name="digits", batch_size=32, eval_batch_size=120)
    c.model = model
    c.optimizer = dict(name="adam", learning_rate=1e-2)
    return c


@pytest.mark.slow  # two trainings (teacher, student): ~10 s on 2 shared cores
def test_distributional_kd_loss_matches_numpy(tmp_path):
    teacher_model = dict(name="mlp", hidden=(32,))
    run(base_config(teacher_model, 5), str(tmp_path / "teacher"))

    c = base_config(dict(name="mlp", hidden=(32, 16), input_quantizer="ste_sign",
                         kernel_quantizer="ste_sign"), 2)
    c.kd = dict(enabled=True, teacher_model=teacher_model,
                teacher_workdir=str(tmp_path / "teacher"), kind="distributional", weight=1.0,
                temperature=1.0)
    run(c, str(tmp_path / "student"))
    text = (tmp_path / "student" / "metrics.jsonl").read_text()
    logged = [json.loads(x) for x in text.splitlines()]
    first = next(x for x in logged if x["split"] == "train" and x["step"] == 1)["loss"]

    # Independent computation of step 1: the same batch, the student at init (train mode), the
    # teacher's restored weights (eval mode), and -sum p_t log p_s averaged over the batch.
    batch = data.build(c.data, seed=c.seed).train_batch(0)
    student = models.build(c.model, num_classes=10, input_shape=(8, 8, 1), rngs=nnx.Rngs(c.seed))
    s_logits = np.asarray(student(batch["image"]), np.float64)
    teacher = models.build(teacher_model, num_classes=10, input_shape=(8, 8, 1), rngs=nnx.Rngs(0))
    teacher.eval()
    ckpt = checkpoint.Checkpointer(str(tmp_path / "teacher"), async_save=False, read_only=True)
    saved = ckpt.restore(5, None)[0]
    ckpt.close()
    graph = nnx.split(teacher, nnx.Param, ...)[0]
    t_logits = np.asarray(nnx.merge(graph, saved["params"], saved["rest"])(batch["image"]),
                          np.float64)
    p_t = np.exp(t_logits - t_logits.max(-1, keepdims=True))
    p_t /= p_t.sum(-1, keepdims=True)
    log_p_s = s_logits - s_logits.max(-1, keepdims=True)
    log_p_s -= np.log(np.exp(log_p_s).sum(-1, keepdims=True))
    expected = np.mean(-np.sum(p_t * log_p_s, -1))
    np.testing.assert_allclose(first, expected, rtol=1e-5)
    # and it is not the plain cross-entropy to the labels
    ce = np.mean(-log_p_s[np.arange(32), batch["label"]])
    assert abs(ce - expected) > 1e-3


def test_a_teacher_with_learned_input_arrays_gets_its_trained_values(tmp_path):
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from bnn_jax.nn import initialize
    from bnn_jax.train.loop import load_teacher

    teacher_model = dict(name="mlp", hidden=(16, 8),
                         input_quantizer=dict(name="lsq", bits=2, signed=True))
    ds = data.build(dict(name="digits", batch_size=32, eval_batch_size=120))
    # A "trained" teacher: LSQ steps set to values no first-call rule would give.
    model = models.build(teacher_model, num_classes=10, input_shape=(8, 8, 1), rngs=nnx.Rngs(1))
    initialize(model, jnp.asarray(ds.train_batch(0)["image"]))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    params["layers"][0]["input_step"] = jnp.float32(0.375)
    ckpt = checkpoint.Checkpointer(str(tmp_path / "teacher"), async_save=False)
    ckpt.save(1, {"params": params, "rest": rest, "step": jnp.int32(1)}, {"data_position": 1})
    ckpt.close()

    kd = config_lib.defaults().kd
    kd.teacher_model, kd.teacher_workdir = teacher_model, str(tmp_path / "teacher")
    sharding = NamedSharding(jax.sharding.Mesh(jax.devices()[:1], ("x",)), P())
    task = tasks.build(dict(name="classification"), spec=ds.spec)
    graph, loaded = load_teacher(kd, ds, sharding, task)
    assert float(loaded["params"]["layers"][0]["input_step"]) == 0.375
    np.testing.assert_array_equal(loaded["params"]["stem"]["kernel"], params["stem"]["kernel"])
    # The merged teacher uses the loaded step: calling it creates nothing new.
    t = nnx.merge(graph, loaded["params"], loaded["rest"])
    t(ds.train_batch(0)["image"])
    assert float(t.layers[0].input_step[...]) == 0.375

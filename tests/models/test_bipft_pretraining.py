"""BiPFT's pretraining stage: the recipe's settings, its step-1 loss through ``train.run``
against the reference total recomputed in numpy, the loss falling, and fine-tuning from it."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_language_recipes import config_module, log_softmax, train_log

from bnn_jax import data, models
from bnn_jax.nn import initialize
from bnn_jax.train import checkpoint, config as config_lib, run


def bipft():
    return config_module("bipft")


def test_pretraining_recipe_follows_the_released_script():
    m = bipft()
    c = m.get_config("stage=pretrain,hf=hf/bert-base-uncased")
    config_lib.validate(c)
    assert c.task.name == "masked_lm" and c.data.name == "pydoc_pretraining"
    # bert_base.sh: 8 x 64 per device, lr 2e-4, 500k steps, 5000 warmup, 128 tokens.
    assert (c.data.batch_size, c.optimizer.learning_rate, c.total_steps,
            c.optimizer.warmup_steps, c.data.seq_len) == (512, 2e-4, 500_000, 5000, 128)
    assert (c.optimizer.name, c.optimizer.weight_decay, c.optimizer.schedule,
            c.optimizer.end_factor) == ("adamw", 0.0, "warmup_linear", 0.0)
    assert c.model.method == "bipft" and c.model.estimators and c.model.head == "pretraining"
    assert c.kd.teacher_import == c.model.pretrained == c.data.tokenizer
    # learner.py: NSP soft-CE + the hidden-state MSE averaged over 13 states + the task loss.
    assert c.kd.task_weight == 1.0
    soft, hid = c.kd.terms
    assert (soft["name"], soft["weight"], soft["reduction"]) == ("soft_ce", 1.0, "elementmean")
    assert (hid["name"], hid["student"]) == ("hidden_mse", r"hidden_states/\d+")
    np.testing.assert_allclose(hid["weight"], 1 / 13)
    for arg in ("quick,stage=pretrain", "quick,stage=teacher", "quick,init=runs/p",
                "task=rte,init=runs/p"):
        config_lib.validate(m.get_config(arg))
    ft = m.get_config("task=rte,init=runs/p")
    assert (ft.init_from, ft.init_fresh) == ("runs/p", "classifier/.*")
    assert ft.optimizer.schedule == "constant" and ft.optimizer.learning_rate == 2e-5
    with pytest.raises(ValueError, match=r"stage must be one of \['finetune', 'pretrain', "):
        m.get_config("stage=distill")
    with pytest.raises(ValueError, match=r"stage=teacher is the quick float teacher"):
        m.get_config("stage=teacher")
    with pytest.raises(ValueError, match=r"config.init_fresh must be a regex"):
        config_lib.validate(_with(m.get_config("quick,init=runs/p"), init_fresh="("))


def _with(c, **over):
    for k, v in over.items():
        c[k] = v
    return c


def quick(arg):
    c = bipft().get_config(arg)
    c.tensorboard, c.async_checkpoint, c.log_every = False, False, 1
    c.mesh.num_devices = 1
    c.data = dict(c.data, batch_size=8) if "batch_size" in c.data else c.data
    return c


def captured(model, *args, **kwargs):
    # Jitted, as the loop runs the model: a binary network's outputs move with the rounding
    # of the float operations before each sign (eager and XLA-fused ones differ).
    initialize(model, *args, **kwargs)  # the elastic scales, from this batch as the loop does
    out, inter = nnx.jit(lambda m: nnx.capture(m, nnx.Intermediate)(*args, **kwargs))(model)
    inter = nnx.to_pure_dict(inter)
    return [np.asarray(o, np.float64) for o in out], [np.asarray(h, np.float64)
                                                       for h in inter["hidden_states"]]


@pytest.mark.slow  # a float teacher, the binary student with KD, a fine-tuning: ~60-120 s
def test_quick_pretraining_step_one_is_the_reference_total_it_falls_and_fine_tunes(
        tmp_path, capsys):
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    run(quick("quick,stage=teacher,steps=30"), str(teacher_dir))
    c = quick(f"quick,stage=pretrain,steps=25,teacher={teacher_dir}")
    result = run(c, str(student_dir))
    losses = [x["loss"] for x in train_log(student_dir)]
    assert np.mean(losses[-3:]) < losses[0]
    assert {"test_mlm_accuracy", "test_mlm_perplexity", "test_nsp_accuracy"} <= set(result)

    # Step 1 recomputed: the first batch, the student as the loop starts it (alphas from that
    # batch), the teacher's checkpoint; BiPFT's learner.py total.
    ds = data.build(c.data, seed=c.seed)
    b = ds.train_batch(0)
    args = (jnp.asarray(b["input_ids"]),)
    kw = dict(attention_mask=jnp.asarray(b["attention_mask"]),
              token_type_ids=jnp.asarray(b["token_type_ids"]))
    student = models.build(c.model, rngs=nnx.Rngs(c.seed), **ds.spec)
    teacher = models.build(c.kd.teacher_model, rngs=nnx.Rngs(0), **ds.spec)
    graph, params, rest = nnx.split(teacher, nnx.Param, ...)
    saved = checkpoint.restore_params(str(teacher_dir), {"params": nnx.to_pure_dict(params),
                                                         "rest": nnx.to_pure_dict(rest)})
    nnx.replace_by_pure_dict(params, saved["params"])
    teacher = nnx.merge(graph, params, rest)
    (s_mlm, s_nsp), hs = captured(student, *args, **kw)
    (_, t_nsp), ht = captured(teacher, *args, **kw)
    labels, nsl = b["mlm_labels"], b["next_sentence_label"]
    rows, cols = np.nonzero(labels != -100)
    mlm = -np.mean(log_softmax(s_mlm)[rows, cols, labels[rows, cols]])
    nsp = -np.mean(log_softmax(s_nsp)[np.arange(len(nsl)), nsl])
    cls_dist = np.mean(-np.exp(log_softmax(t_nsp)) * log_softmax(s_nsp))
    assert len(hs) == len(ht) == 3  # embeddings + 2 layers
    rep = np.mean([np.mean((a - t) ** 2) for a, t in zip(hs, ht)])
    np.testing.assert_allclose(losses[0], mlm + nsp + cls_dist + rep, rtol=1e-4)
    assert rep > 1e-4 and cls_dist > 1e-4

    # Fine-tuning starts from the pretraining run; the classifier is the only new parameter.
    capsys.readouterr()
    ft = quick(f"quick,init={student_dir},steps=3")
    ft.model.estimators = True  # the pretraining model's estimators carry over
    run(ft, str(tmp_path / "finetune"))
    out = capsys.readouterr().out
    assert f"Initialized parameters from {student_dir}" in out
    assert "kept at its initial value: classifier/bias, classifier/kernel" in out
    with pytest.raises(Exception, match=r"has no array 'params/classifier/"):
        bad = quick(f"quick,init={student_dir},steps=3")
        bad.model.estimators, bad.init_fresh = True, ""
        run(bad, str(tmp_path / "finetune_bad"))

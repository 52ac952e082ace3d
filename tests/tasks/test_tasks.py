"""Task losses and metrics against NumPy restatements, the config checks, and bad input that
must fail before anything is compiled (unknown task/field, too-long sequences, checkpoints
whose shapes do not match the config)."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import models, tasks
from bnn_jax.tasks import denoising
from bnn_jax.train import config as config_lib, distill, run
from bnn_jax.train.loop import ConfigError


def log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def lm_batch(rng, b=3, t=5, v=7):
    logits = rng.normal(size=(b, t, v)).astype(np.float32)
    targets = rng.integers(0, v, size=(b, t)).astype(np.int32)
    mask = (rng.random((b, t)) > 0.3).astype(np.float32)
    mask[0] = 0  # a row of padding only
    return logits, {"input_ids": targets, "target_ids": targets, "loss_mask": mask,
                    "mask": np.ones(b, np.float32)}


# ------------------------------------------------------------------------- config checks --

def test_unknown_task_and_field_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown task 'lm'.*valid tasks: causal_lm, "
                                         r"classification, denoising, masked_lm, seq2seq, "
                                         r"sequence_classification"):
        tasks.validate({"name": "lm"})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['smoothing'\] in config.task "
                                         r"for task 'seq2seq'; valid fields: \['generate', "
                                         r"'label_smoothing'\]"):
        tasks.validate({"name": "seq2seq", "smoothing": 0.1})
    with pytest.raises(ValueError, match="beta_start <= beta_end"):
        tasks.validate({"name": "denoising", "beta_start": 0.1, "beta_end": 0.01})


def test_a_bad_task_fails_in_run_before_the_workdir_is_written(tmp_path):
    c = config_lib.defaults()
    c.task = {"name": "classification", "label_smoothing": 0.1}
    with pytest.raises(ConfigError, match=r"valid fields: \['model_regularizer'\]"):
        run(c, str(tmp_path / "wd"))
    assert not os.path.exists(tmp_path / "wd")


def test_a_dataset_without_what_the_model_needs_is_a_config_error(tmp_path):
    c = config_lib.defaults()
    c.total_steps, c.tensorboard, c.mesh.num_devices = 1, False, 1
    c.model = dict(name="llama")  # needs vocab_size and max_len; digits gives images
    with pytest.raises(ConfigError, match=r"model 'llama' needs \['max_len', 'vocab_size'\]"):
        run(c, str(tmp_path))


def test_registry_builds_from_the_spec_and_ignores_keys_the_model_does_not_take():
    spec = {"num_classes": 10, "input_shape": (8, 8, 1), "vocab_size": 50, "max_len": 9}
    m = models.build({"name": "mlp", "hidden": (4,)}, rngs=nnx.Rngs(0), **spec)
    assert m.head.out_features == 10
    assert "num_classes" not in models.fields("mlp") and "hidden" in models.fields("mlp")
    assert "max_len" not in models.fields("llama") and "vocab_size" not in models.fields("llama")
    assert models.spec_keys("text_encoder") == ["max_len", "num_labels", "vocab_size"]
    # the old keyword call keeps working
    m = models.build({"name": "mlp", "hidden": (4,)}, num_classes=3, input_shape=(2, 2),
                     rngs=nnx.Rngs(0))
    assert m.head.out_features == 3


def test_a_sequence_longer_than_the_model_maximum_is_an_error_before_compiling():
    model = models.build({"name": "text_encoder", "hidden": 8, "intermediate": 8,
                          "num_layers": 1, "num_heads": 2}, rngs=nnx.Rngs(0),
                         vocab_size=20, max_len=8, num_labels=2)
    task = tasks.build({"name": "sequence_classification"},
                       spec={"vocab_size": 20, "max_len": 8, "num_labels": 2})
    batch = {k: np.zeros((2, 12), np.int32) for k in ("input_ids", "attention_mask",
                                                      "token_type_ids")}
    batch["label"] = np.zeros(2, np.int32)
    with pytest.raises(ValueError, match=r"length 12, longer than the model's maximum "
                                         r"max_len=8"):
        task.check_batch(batch, model)
    with pytest.raises(ValueError, match="needs batch field"):
        task.check_batch({"input_ids": batch["input_ids"]}, model)


def test_resuming_with_a_config_of_other_shapes_is_an_error_that_keeps_the_checkpoint(
        tmp_path):
    c = config_lib.defaults()
    c.total_steps, c.log_every, c.checkpoint_every = 1, 1, 1
    c.tensorboard, c.async_checkpoint, c.mesh.num_devices = False, False, 1
    c.data = dict(name="digits", batch_size=32, eval_batch_size=360)
    c.model = dict(name="mlp", hidden=(8,))
    run(c, str(tmp_path))
    c.model = dict(name="mlp", hidden=(6,))
    c.total_steps = 2
    c.allow_config_change = True  # past the config check: the shapes themselves must stop it
    with pytest.raises(ConfigError, match=r"checkpoint 1 .* another model or optimizer: "
                                          r".*stem/kernel has shape \(64, 8\), "
                                          r"this run's is \(64, 6\)"):
        run(c, str(tmp_path))
    assert os.listdir(tmp_path / "checkpoints") == ["1"]


# ----------------------------------------------------------------------- losses / metrics --

def test_causal_lm_loss_and_final_metrics_match_numpy():
    rng = np.random.default_rng(0)
    logits, batch = lm_batch(rng)
    task = tasks.build({"name": "causal_lm"}, spec={"vocab_size": 7, "max_len": 5})
    nll = -np.take_along_axis(log_softmax(logits), batch["target_ids"][..., None], -1)[..., 0]
    m = batch["loss_mask"]
    loss, aux = task.loss(jnp.asarray(logits), batch)
    np.testing.assert_allclose(loss, (nll * m).sum() / m.sum(), rtol=1e-6)
    hit = logits.argmax(-1) == batch["target_ids"]
    np.testing.assert_allclose(aux["accuracy"], (hit * m).sum() / m.sum(), rtol=1e-6)
    per = task.eval_metrics(jnp.asarray(logits), batch)
    np.testing.assert_allclose(per["nll_sum"], (nll * m).sum(-1), rtol=1e-5)
    sums = {k: float(np.sum(v)) for k, v in per.items()}

    class DS:
        eval_num_bytes = 40

    out = task.final({}, sums, DS())
    mean = (nll * m).sum() / m.sum()
    np.testing.assert_allclose(out["perplexity"], math.exp(mean), rtol=1e-5)
    np.testing.assert_allclose(out["bits_per_byte"], (nll * m).sum() / math.log(2) / 40,
                               rtol=1e-5)


def test_seq2seq_label_smoothing_matches_numpy():
    rng = np.random.default_rng(1)
    logits, batch = lm_batch(rng)
    task = tasks.build({"name": "seq2seq", "label_smoothing": 0.2},
                       spec={"vocab_size": 7, "max_len": 5})
    lp = log_softmax(logits)
    nll = -np.take_along_axis(lp, batch["target_ids"][..., None], -1)[..., 0]
    smooth = 0.8 * nll + 0.2 * (-lp.mean(-1))
    m = batch["loss_mask"]
    loss, _ = task.loss(jnp.asarray(logits), batch)
    np.testing.assert_allclose(loss, (smooth * m).sum() / m.sum(), rtol=1e-6)
    # evaluation reports the unsmoothed loss
    sums = {k: float(np.sum(v)) for k, v in task.eval_metrics(jnp.asarray(logits), batch)
            .items()}
    np.testing.assert_allclose(task.final({}, sums)["loss"], (nll * m).sum() / m.sum(),
                               rtol=1e-5)


def test_sequence_regression_is_mse_and_classification_is_cross_entropy():
    out = np.array([[0.5], [2.0]], np.float32)
    batch = {"label": np.array([1.0, 1.5], np.float32)}
    reg = tasks.build({"name": "sequence_classification"}, spec={"num_labels": 1})
    assert reg.regression and reg.train_metrics == ("loss",)
    np.testing.assert_allclose(reg.loss(jnp.asarray(out), batch)[0], (0.25 + 0.25) / 2)
    cls = tasks.build({"name": "sequence_classification"}, spec={"num_labels": 3})
    logits = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]], np.float32)
    labels = np.array([1, 0], np.int32)
    want = -np.take_along_axis(log_softmax(logits), labels[:, None], -1).mean()
    loss, aux = cls.loss(jnp.asarray(logits), {"label": labels})
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert float(aux["accuracy"]) == 0.5


def test_ddpm_schedule_and_noising_match_numpy():
    task = tasks.build({"name": "denoising", "num_timesteps": 10, "beta_start": 0.1,
                        "beta_end": 0.5}, spec={})
    betas = 0.1 + 0.4 * np.arange(10) / 9
    abar = np.cumprod(1 - betas)
    np.testing.assert_allclose(task.abar, abar, rtol=1e-6)
    x0 = np.random.default_rng(2).normal(size=(4, 3, 3, 1)).astype(np.float32)
    b = task.prepare({"image": x0}, jax.random.key(0))
    t, eps = np.asarray(b["timesteps"]), np.asarray(b["noise"])
    a = abar[t][:, None, None, None]
    np.testing.assert_allclose(b["noisy"], np.sqrt(a) * x0 + np.sqrt(1 - a) * eps, rtol=1e-5,
                               atol=1e-6)
    b2 = task.prepare({"image": x0}, jax.random.key(0))
    np.testing.assert_array_equal(b["noisy"], b2["noisy"])  # a key fixes the draw
    loss, _ = task.loss(jnp.asarray(eps), b)
    assert float(loss) == 0.0  # predicting the noise exactly
    np.testing.assert_allclose(denoising.q_sample(x0, t, eps, abar), b["noisy"], rtol=1e-6)


# ---------------------------------------------------------------------------- distillation --

def test_distillation_terms_pair_features_by_path_and_layer_map():
    names_s = ["blocks/0/hidden", "blocks/1/hidden", "blocks/10/hidden", "blocks/2/hidden"]
    assert distill.select(names_s, r"blocks/\d+/hidden") == [
        "blocks/0/hidden", "blocks/1/hidden", "blocks/2/hidden", "blocks/10/hidden"]
    kd = {"terms": [{"name": "hidden_mse", "weight": 2.0, "student": r"s/\d+",
                     "teacher": r"t/\d+", "layer_map": [1, 3]},
                    {"name": "logit", "weight": 0.5, "temperature": 2.0}], "task_weight": 1.0}
    d = distill.Distiller(kd, ["s/0", "s/1"], ["t/0", "t/1", "t/2", "t/3"])
    assert d.pairs[0] == [("s/0", "t/1"), ("s/1", "t/3")]
    rng = np.random.default_rng(3)
    sf = {f"s/{i}": rng.normal(size=(2, 3)) for i in range(2)}
    tf = {f"t/{i}": rng.normal(size=(2, 3)) for i in range(4)}
    sl, tl = rng.normal(size=(2, 5)), rng.normal(size=(2, 5))
    mse = np.mean((sf["s/0"] - tf["t/1"]) ** 2) + np.mean((sf["s/1"] - tf["t/3"]) ** 2)
    pt = np.exp(log_softmax(tl / 2))
    kl = np.mean(np.sum(pt * (log_softmax(tl / 2) - log_softmax(sl / 2)), -1)) * 4
    got = d(jnp.float32(1.5), jnp.asarray(sl), jnp.asarray(tl), None, sf, tf)
    np.testing.assert_allclose(got, 1.5 + 2.0 * mse + 0.5 * kl, rtol=1e-5)
    with pytest.raises(ValueError, match="2 student features but 4 teacher features; give "
                                         "layer_map"):
        distill.Distiller({"terms": [{"name": "hidden_mse", "student": r"s/\d+",
                                      "teacher": r"t/\d+"}]}, ["s/0", "s/1"], list(tf))
    with pytest.raises(ValueError, match=r"no student feature matches 'x'; the student "
                                         r"records \['s/0', 's/1'\]"):
        distill.Distiller({"terms": [{"name": "dmd", "student": "x"}]}, ["s/0", "s/1"], [])
    with pytest.raises(ValueError, match=r"unknown term 'mse'; valid terms: \['attention', "
                                         r"'dad', 'distribution', 'dmd', 'hard', 'hidden_mse'"):
        distill.validate({"terms": [{"name": "mse"}]})


# ------------------------------------------------------------------------------ generation --

def test_encoder_decoder_cached_decode_equals_the_teacher_forced_forward():
    from bnn_jax.generate import generate

    m = models.build(dict(name="encoder_decoder", hidden=16, intermediate=32, num_layers=1,
                          num_heads=2, input_quantizer="ste_sign", kernel_quantizer="ste_sign"),
                     rngs=nnx.Rngs(0), vocab_size=20, max_len=10)
    src = jnp.asarray(np.random.default_rng(0).integers(3, 20, (3, 7)), jnp.int32)
    smask = jnp.ones_like(src).at[1, 5:].set(0)
    toks = generate(m, src, smask, max_new_tokens=4, decoder_start_id=1)["tokens"]
    dec = jnp.concatenate([jnp.ones((3, 1), jnp.int32), toks[:, :-1]], 1)
    full = nnx.jit(lambda m, s, d, k: m(s, d, attention_mask=k))(m, src, dec, smask)
    np.testing.assert_array_equal(np.argmax(full, -1), toks)  # greedy = argmax of the forward

    @nnx.jit
    def cached(m, src, dec, smask):  # the cached logits themselves equal the forward's
        return m.decode(dec, m.init_cache(3, 5), index=jnp.int32(0),
                        positions=jnp.arange(4)[None],
                        kv_mask=jnp.ones((3, 5), bool).at[:, 4:].set(False),
                        encoded=m.encode(src, smask), encoder_mask=smask)[0]

    logits = cached(m, src, dec, smask)
    np.testing.assert_allclose(logits, full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="longer than the model's max_len=10"):
        generate(m, src, smask, max_new_tokens=10, decoder_start_id=1)


@pytest.mark.parametrize("glue_task,num_labels", [("stsb", 1), ("cola", 2)])
def test_sequence_classification_reports_glue_metrics_of_the_final_model(glue_task, num_labels):
    from bnn_jax.analysis import text_metrics
    from bnn_jax.data import synthetic_text

    syn = synthetic_text.synthetic_glue(num_labels=num_labels, num_train=8, num_test=11,
                                        global_batch_size=4, eval_batch_size=4)
    ds = type(syn)(f"glue/{glue_task}", syn.train, syn.eval, syn.spec, syn.tokenizer,
                   global_batch_size=4, eval_batch_size=4)
    model = models.build(dict(name="text_encoder", hidden=8, intermediate=8, num_layers=1,
                              num_heads=2), rngs=nnx.Rngs(0), **ds.spec)
    model.eval()
    task = tasks.build({"name": "sequence_classification"}, spec=ds.spec)
    got = task.model_metrics(model, ds)
    out = np.asarray(model(jnp.asarray(ds.eval["input_ids"]),
                           attention_mask=jnp.asarray(ds.eval["attention_mask"]),
                           token_type_ids=jnp.asarray(ds.eval["token_type_ids"])))
    preds = out[:, 0] if num_labels == 1 else out.argmax(-1)
    want = text_metrics.glue(glue_task, preds, ds.eval["label"])
    assert set(got) == {f"glue_{k}" for k in want}
    for k, v in want.items():
        np.testing.assert_allclose(got[f"glue_{k}"], v, rtol=1e-4, atol=1e-4)
    assert task.model_metrics(model, syn) == {}  # not a GLUE dataset

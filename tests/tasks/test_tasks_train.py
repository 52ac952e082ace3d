"""Every task trains a tiny model through ``train.run`` on 8 simulated devices, and a run that
dies after a checkpoint resumes to the same final state, bit for bit, as an uninterrupted run."""

import json

import jax
import numpy as np
import pytest

from bnn_jax.train import checkpoint, config as config_lib, run

TINY = dict(hidden=16, intermediate=32, num_layers=1, num_heads=2)
BINARY = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign")


def task_config(task, data, model, steps=4, every=2):
    c = config_lib.defaults()
    c.total_steps, c.log_every, c.checkpoint_every = steps, 1, every
    c.async_checkpoint, c.tensorboard = False, False
    c.mesh.num_devices = 8  # data parallel over the 8 simulated CPU devices (conftest)
    c.task = task
    c.data = data
    c.model = model
    c.optimizer = dict(name="adam", learning_rate=1e-2, schedule="constant")
    return c


CASES = {
    "sequence_classification": lambda: task_config(
        dict(name="sequence_classification"),
        dict(name="synthetic_glue", batch_size=16, eval_batch_size=40, num_train=64,
             num_test=50),
        dict(name="text_encoder", **TINY, **BINARY)),
    "regression": lambda: task_config(
        dict(name="sequence_classification"),
        dict(name="synthetic_glue", batch_size=16, eval_batch_size=40, num_labels=1,
             num_train=64, num_test=50),
        dict(name="text_encoder", **TINY)),
    "causal_lm": lambda: task_config(
        dict(name="causal_lm"),
        dict(name="pydoc", batch_size=16, eval_batch_size=512, seq_len=32, tokenizer="byte"),
        dict(name="llama", hidden=16, intermediate=32, num_layers=1, num_heads=2,
             kernel_quantizer="bitnet_weight", input_quantizer="bitnet_act")),
    "seq2seq": lambda: task_config(
        dict(name="seq2seq", label_smoothing=0.1, generate=dict(max_new_tokens=11)),
        dict(name="synthetic_seq2seq", batch_size=16, eval_batch_size=40, num_train=64,
             num_test=50),
        dict(name="encoder_decoder", **TINY, **BINARY)),
    "denoising": lambda: task_config(
        dict(name="denoising", num_timesteps=50),
        dict(name="digits", batch_size=16, eval_batch_size=120),
        dict(name="conv_denoiser", width=8, depth=1, emb_dim=16, **BINARY)),
}
EVAL_KEYS = {
    "sequence_classification": {"test_loss", "test_accuracy", "train_accuracy"},
    "regression": {"test_loss"},
    "causal_lm": {"test_loss", "test_perplexity", "test_bits_per_byte", "train_accuracy"},
    "seq2seq": {"test_loss", "test_perplexity", "test_accuracy", "test_rouge1", "test_rouge2",
                "test_rougeL"},
    "denoising": {"test_loss"},
}


class Died(Exception):
    pass


def final_state(workdir, step):
    ckpt = checkpoint.Checkpointer(str(workdir), async_save=False, read_only=True)
    try:
        return ckpt.restore(step, None)[0]
    finally:
        ckpt.close()


def run_dying_after_first_checkpoint(config, workdir, monkeypatch):
    original = checkpoint.Checkpointer.save

    def save_then_die(self, step, state, record):
        if step > config.checkpoint_every:
            self.wait()
            raise Died
        original(self, step, state, record)

    with monkeypatch.context() as m:
        m.setattr(checkpoint.Checkpointer, "save", save_then_die)
        with pytest.raises(Died):
            run(config, str(workdir))


@pytest.mark.slow  # three short trainings per task: ~50 s each on 2 shared cores
@pytest.mark.parametrize("case", sorted(CASES))
def test_task_trains_on_8_devices_and_resumes_bit_exactly(case, tmp_path, monkeypatch):
    straight = run(CASES[case](), str(tmp_path / "straight"))
    assert EVAL_KEYS[case] <= set(straight)
    assert all(np.isfinite(straight[k]) for k in EVAL_KEYS[case])
    lines = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text()
             .splitlines()]
    assert [x["step"] for x in lines if x["split"] == "train"] == [1, 2, 3, 4]

    run_dying_after_first_checkpoint(CASES[case](), tmp_path / "killed", monkeypatch)
    resumed = run(CASES[case](), str(tmp_path / "killed"))
    a, b = final_state(tmp_path / "killed", 4), final_state(tmp_path / "straight", 4)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert resumed["test_loss"] == straight["test_loss"]


@pytest.mark.slow  # a teacher and a student run: ~40 s on 2 shared cores
def test_hidden_state_distillation_through_run_adds_the_feature_term(tmp_path):
    teacher = dict(name="text_encoder", **TINY)
    data = dict(name="synthetic_glue", batch_size=16, eval_batch_size=40, num_train=64,
                num_test=50)
    task = dict(name="sequence_classification")
    run(task_config(task, data, teacher, steps=2), str(tmp_path / "teacher"))

    def student(weight):
        c = task_config(task, data, dict(name="text_encoder", **TINY, **BINARY), steps=1)
        c.kd = dict(enabled=True, teacher_model=teacher, teacher_workdir=str(tmp_path / "teacher"),
                    task_weight=1.0, terms=[dict(name="hidden_mse", weight=weight,
                                                 student=r"blocks/\d+/hidden")])
        return c

    first = {}
    for w in (0.0, 1.0):
        wd = tmp_path / f"student{w}"
        run(student(w), str(wd))
        lines = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
        first[w] = next(x["loss"] for x in lines if x["split"] == "train")
    assert first[1.0] > first[0.0] + 1e-4  # the MSE to the teacher's block output counts
    bad = student(1.0)
    bad.kd.terms = [dict(name="hidden_mse", weight=1.0, student=r"blocks/\d+/nothing")]
    with pytest.raises(ValueError, match="no student feature matches"):
        run(bad, str(tmp_path / "bad"))
    assert not (tmp_path / "bad" / "checkpoints").exists()


@pytest.mark.slow  # ~40 s: a causal-LM student distilled from an imported Hugging Face model
def test_an_imported_hugging_face_teacher_distils_a_causal_lm_student(tmp_path):
    import pathlib

    import jax.numpy as jnp
    from flax import nnx

    from bnn_jax import data, models
    from bnn_jax.models import hub

    fixture = str(pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "hf_llama")
    student = dict(name="llama", hidden=32, intermediate=64, num_layers=1, num_heads=4)
    c = task_config(dict(name="causal_lm"),
                    dict(name="pydoc", batch_size=8, eval_batch_size=512, seq_len=16,
                         tokenizer=fixture), student, steps=1)
    c.mesh.num_devices = 1
    c.kd = dict(enabled=True, teacher_import=fixture, task_weight=0.5,
                terms=[dict(name="logit", weight=2.0, temperature=1.0),
                       dict(name="hidden_mse", weight=3.0, student=r"hidden_states(/\d+)?",
                            layer_map=[1])])
    run(c, str(tmp_path / "student"))
    lines = [json.loads(x) for x in (tmp_path / "student" / "metrics.jsonl").read_text()
             .splitlines()]
    first = next(x["loss"] for x in lines if x["split"] == "train")

    # Independent computation of step 1's loss from the same batch, init and teacher.
    ds = data.build(c.data, seed=c.seed)
    batch = ds.train_batch(0)
    s_model = models.build(student, rngs=nnx.Rngs(c.seed), **ds.spec)
    teacher = hub.load(fixture)
    ids = jnp.asarray(batch["input_ids"])
    s_logits, s_inter = nnx.capture(s_model, nnx.Intermediate)(ids)
    t_logits, t_inter = nnx.capture(teacher, nnx.Intermediate)(ids)
    s_logits, t_logits = np.asarray(s_logits, np.float64), np.asarray(t_logits, np.float64)
    m = batch["loss_mask"]
    lp_s, lp_t = [x - x.max(-1, keepdims=True) for x in (s_logits, t_logits)]
    lp_s = lp_s - np.log(np.exp(lp_s).sum(-1, keepdims=True))
    lp_t = lp_t - np.log(np.exp(lp_t).sum(-1, keepdims=True))
    nll = -np.take_along_axis(lp_s, batch["target_ids"][..., None], -1)[..., 0]
    ce = (nll * m).sum() / m.sum()
    kl = ((np.exp(lp_t) * (lp_t - lp_s)).sum(-1) * m).sum() / m.sum()
    hs = np.asarray(nnx.to_pure_dict(s_inter)["hidden_states"][0])  # the student's one layer
    ht = np.asarray(nnx.to_pure_dict(t_inter)["hidden_states"][1])  # the teacher's second
    expected = 0.5 * ce + 2.0 * kl + 3.0 * np.mean((hs - ht) ** 2)
    np.testing.assert_allclose(first, expected, rtol=1e-4)

    bad = task_config(dict(name="causal_lm"),
                      dict(name="pydoc", batch_size=8, eval_batch_size=512, seq_len=16,
                           tokenizer="byte"), student, steps=1)
    bad.kd = dict(enabled=True, teacher_import=fixture, terms=[dict(name="logit")])
    with pytest.raises(ValueError, match="logit terms need the same output shape"):
        run(bad, str(tmp_path / "bad"))
    long = task_config(dict(name="causal_lm"),
                       dict(name="pydoc", batch_size=8, eval_batch_size=512, seq_len=80,
                            tokenizer=fixture), student, steps=1)
    long.kd = dict(enabled=True, teacher_import=fixture, terms=[dict(name="logit")])
    with pytest.raises(ValueError, match=r"length 80, longer than the model's maximum "
                                         r"max_len=64"):
        run(long, str(tmp_path / "long"))


# The child trains the causal-LM case and SIGKILLs itself (no cleanup) when the loop asks for
# the second checkpoint: step 3..4 are lost and must be recomputed identically on resume.
CHILD = """
import os, signal, sys
sys.path.insert(0, {test_dir!r})
from test_tasks_train import CASES
from bnn_jax.train import checkpoint, run

original = checkpoint.Checkpointer.save

def save_then_die(self, step, state, record):
    if step > 2:
        self.wait()
        os.kill(os.getpid(), signal.SIGKILL)
    original(self, step, state, record)

checkpoint.Checkpointer.save = save_then_die
run(CASES["causal_lm"](), sys.argv[1])
"""


@pytest.mark.slow  # two causal-LM trainings and a killed child: ~90 s on 2 shared cores
def test_causal_lm_killed_with_sigkill_resumes_bit_exactly(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    script = tmp_path / "child.py"
    script.write_text(CHILD.format(test_dir=os.path.dirname(__file__)))
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, str(script), str(killed)], capture_output=True,
                          text=True, timeout=600, env={**os.environ})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert os.listdir(killed / "checkpoints") == ["2"]
    resumed = run(CASES["causal_lm"](), str(killed))
    straight = run(CASES["causal_lm"](), str(tmp_path / "straight"))
    a, b = final_state(killed, 4), final_state(tmp_path / "straight", 4)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert resumed["test_perplexity"] == straight["test_perplexity"]
    assert resumed["test_bits_per_byte"] == straight["test_bits_per_byte"]


@pytest.mark.slow  # two teacher and two student runs: ~2 min on 2 shared cores
def test_dmd_and_lrm_terms_train_through_run(tmp_path):
    cases = {
        # BiBERT: DMD over Q, K and V of every layer, plus its hidden-state loss.
        "dmd": (CASES["sequence_classification"], dict(name="text_encoder", **TINY), [
            dict(name="dmd", weight=1.0, student=rf"blocks/\d+/attn/{p}") for p in "qkv"] + [
            dict(name="hidden_state", weight=1.0, student=r"blocks/\d+/hidden")]),
        # BinaryDM: LRM on the residual blocks' outputs (PCA bases from the teacher, once).
        "lrm": (CASES["denoising"], dict(name="conv_denoiser", width=8, depth=1, emb_dim=16), [
            dict(name="lrm", weight=1.0, student=r"blocks/\d+/hidden")]),
    }
    for name, (make, teacher, terms) in cases.items():
        c = make()
        c.model, c.total_steps = teacher, 1
        run(c, str(tmp_path / f"{name}_teacher"))
        c = make()
        c.total_steps = 2
        c.kd = dict(enabled=True, teacher_model=teacher,
                    teacher_workdir=str(tmp_path / f"{name}_teacher"), task_weight=0.0,
                    terms=terms)
        result = run(c, str(tmp_path / f"{name}_student"))
        lines = [json.loads(x) for x in (tmp_path / f"{name}_student" / "metrics.jsonl")
                 .read_text().splitlines()]
        first = next(x["loss"] for x in lines if x["split"] == "train")
        # task weight 0: the loss is the distillation terms alone, positive for a student that
        # differs from its teacher (and 0 if a term had silently compared nothing)
        assert first > 1e-6 and np.isfinite(result["test_loss"])

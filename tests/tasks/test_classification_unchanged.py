"""The task-generic loop trains image classification exactly as the loop before tasks did.

The expected numbers were recorded from the loop as it was before tasks existed (commit
34b8c11, the same configs, seed 0, one CPU device) and are hard-coded here. The same seed gives
the same metrics bit for bit on one machine, but XLA's CPU matmuls sum in an order that depends on
the processor (its vector width and cache sizes), and a few steps of sign() amplify the last bits;
so the comparison allows 1 % on losses and about one sample on accuracies, far below what a change
to the loss, the schedule or the data order moves.
"""

import importlib.util
import pathlib

import pytest

from bnn_jax.train import config as config_lib, run

ROOT = pathlib.Path(__file__).resolve().parents[2]
KEYS = ("test_loss", "test_top1", "test_top5", "train_loss", "train_accuracy")


def tiny(model, steps, label_smoothing=0.0):
    c = config_lib.defaults()
    c.total_steps, c.log_every, c.checkpoint_every = steps, 1, 100
    c.async_checkpoint, c.tensorboard = False, False
    c.mesh.num_devices = 1
    c.data = dict(name="digits", batch_size=32, eval_batch_size=120)
    c.model = model
    c.loss.label_smoothing = label_smoothing
    c.optimizer = dict(name="adam", learning_rate=1e-2, schedule="constant")
    return c


def metrics(result):
    return {k: result[k] for k in KEYS}


def assert_close(got, want, train_batch=32):
    """Losses within 1 %, accuracies within one train example or 1 % of the 360 test ones."""
    assert got.keys() == want.keys()
    for k in KEYS:
        if "loss" in k:
            tol = 0.01 * abs(want[k])
        else:
            tol = 1.01 / train_batch if k.startswith("train") else 0.01
        assert abs(got[k] - want[k]) <= tol, (k, got[k], want[k])


def test_binary_mlp_with_label_smoothing_gives_the_pre_task_metrics(tmp_path):
    bnn = dict(name="mlp", hidden=(32, 32), input_quantizer="ste_sign",
               kernel_quantizer="ste_sign", kernel_constraint="weight_clip")
    got = metrics(run(tiny(bnn, 6, 0.1), str(tmp_path)))
    assert_close(got, {"test_loss": 1.483532428741455, "test_top1": 0.5888888835906982,
                   "test_top5": 0.9611111283302307, "train_loss": 1.8061535358428955,
                   "train_accuracy": 0.5})


def test_logit_distillation_gives_the_pre_task_metrics(tmp_path):
    teacher = dict(name="mlp", hidden=(32,))
    run(tiny(teacher, 5), str(tmp_path / "teacher"))
    c = tiny(dict(name="mlp", hidden=(32, 16), input_quantizer="ste_sign",
                  kernel_quantizer="ste_sign"), 3)
    c.kd = dict(enabled=True, teacher_model=teacher, teacher_workdir=str(tmp_path / "teacher"),
                kind="logit", weight=0.5, temperature=2.0)
    got = metrics(run(c, str(tmp_path / "student")))
    assert_close(got, {"test_loss": 2.359844207763672, "test_top1": 0.24166665971279144,
                   "test_top5": 0.7583333253860474, "train_loss": 1.3366448879241943,
                   "train_accuracy": 0.21875})


@pytest.mark.slow  # the main job's CNN with BatchNorm, 8 steps: ~10 s on shared cores
def test_digits_bnn_cnn_gives_the_pre_task_metrics(tmp_path):
    spec = importlib.util.spec_from_file_location("c", ROOT / "configs" / "digits_bnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("quick,steps=8")
    c.tensorboard, c.mesh.num_devices, c.async_checkpoint = False, 1, False
    got = metrics(run(c, str(tmp_path)))
    assert_close(got, {"test_loss": 2.071183681488037, "test_top1": 0.21111111342906952,
                   "test_top5": 0.7972221970558167, "train_loss": 2.2141740322113037,
                   "train_accuracy": 0.23828125})

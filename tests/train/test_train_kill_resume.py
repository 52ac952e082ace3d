"""Kill-and-resume exactness: SIGKILL after a checkpoint, resume, and match an unkilled run bit
for bit (params, BatchNorm statistics, optimizer state, step, RNG)."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np

from bnn_jax.train import checkpoint, config as config_lib, run

STEPS, EVERY = 12, 4


def small_config():
    c = config_lib.defaults()
    c.total_steps, c.log_every, c.checkpoint_every = STEPS, 2, EVERY
    c.tensorboard = False
    c.data = dict(name="digits", batch_size=32, eval_batch_size=120)
    c.model = dict(name="mlp", hidden=(32, 32), input_quantizer="approx_sign",
                   kernel_quantizer="ste_sign", kernel_constraint="weight_clip")
    c.optimizer = dict(name="adam", learning_rate=1e-2, schedule="warmup_cosine", warmup_steps=3)
    c.mesh.num_devices = 2  # a data-parallel mesh: resumption must restore shardings too
    return c


# The child trains with the same config and kills itself with SIGKILL (no cleanup, no atexit)
# when the loop asks for the checkpoint after the first one, i.e. EVERY steps after a finished
# checkpoint: steps 5..8 are lost and must be recomputed identically on resume.
CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {test_dir!r})
    from test_train_kill_resume import small_config
    from bnn_jax.train import checkpoint, run

    original = checkpoint.Checkpointer.save

    def save_then_die(self, step, state, record):
        if step == 2 * {every}:
            self.wait()  # the first checkpoint is on disk; now die mid-run
            os.kill(os.getpid(), signal.SIGKILL)
        original(self, step, state, record)

    checkpoint.Checkpointer.save = save_then_die
    run(small_config(), sys.argv[1])
""")


def final_state(workdir):
    ckpt = checkpoint.Checkpointer(str(workdir), async_save=False, read_only=True)
    try:
        return ckpt.restore(STEPS, None)[0]
    finally:
        ckpt.close()


def test_killed_and_resumed_run_equals_the_uninterrupted_run(tmp_path):
    killed = tmp_path / "killed"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(test_dir=os.path.dirname(__file__), every=EVERY))
    proc = subprocess.run([sys.executable, str(script), str(killed)], capture_output=True,
                          text=True, timeout=300, env={**os.environ})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert sorted(os.listdir(killed / "checkpoints")) == [str(EVERY)]

    resumed = run(small_config(), str(killed))
    straight = run(small_config(), str(tmp_path / "straight"))

    a, b = final_state(killed), final_state(tmp_path / "straight")
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert resumed["test_loss"] == straight["test_loss"]
    # metrics.jsonl holds each step once (the replayed steps 5..8 replace the lost run's lines)
    # with the uninterrupted run's values.
    logged = [train_log(killed), train_log(tmp_path / "straight")]
    assert [s for s, _ in logged[0]] == list(range(2, STEPS + 1, 2))
    assert logged[0] == logged[1]


def train_log(workdir):
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(x["step"], x["loss"]) for x in lines if x["split"] == "train"]

"""Weight EMA (``config.ema``) and step hooks (``config.hooks``) in the training loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import models
from bnn_jax.train import checkpoint, config as config_lib, hooks, run
from bnn_jax.train.loop import ConfigError


class Tally(nnx.Module):
    """A linear classifier with one non-parameter variable that hooks write."""

    def __init__(self, *, num_classes, input_shape, rngs):
        self.dense = nnx.Linear(int(np.prod(input_shape)), num_classes, rngs=rngs)
        self.seen = nnx.Variable(jnp.zeros(()))

    def __call__(self, x):
        return self.dense(x.reshape(x.shape[0], -1))


models.register("tally_for_hook_tests", Tally)
CALLS = []


def record_step(model, batch, step, *, scale=1.0):
    CALLS.append((step, int(batch["label"].shape[0])))
    model.seen[...] = jnp.asarray(scale * step, jnp.float32)


record_step.validate = lambda scale=1.0: None


def move_param(model, batch, step):
    model.dense.bias[...] = model.dense.bias[...] + 1.0


def tiny(steps, **over):
    c = config_lib.defaults()
    c.total_steps, c.log_every, c.checkpoint_every = steps, 1, 1
    c.keep_checkpoints = steps
    c.async_checkpoint, c.tensorboard = False, False
    c.mesh.num_devices = 1
    c.data = dict(name="digits", batch_size=16, eval_batch_size=120)
    c.model = dict(name="tally_for_hook_tests")
    c.optimizer = dict(name="sgd", learning_rate=0.5, schedule="constant")
    for k, v in over.items():
        c[k] = v
    return c


def states(workdir, steps):
    ckpt = checkpoint.Checkpointer(str(workdir), async_save=False, read_only=True)
    try:
        return {s: ckpt.restore(s, None)[0] for s in steps}
    finally:
        ckpt.close()


def test_ema_follows_its_recursion_and_is_what_evaluation_reads(tmp_path):
    decay = 0.75
    with_ema = run(tiny(3, ema=dict(decay=decay, eval=True)), str(tmp_path / "a"))
    raw = run(tiny(3, ema=dict(decay=decay, eval=False)), str(tmp_path / "b"))
    got = states(tmp_path / "a", (1, 2, 3))
    for s in (2, 3):  # ema_s = d * ema_{s-1} + (1 - d) * params_s, leaf by leaf
        for e0, e1, p1 in zip(jax.tree.leaves(got[s - 1]["ema"]), jax.tree.leaves(got[s]["ema"]),
                              jax.tree.leaves(got[s]["params"])):
            np.testing.assert_allclose(np.asarray(e1),
                                       decay * np.asarray(e0) + (1 - decay) * np.asarray(p1),
                                       rtol=1e-6, atol=1e-7)
    # Same training either way; only the evaluated weights differ.
    assert with_ema["train_loss"] == raw["train_loss"]
    assert with_ema["test_loss"] != raw["test_loss"]
    like = {"params": got[3]["params"], "rest": got[3]["rest"]}
    ema = checkpoint.restore_params(str(tmp_path / "a"), like, ema=True)
    for a, b in zip(jax.tree.leaves(ema["params"]), jax.tree.leaves(got[3]["ema"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="kept no weight EMA"):
        run_dir = tmp_path / "c"
        run(tiny(1), str(run_dir))
        checkpoint.restore_params(str(run_dir), like, ema=True)


def test_hooks_run_on_schedule_and_their_state_is_kept(tmp_path):
    CALLS.clear()
    hooks.register("record_step_for_tests")(record_step)
    c = tiny(5, hooks=[dict(name="record_step_for_tests", every=2, at_start=True, scale=10.0)])
    run(c, str(tmp_path))
    assert [s for s, _ in CALLS] == [0, 2, 4]
    assert all(n == 16 for _, n in CALLS)  # the train batch of that step
    got = states(tmp_path, (1, 2, 5))
    assert float(got[1]["rest"]["seen"]) == 0.0    # written before step 1
    assert float(got[2]["rest"]["seen"]) == 20.0   # after step 2, kept in the train state
    assert float(got[5]["rest"]["seen"]) == 40.0


def test_a_hook_that_changes_a_parameter_is_an_error(tmp_path):
    c = tiny(2, hooks=[dict(name=f"{__name__}:move_param", every=1)])
    with pytest.raises(RuntimeError, match=r"changed parameters \['dense/bias'\]"):
        run(c, str(tmp_path))


@pytest.mark.parametrize("spec, message", [
    (dict(name="no_such_hook", every=1), r"unknown hook 'no_such_hook'; valid hooks: \["),
    (dict(name=f"{__name__}:record_step", every=0), "'every' must be a positive integer"),
    (dict(every=3), "has no 'name'"),
    (dict(name=f"{__name__}:record_step", every=1, bogus=2), "unexpected keyword"),
    (dict(name=f"{__name__}:nothing_here", every=1), "has no function 'nothing_here'"),
])
def test_bad_hooks_are_refused_before_anything_is_built(tmp_path, spec, message):
    with pytest.raises(ConfigError, match=message):
        run(tiny(1, hooks=[spec]), str(tmp_path / "w"))
    assert not (tmp_path / "w" / "config.json").exists()


@pytest.mark.parametrize("ema, message", [
    (dict(decay=1.0), r"config.ema.decay must be a finite number >= 0 and < 1"),
    (dict(decay=0.9, eval="yes"), "config.ema.eval must be True or False"),
    (dict(decay=0.9, every=3), r"unknown field\(s\) \['every'\] in config.ema"),
])
def test_bad_ema_settings_are_refused(ema, message):
    with pytest.raises(ValueError, match=message):
        config_lib.validate(tiny(1, ema=ema))


class TallyPlus(Tally):
    """Tally with one more non-parameter variable (state a later stage adds)."""

    def __init__(self, *, num_classes, input_shape, rngs):
        super().__init__(num_classes=num_classes, input_shape=input_shape, rngs=rngs)
        self.extra = nnx.Variable(jnp.full((3,), 7.0))


models.register("tally_plus_for_hook_tests", TallyPlus)


def test_init_from_keeps_fresh_state_the_earlier_stage_lacked(tmp_path, capsys):
    run(tiny(1), str(tmp_path / "stage1"))
    c = tiny(1, init_from=str(tmp_path / "stage1"))
    c.model = dict(name="tally_plus_for_hook_tests")
    c.optimizer.learning_rate = 0.0  # the loaded weights stay as loaded
    run(c, str(tmp_path / "stage2"))
    assert "kept at its initial value: extra" in capsys.readouterr().out
    one, two = states(tmp_path / "stage1", (1,))[1], states(tmp_path / "stage2", (1,))[1]
    np.testing.assert_array_equal(np.asarray(two["rest"]["extra"]), np.full((3,), 7.0))
    np.testing.assert_array_equal(np.asarray(two["params"]["dense"]["kernel"]),
                                  np.asarray(one["params"]["dense"]["kernel"]))

"""Reading another run's checkpoints (teacher, first stage) leaves that run's directory as it is."""

import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from bnn_jax.train import checkpoint


def _state(step, value):
    return {"params": {"w": jnp.full((3,), value, jnp.float32)}, "rest": {},
            "step": jnp.int32(step)}


# orbax's reader leaves an asyncio callback behind when a damaged file fails to load.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_restore_params_reads_without_touching_the_other_run(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
    for step, value in ((1, 0.25), (2, -0.5)):
        ckpt.save(step, _state(step, value), {"data_position": step})
    ckpt.close()
    ckpts = tmp_path / "checkpoints"
    # The other run is still writing step 3 ...
    shutil.copytree(ckpts / "2", ckpts / "3.orbax-checkpoint-tmp-7")
    # ... and its step 2 is damaged (it will set it aside itself when it resumes).
    for path in (ckpts / "2" / "state").rglob("*"):
        if path.is_file() and "metadata" not in path.name.lower():
            path.write_bytes(b"\x00garbage" * 3)
    before = sorted(os.listdir(ckpts))

    got = checkpoint.restore_params(str(tmp_path), {"params": {"w": np.zeros(3)}, "rest": {}})
    np.testing.assert_array_equal(got["params"]["w"], [0.25] * 3)  # the newest readable one
    assert sorted(os.listdir(ckpts)) == before  # nothing deleted, renamed or created

    with pytest.raises(ValueError, match="no checkpoint found under"):
        checkpoint.restore_params(str(tmp_path / "none"), {"params": {}, "rest": {}})
    assert not (tmp_path / "none").exists()

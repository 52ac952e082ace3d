"""Reading another run's checkpoints (teacher, first stage): the other run's directory is left as
it is, and a checkpoint written on another device mesh loads."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

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


READ_ON_ONE_DEVICE = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import numpy as np
    from bnn_jax.train import checkpoint

    got = checkpoint.restore_params(sys.argv[1], {"params": {"w": np.zeros(8)}, "rest": {}})
    print("W", json.dumps(np.asarray(got["params"]["w"]).tolist()))
""")


def test_restore_params_loads_a_checkpoint_written_on_another_mesh(tmp_path):
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    split = NamedSharding(Mesh(np.array(jax.devices()), ("fsdp",)), P("fsdp"))  # 8 devices
    w = jax.device_put(jnp.arange(8, dtype=jnp.float32) - 3.5, split)
    ckpt = checkpoint.Checkpointer(str(tmp_path / "teacher"), async_save=False)
    ckpt.save(5, {"params": {"w": w}, "rest": {}, "step": jnp.int32(5)}, {"data_position": 5})
    ckpt.close()
    script = tmp_path / "read.py"
    script.write_text(READ_ON_ONE_DEVICE)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "teacher")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("W "))
    np.testing.assert_array_equal(json.loads(line[2:]), np.arange(8) - 3.5)

"""Two processes on localhost (jax.distributed, 4 simulated CPU devices each) train together and
agree with each other and with one process holding all 8 devices."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bnn_jax.train import config as config_lib, run


def small_config():
    c = config_lib.defaults()
    c.total_steps, c.log_every, c.checkpoint_every = 3, 1, 2
    c.tensorboard = False
    c.data = dict(name="digits", batch_size=32, eval_batch_size=120)
    c.model = dict(name="mlp", hidden=(32, 32))
    c.optimizer = dict(name="momentum", learning_rate=0.1)
    c.partition_rules = [(r"kernel", "fsdp"), (".*", "replicate")]
    c.mesh = dict(data=4, fsdp=2, model=1)
    return c


CHILD = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, {test_dir!r})
    from test_train_multiprocess import small_config
    from bnn_jax.train import run

    c = small_config()
    c.distributed = dict(enabled=True, coordinator_address={address!r}, num_processes=2,
                         process_id=int(sys.argv[1]))
    result = run(c, {workdir!r})
    import jax
    print("RESULT", json.dumps(dict(result, processes=jax.process_count(),
                                    devices=jax.device_count())), flush=True)
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_together_and_agree(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(test_dir=os.path.dirname(__file__),
                                   address=f"localhost:{_free_port()}",
                                   workdir=str(tmp_path / "multi")))
    procs = [subprocess.Popen([sys.executable, str(script), str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=400) for p in procs]
    finally:  # a process that failed leaves its peer waiting for the coordinator: end it
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        line = next(x for x in out.splitlines() if x.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT "):]))
    assert [(r["processes"], r["devices"]) for r in results] == [(2, 8), (2, 8)]
    assert results[0]["test_loss"] == results[1]["test_loss"]
    assert results[0]["train_loss"] == results[1]["train_loss"]
    single = run(small_config(), str(tmp_path / "single"))  # this process: 8 local devices
    np.testing.assert_allclose(results[0]["test_loss"], single["test_loss"], rtol=1e-5)
    np.testing.assert_allclose(results[0]["train_loss"], single["train_loss"], rtol=1e-5)
    assert sorted(os.listdir(tmp_path / "multi" / "checkpoints")) == ["2", "3"]

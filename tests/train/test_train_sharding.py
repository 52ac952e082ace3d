"""Mesh and partition rules; sharded training on 8 simulated CPU devices equals one device."""

import json

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from bnn_jax.train import config as config_lib, run, sharding


def test_mesh_sizes_fill_the_minus_one_axis_and_reject_bad_shapes():
    assert jax.device_count() == 8
    m = sharding.make_mesh({"data": -1, "fsdp": 2, "model": 1})
    assert dict(m.shape) == {"data": 4, "fsdp": 2, "model": 1}
    assert dict(sharding.make_mesh({"data": 1, "num_devices": 1}).shape)["data"] == 1
    with pytest.raises(ValueError, match="needs 6 devices, 8 are available"):
        sharding.make_mesh({"data": 3, "fsdp": 2, "model": 1})
    with pytest.raises(ValueError, match=r"unknown mesh axes \['tensor'\]; valid axes"):
        sharding.make_mesh({"tensor": 2})


def test_partition_rules_first_match_wins_and_indivisible_dims_stay_whole():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "model": 2})
    tree = {"stem": {"kernel": np.zeros((64, 32)), "bias": np.zeros(32)},
            "head": {"kernel": np.zeros((32, 10)), "bias": np.zeros(10)},
            "odd": {"kernel": np.zeros((3, 5))}}
    rules = [(r"head/kernel", (None, "model")), (r"kernel", ("fsdp", "model")),
             (r".*", "replicate")]
    specs = sharding.partition_specs(tree, rules, mesh)
    assert specs["head"]["kernel"] == P(None, "model")
    assert specs["stem"]["kernel"] == P("fsdp", "model")
    assert specs["stem"]["bias"] == P()
    assert specs["odd"]["kernel"] == P(None, None)  # 3 and 5 are not divisible by 2
    auto = sharding.partition_specs(tree, [(".*", "fsdp")], mesh)
    assert auto["stem"]["kernel"] == P("fsdp", None)  # the largest divisible dimension
    with pytest.raises(ValueError, match="names mesh axis 'tensor'"):
        sharding.partition_specs(tree, [(".*", ("tensor",))], mesh)
    for bad in ("replicated", None):
        with pytest.raises(ValueError, match=r"has spec .*; valid specs: 'replicate', 'fsdp'"):
            sharding.partition_specs(tree, [(".*", bad)], mesh)


def float_config(mesh, rules):
    c = config_lib.defaults()
    c.total_steps, c.log_every, c.checkpoint_every = 4, 1, 100
    c.tensorboard, c.async_checkpoint = False, False
    c.data = dict(name="digits", batch_size=32, eval_batch_size=120)
    # A float model: a binary one could flip a sign on a last-bit difference of a reduction.
    c.model = dict(name="mlp", hidden=(32, 32))
    # SGD is linear in the gradient; Adam's first step is ~sign(g), which turns a last-bit
    # difference of a tiny gradient into a full step.
    c.optimizer = dict(name="momentum", learning_rate=0.1, weight_decay=1e-4)
    c.mesh = mesh
    c.partition_rules = rules
    return c


def losses(workdir):
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return np.array([x["loss"] for x in lines if x["split"] == "train"])


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    wd = tmp_path_factory.mktemp("one")
    return run(float_config({"num_devices": 1}, [(".*", "replicate")]), str(wd)), losses(wd)


@pytest.mark.parametrize("mesh,rules", [
    ({"data": 8, "fsdp": 1, "model": 1}, [(".*", "replicate")]),
    ({"data": 2, "fsdp": 2, "model": 2},
     [(r"layers/\d+/kernel", ("fsdp", "model")), (r"kernel", "fsdp"), (".*", "replicate")]),
], ids=["data_parallel", "fsdp_and_model"])
def test_sharded_training_matches_one_device(tmp_path, one_device, mesh, rules):
    one, l1 = one_device
    many = run(float_config(mesh, rules), str(tmp_path / "many"))
    l8 = losses(tmp_path / "many")
    assert len(l1) == 4 and l1[-1] < l1[0]
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    np.testing.assert_allclose(many["test_loss"], one["test_loss"], rtol=1e-4)

"""PVTv2 by name: parameter counts against the reference definitions (whai362/PVT
classification/pvt_v2.py), counted here by hand; the EcoFormer recipe trains through train.run."""

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import models
from bnn_jax.nn.ecoformer import EcoFormerAttention
from bnn_jax.train import checkpoint, config as config_lib, run

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"
# pvt_v2.py: pvt_v2_b0/b1/b2 (mlp ratios 8-8-4-4, heads 1-2-5-8, sr 8-4-2-1, qkv_bias=True).
REFERENCE = {"pvt_v2_b0": ((32, 64, 160, 256), (2, 2, 2, 2)),
             "pvt_v2_b1": ((64, 128, 320, 512), (2, 2, 2, 2)),
             "pvt_v2_b2": ((64, 128, 320, 512), (3, 4, 6, 3))}


def reference_count(dims, depths, attention="sra", classes=1000, cin=3):
    """Parameters of PyramidVisionTransformerV2, layer by layer as the reference builds them."""
    total, sr = 0, (8, 4, 2, 1)
    for i, (c, depth) in enumerate(zip(dims, depths)):
        k = 7 if i == 0 else 3
        total += k * k * cin * c + c + 2 * c          # OverlapPatchEmbed: proj conv + norm
        hidden = c * (8 if i < 2 else 4)
        for _ in range(depth):
            total += 2 * 2 * c                        # norm1, norm2
            if attention == "ecoformer" and i < 3:
                total += 3 * (c * c + c)              # to_qk, to_v, proj
            else:
                total += (c * c + c) + (2 * c * c + 2 * c) + (c * c + c)  # q, kv, proj
                r = sr[i] if attention == "sra" else 1
                if r > 1:
                    total += r * r * c * c + c + 2 * c  # sr conv + norm
            total += c * hidden + hidden + 9 * hidden + hidden + hidden * c + c  # fc1 dw fc2
        total += 2 * c                                # stage norm
        cin = c
    return total + dims[-1] * classes + classes       # head


def count(name, **fields):
    m = nnx.eval_shape(lambda: models.build(dict(name=name, **fields), num_classes=1000,
                                            input_shape=(224, 224, 3), rngs=nnx.Rngs(0)))
    return sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))


def test_parameter_counts_match_the_reference():
    got = {name: count(name) for name in REFERENCE}
    for name, (dims, depths) in REFERENCE.items():
        assert got[name] == reference_count(dims, depths), name
    # The PVT README: 3.7M, 14.0M, 25.4M (get_flops.py prints 25.36 M for B2).
    assert [round(got[n] / 1e6, 1) for n in REFERENCE] == [3.7, 14.0, 25.4]
    assert round(got["pvt_v2_b2"] / 1e6, 2) == 25.36
    dims, depths = REFERENCE["pvt_v2_b0"]
    for attention in ("msa", "ecoformer"):
        assert count("pvt_v2_b0", attention=attention) == reference_count(dims, depths,
                                                                          attention)


QUICK = dict(embed_dims=(8, 16, 16, 16), num_heads=(1, 2, 2, 2), mlp_ratios=(2, 2, 2, 2),
             depths=(1, 1, 1, 1), first_patch=3, first_stride=1)


def test_quick_ecoformer_pvt_builds_by_name_and_hashes_stages_1_to_3():
    def build():
        return models.build(dict(name="pvt_v2_b1", attention="ecoformer",
                                 ecoformer=dict(num_bits=4, num_anchors=4, topk=2), **QUICK),
                            num_classes=10, input_shape=(8, 8, 1), rngs=nnx.Rngs(0))

    m = nnx.eval_shape(build)
    hashed = [p for p, mod in nnx.iter_modules(m) if isinstance(mod, EcoFormerAttention)]
    assert [p[1] for p in hashed] == [0, 1, 2]  # stages/<i>/...: the last stage is softmax
    assert hashed[0] == ("stages", 0, 0, "attention", "attn")
    assert m.stages[0][0].attention.attn.num_bits == 4
    out = jax.eval_shape(lambda m, x: m(x), m, jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("fields, message", [
    (dict(attention="linear"), r"unknown attention 'linear'; valid: \['sra', 'msa'"),
    (dict(attention="ecoformer", ecoformer=dict(bits=4)), r"unknown ecoformer field\(s\) "
                                                          r"\['bits'\]; valid: \["),
    (dict(ecoformer=dict(num_bits=4)), "attention is 'sra'"),
    (dict(num_heads=(3, 2, 5, 8)), "must divide embed_dims"),
    (dict(first_stride=3, first_patch=3), "first_stride < first_patch"),
    (dict(depths=(2, 2, 2)), "depths must be 4 integers"),
])
def test_bad_fields_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        models.build(dict(name="pvt_v2_b0", **fields), num_classes=10, input_shape=(8, 8, 1),
                     rngs=nnx.Rngs(0))


class TinyHashNet(nnx.Module):
    """Image rows as tokens through one EcoFormer attention: the refresh schedule's test bed."""

    def __init__(self, *, num_classes, input_shape, rngs):
        w = input_shape[1] * input_shape[2]
        self.attn = EcoFormerAttention(2, w, rngs=rngs, num_bits=4, num_anchors=4, topk=2,
                                       ksh_iterations=2)
        self.head = nnx.Linear(w, num_classes, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(x.shape[0], x.shape[1], -1)
        return self.head(jnp.mean(x + self.attn(x), axis=1))


models.register("tiny_hash_net_for_tests", TinyHashNet)


@pytest.mark.slow
def test_the_hook_refreshes_on_the_schedule_through_the_loop(tmp_path):
    c = config_lib.defaults()
    c.total_steps, c.log_every, c.checkpoint_every, c.keep_checkpoints = 5, 5, 1, 5
    c.async_checkpoint, c.tensorboard, c.mesh.num_devices = False, False, 1
    c.data = dict(name="digits", batch_size=8, eval_batch_size=360)
    c.model = dict(name="tiny_hash_net_for_tests")
    c.hooks = [dict(name="ecoformer_refresh", every=2, at_start=True, seed=5)]
    run(c, str(tmp_path))
    ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False, read_only=True)
    try:
        got = {s: ckpt.restore(s, None)[0] for s in range(1, 6)}
    finally:
        ckpt.close()
    # Fitted before step 1, then after steps 2 and 4 (step % every == 0).
    assert [int(got[s]["rest"]["attn"]["refreshes"]) for s in range(1, 6)] == [1, 2, 2, 3, 3]
    anchors = [np.asarray(got[s]["rest"]["attn"]["anchors"]) for s in range(1, 6)]
    assert np.array_equal(anchors[1], anchors[2]) and np.array_equal(anchors[3], anchors[4])
    assert not np.array_equal(anchors[0], anchors[1])
    assert np.abs(anchors[0]).sum() > 0  # no longer the zeros of an unfitted layer


def _recipe(arg):
    spec = importlib.util.spec_from_file_location("ecoformer_config", CONFIGS / "ecoformer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_recipe_arguments():
    full = _recipe("stage=ecoformer,model=pvt_v2_b2,msa=runs/m")
    assert full.model.attention == "ecoformer" and full.init_from == "runs/m"
    assert dict(full.model.ecoformer) == dict(num_bits=16, num_anchors=25, topk=10)
    assert full.optimizer.learning_rate == pytest.approx(2.5e-5)
    epoch = -(-1_281_167 // 256)
    assert full.total_steps == 30 * epoch
    assert [dict(h) for h in full.hooks] == [dict(name="ecoformer_refresh", every=300 * epoch,
                                                 at_start=True, seed=0, input_key="image")]
    msa = _recipe("stage=msa,pvt=runs/p")
    assert msa.model.attention == "msa" and msa.total_steps == 100 * epoch and not msa.hooks
    config_lib.validate(full)
    with pytest.raises(ValueError, match="give msa=DIR"):
        _recipe("stage=ecoformer")
    with pytest.raises(ValueError, match="stage must be one of"):
        _recipe("stage=sra,quick")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["msa", "ecoformer"])
def test_quick_recipe_trains(stage, tmp_path):
    c = _recipe(f"quick,stage={stage}")
    c.total_steps, c.checkpoint_every, c.tensorboard = 12, 12, False
    c.mesh.num_devices = 1
    config_lib.validate(c)
    run(c, str(tmp_path))
    losses = [json.loads(s)["loss"] for s in (tmp_path / "metrics.jsonl").read_text().split("\n")
              if s and json.loads(s)["split"] == "train"]
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1

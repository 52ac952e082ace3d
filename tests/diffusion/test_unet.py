"""The U-Net's BinaryDM placement, its bits per weight, and the progressive switches."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import diffusion, models
from bnn_jax.analysis import cost
from bnn_jax.models import unet

ACT8 = dict(name="binarydm_act", bits=8)
BINARYDM = dict(kernel_quantizer="binarydm_lmb1", outer_kernel_quantizer="binarydm_lmb",
                input_quantizer=ACT8, attention_quantizer=ACT8)
TINY = dict(name="unet", model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
            attention_resolutions=(2,), num_head_channels=8)


def build(**kw):
    return models.build({**TINY, **kw}, rngs=nnx.Rngs(0), input_shape=(8, 8, 1),
                        num_classes=10)


@pytest.fixture(scope="module")
def binarydm():
    """The tiny BinaryDM U-Net (outer group 0 only), abstract: building a concrete one compiles
    each parameter initializer, and the placement needs none of the values."""
    return nnx.eval_shape(lambda: build(outer_groups=(0,), **BINARYDM))


def expected_group(path, levels=2, nrb=1):
    """The reference's grouping (openaimodel_ours.py l. 723-735) re-stated on module paths."""
    m = re.match(r"(input_blocks|output_blocks)/(\d+)/", path)
    if path.startswith("middle/"):
        return levels
    i = int(m.group(2))
    return i // (nrb + 1) if m.group(1) == "input_blocks" else levels - 1 - i // (nrb + 1)


def test_placement_walk(binarydm):
    m = binarydm
    layers = unet.switched_layers(m)
    # Tiny net: in 1 res + 1 down + 1 res(+attn); middle 2 res + attn; out 2+2 res, attn, up.
    assert len(layers) == 39
    for path, layer in layers:
        g = expected_group(path)
        assert layer.group == g, path
        want = "binarydm_lmb" if g == 0 else "binarydm_lmb1"
        assert layer.kernel_quantizer.name == want, path
        assert layer.input_quantizer.name == "binarydm_act", path
    # The reference's first three (timestep MLP, stem) and last layer stay full precision.
    for path, node in nnx.iter_graph(m):
        p = "/".join(map(str, path))
        if p in ("time1", "time2", "input_blocks/0/layers/0", "out"):
            assert type(node) in (nnx.Linear, nnx.Conv), p
    attn = [n for _, n in nnx.iter_graph(m) if isinstance(n, unet.SwitchedQuantize)]
    assert len(attn) == 4 * 4  # q, k, softmax, v in each of the 4 attention blocks
    assert all(a.quantizer.name == "binarydm_act" for a in attn)


def test_bits_per_weight_tiny_exact(binarydm):
    m = binarydm
    c = cost.analyze(m, (8, 8, 1)).totals()
    n = {1: 0, 2: 0}
    for _, layer in unet.switched_layers(m):
        n[2 if layer.group == 0 else 1] += int(np.prod(layer.kernel.shape))
    assert c["quantized_bits_per_weight"] == pytest.approx((2 * n[2] + n[1]) / (n[1] + n[2]))


@pytest.mark.slow
def test_bits_per_weight_paper_model_about_1_1():
    # LSUN-Bedrooms LDM-4 U-Net (bedrooms.yaml), traced abstractly by the analysis CLI's path.
    cfg = dict(name="unet", model_channels=224, channel_mult=(1, 2, 3, 4), num_res_blocks=2,
               attention_resolutions=(8, 4, 2), num_head_channels=32, **BINARYDM)
    m = nnx.eval_shape(lambda: models.build(cfg, rngs=nnx.Rngs(0), input_shape=(64, 64, 3),
                                            num_classes=1))
    bpw = cost.analyze(m, (64, 64, 3)).totals()["quantized_bits_per_weight"]
    assert 1.05 < bpw < 1.2, bpw


def test_progressive_switches_middle_outward(binarydm):
    m = binarydm  # 2 levels + middle = 3 groups
    for step in range(5):
        unet.set_progress(m, step)
        for path, layer in unet.switched_layers(m):
            # group 2 (middle) at step 0, group 1 at step 1, group 0 at step 2
            assert bool(layer.binary[...]) == (step >= 2 - layer.group), (step, path)
        acts = [bool(n.act[...]) for _, n in nnx.iter_graph(m)
                if isinstance(n, unet.SwitchedQuantize)]
        assert acts == [step >= 3] * len(acts)


def test_switches_off_is_the_float_network_and_binarized_samples():
    # One level (no down/up path) keeps the concrete build small.
    one = dict(channel_mult=(1,), attention_resolutions=(1,))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    t = jnp.array([3, 70])
    fp = build(**one)
    bm = build(**one, **BINARYDM)  # outer groups 0 and 1
    # Zero-initialized output convs would hide differences: give every parameter a value.
    for model in (fp, bm):
        params = nnx.state(model, nnx.Param)
        leaves = jax.tree.leaves(params)
        keys = jax.random.split(jax.random.key(2), len(leaves))
        nnx.update(model, jax.tree.unflatten(jax.tree.structure(params), [
            0.3 * jax.random.normal(k, v.shape) for k, v in zip(keys, leaves)]))
    # Same kernels in both (the sigma arrays of bm aside): copy fp's into bm.
    nnx.update(bm, nnx.state(fp, nnx.Param))
    for _, layer in unet.switched_layers(bm):
        layer.binary[...] = jnp.asarray(False)
    for _, n in nnx.iter_graph(bm):
        if isinstance(n, unet.SwitchedQuantize):
            n.act[...] = jnp.asarray(False)
    fwd = nnx.jit(lambda m, x, t: m(x, t))
    np.testing.assert_allclose(fwd(bm, x, t), fwd(fp, x, t), rtol=1e-5, atol=1e-5)
    unet.set_progress(bm, 10)
    assert float(jnp.abs(fwd(bm, x, t) - fwd(fp, x, t)).max()) > 1e-2
    # The sampler's scan runs the binarized, activation-quantized network (a pure forward).
    abar = diffusion.task_abar(dict(name="denoising", num_timesteps=20))
    a = diffusion.sample(bm, (2, 8, 8, 1), jax.random.key(0), abar=abar, steps=3)
    assert np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, diffusion.sample(bm, (2, 8, 8, 1), jax.random.key(0),
                                                      abar=abar, steps=3))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="not divisible"):
        models.build({**TINY, "channel_mult": (1, 2, 2, 2)}, rngs=nnx.Rngs(0),
                     input_shape=(6, 6, 1), num_classes=10)
    with pytest.raises(ValueError, match="outer_groups"):
        build(outer_groups=(7,))

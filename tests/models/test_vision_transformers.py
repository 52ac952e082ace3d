"""ViT / DeiT / Swin: parameter counts against timm's, Hugging Face import parity on tiny
fixtures (tests/fixtures/make_hf_vit.py), the attention choices, and bad fields."""

import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from bnn_jax import models
from bnn_jax.models import hub

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures"


def _count(name, **kw):
    m = nnx.eval_shape(lambda: models.get(name)(num_classes=1000, input_shape=(224, 224, 3),
                                                rngs=nnx.Rngs(0), **kw))
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(m, nnx.Param)))


def _vit_count(d, depth, mlp, patch=16, tokens=196, extra=1, heads=1, classes=1000):
    """By hand: patch conv + tokens + positions + blocks + final LN + heads."""
    block = 2 * 2 * d + 4 * (d * d + d) + (d * mlp + mlp) + (mlp * d + d)
    return (patch * patch * 3 * d + d) + extra * d + (tokens + extra) * d + depth * block \
        + 2 * d + heads * (d * classes + classes)


def _swin_count(c, depths, heads, window=7, patch=4, classes=1000):
    """By hand: patch conv + LN, blocks (LN, qkv+proj, bias table, LN, MLP x4), mergings."""
    total = patch * patch * 3 * c + c + 2 * c
    for i, (depth, h) in enumerate(zip(depths, heads)):
        block = 2 * c + 4 * (c * c + c) + (2 * window - 1) ** 2 * h + 2 * c \
            + (c * 4 * c + 4 * c) + (4 * c * c + c)
        total += depth * block
        if i < len(depths) - 1:
            total += 2 * 4 * c + 4 * c * 2 * c
            c *= 2
    return total + 2 * c + c * classes + classes


# timm's published counts (timm.create_model(name).num_parameters):
TIMM = {"vit_tiny": 5_717_416, "vit_small": 22_050_664, "vit_base": 86_567_656,
        "deit_tiny": 5_717_416, "deit_small": 22_050_664, "deit_base": 86_567_656,
        "deit_tiny_distilled": 5_910_800, "deit_small_distilled": 22_436_432,
        "deit_base_distilled": 87_338_192, "swin_tiny": 28_288_354, "swin_small": 49_606_258}


def test_hand_counts_equal_timm_counts():
    for size, (d, mlp) in {"tiny": (192, 768), "small": (384, 1536), "base": (768, 3072)}.items():
        assert _vit_count(d, 12, mlp) == TIMM[f"vit_{size}"] == TIMM[f"deit_{size}"]
        assert _vit_count(d, 12, mlp, extra=2, heads=2) == TIMM[f"deit_{size}_distilled"]
    assert _swin_count(96, (2, 2, 6, 2), (3, 6, 12, 24)) == TIMM["swin_tiny"]
    assert _swin_count(96, (2, 2, 18, 2), (3, 6, 12, 24)) == TIMM["swin_small"]


@pytest.mark.parametrize("name", ["vit_tiny", "deit_small_distilled", "swin_tiny"])
def test_parameter_counts_match_timm(name):
    assert _count(name) == TIMM[name]


@pytest.mark.parametrize("name", ["vit", "deit", "swin"])
def test_hugging_face_import_logits_parity(name):
    ref = np.load(FIXTURES / f"hf_{name}" / "reference.npz")
    model = hub.load(FIXTURES / f"hf_{name}")
    model.eval()
    logits = model(ref["images"])  # eager: a tiny model runs faster than it compiles
    np.testing.assert_allclose(np.asarray(logits), ref["logits"], rtol=1e-4, atol=1e-4)


def test_bad_fields_are_clear_errors():
    kw = dict(num_classes=10, input_shape=(28, 28, 1), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown attention 'linear'; valid: .*'ofq'"):
        models.get("vit")(attention="linear", patch_size=7, **kw)
    with pytest.raises(ValueError, match="patch_size=5 must divide"):
        models.get("vit")(patch_size=5, **kw)
    with pytest.raises(ValueError, match="window_size=3 must divide"):
        models.get("swin")(patch_size=2, depths=(1,), num_heads=(1,), window_size=3, **kw)


def test_ecoformer_attention_is_built_by_name():
    m = nnx.eval_shape(lambda: models.get("vit")(
        num_classes=10, input_shape=(28, 28, 1), rngs=nnx.Rngs(0), patch_size=7, hidden=16,
        depth=1, num_heads=2, mlp_dim=32, attention="ecoformer",
        attention_fields=dict(num_bits=8, num_anchors=4, topk=2)))
    assert type(m.blocks[0].attn).__name__ == "EcoFormerAttention"


def test_vit_small_table_is_rendered_from_its_results():
    import importlib.util
    import json

    root = FIXTURES.parents[1]
    spec = importlib.util.spec_from_file_location("vit_small", root / "experiments/vit_small.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = json.loads((root / "experiments/results/vit_small.json").read_text())
    assert module.markdown(results) == (root / "experiments/vit_small.md").read_text()

"""timm-named ViT / DeiT / Swin import: the Hugging Face fixtures (tests/fixtures/make_hf_vit.py)
renamed to timm's state-dict names here, with q/k/v fused into timm's ``qkv`` layout, must give
the logits Hugging Face computed."""

import json
import pathlib
import re

import numpy as np
import pytest
from safetensors.numpy import save_file

from bnn_jax.models import hub_timm

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures"

# Hugging Face name -> timm name (timm vision_transformer.py / deit.py / swin_transformer.py).
VIT_NAMES = [
    (r"{p}\.embeddings\.cls_token", "cls_token"),
    (r"{p}\.embeddings\.distillation_token", "dist_token"),
    (r"{p}\.embeddings\.position_embeddings", "pos_embed"),
    (r"{p}\.embeddings\.patch_embeddings\.projection\.(\w+)", r"patch_embed.proj.\1"),
    (r"{p}\.encoder\.layer\.(\d+)\.layernorm_before\.(\w+)", r"blocks.\1.norm1.\2"),
    (r"{p}\.encoder\.layer\.(\d+)\.layernorm_after\.(\w+)", r"blocks.\1.norm2.\2"),
    (r"{p}\.encoder\.layer\.(\d+)\.attention\.output\.dense\.(\w+)", r"blocks.\1.attn.proj.\2"),
    (r"{p}\.encoder\.layer\.(\d+)\.intermediate\.dense\.(\w+)", r"blocks.\1.mlp.fc1.\2"),
    (r"{p}\.encoder\.layer\.(\d+)\.output\.dense\.(\w+)", r"blocks.\1.mlp.fc2.\2"),
    (r"{p}\.layernorm\.(\w+)", r"norm.\1"),
    (r"(?:classifier|cls_classifier)\.(\w+)", r"head.\1"),
    (r"distillation_classifier\.(\w+)", r"head_dist.\1"),
]
VIT_QKV = r"{p}\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(\w+)"


def _swin_names(current: bool):
    # Current timm: merging at the start of stage i + 1 and the head as head.fc.
    down = (lambda m: f"layers.{int(m[1]) + 1}.downsample.{m[2]}") if current else \
        r"layers.\1.downsample.\2"
    block = r"swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\."
    return [
        (r"swin\.embeddings\.patch_embeddings\.projection\.(\w+)", r"patch_embed.proj.\1"),
        (r"swin\.embeddings\.norm\.(\w+)", r"patch_embed.norm.\1"),
        (block + r"layernorm_before\.(\w+)", r"layers.\1.blocks.\2.norm1.\3"),
        (block + r"layernorm_after\.(\w+)", r"layers.\1.blocks.\2.norm2.\3"),
        (block + r"attention\.self\.relative_position_bias_table",
         r"layers.\1.blocks.\2.attn.relative_position_bias_table"),
        (block + r"attention\.output\.dense\.(\w+)", r"layers.\1.blocks.\2.attn.proj.\3"),
        (block + r"intermediate\.dense\.(\w+)", r"layers.\1.blocks.\2.mlp.fc1.\3"),
        (block + r"output\.dense\.(\w+)", r"layers.\1.blocks.\2.mlp.fc2.\3"),
        (r"swin\.encoder\.layers\.(\d+)\.downsample\.(.+)", down),
        (r"swin\.layernorm\.(\w+)", r"norm.\1"),
        (r"classifier\.(\w+)", r"head.fc.\1" if current else r"head.\1"),
    ]


SWIN_QKV = r"swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.(query|key|value)\.(\w+)"


def to_timm(hf: dict, names, qkv: str, qkv_name) -> dict:
    """Rename every tensor; concatenate each layer's q, k, v rows into one ``qkv`` (timm's
    ``Linear(dim, 3·dim)`` output is ``[q | k | v]``, each ``(heads, head_dim)``)."""
    out, parts = {}, {}
    for name, value in hf.items():
        m = re.fullmatch(qkv, name)
        if m:
            parts.setdefault(qkv_name(m), {})[m[m.lastindex - 1]] = value
            continue
        for pattern, target in names:
            if re.fullmatch(pattern, name):
                out[re.sub(pattern, target, name)] = value
                break
        else:
            raise AssertionError(f"the test's mapping misses {name}")
    for name, p in parts.items():
        out[name] = np.concatenate([p["query"], p["key"], p["value"]], axis=0)
    return out


def _hf(name):
    from safetensors.numpy import load_file

    return load_file(str(FIXTURES / f"hf_{name}" / "model.safetensors"))


def _vit_timm(name):
    p = name
    names = [(a.format(p=p), b) for a, b in VIT_NAMES]
    return to_timm(_hf(name), names, VIT_QKV.format(p=p),
                   lambda m: f"blocks.{m[1]}.attn.qkv.{m[3]}")


def _eps(name):
    return json.loads((FIXTURES / f"hf_{name}" / "config.json").read_text())["layer_norm_eps"]


def _logits(model, name):
    ref = np.load(FIXTURES / f"hf_{name}" / "reference.npz")
    model.eval()
    return np.asarray(model(ref["images"])), ref["logits"]


@pytest.mark.parametrize("name,suffix", [("vit", ".safetensors"), ("deit", ".npz")])
def test_timm_vit_and_deit_logits_equal_the_reference(tmp_path, name, suffix):
    sd = _vit_timm(name)
    assert sd["blocks.0.attn.qkv.weight"].shape == (48, 16)
    path = tmp_path / f"{name}{suffix}"
    save_file(sd, str(path)) if suffix == ".safetensors" else np.savez(path, **sd)
    model = hub_timm.load(path, num_heads=2, norm_eps=_eps(name))
    assert model.distilled == (name == "deit")
    got, want = _logits(model, name)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("current", [True, False], ids=["timm", "timm_legacy"])
def test_timm_swin_logits_equal_the_reference(tmp_path, current):
    sd = to_timm(_hf("swin"), _swin_names(current), SWIN_QKV,
                 lambda m: f"layers.{m[1]}.blocks.{m[2]}.attn.qkv.{m[4]}")
    save_file(sd, str(tmp_path / "swin.safetensors"))
    model = hub_timm.load(tmp_path / "swin.safetensors", input_shape=(16, 16, 3))
    got, want = _logits(model, "swin")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_pretrained_field_reads_a_timm_file_and_heads_from_its_config(tmp_path):
    from flax import nnx

    from bnn_jax import models

    save_file(_vit_timm("vit"), str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="does not record num_heads; pass num_heads="):
        hub_timm.load(tmp_path / "model.safetensors")
    # timm's config.json names the architecture; a tiny width still reads 'tiny' -> 3 heads,
    # which cannot divide 16: the error shows the heads were taken from it.
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch4_16"}))
    with pytest.raises(ValueError, match="num_heads=3 must divide hidden=16"):
        hub_timm.load(tmp_path)
    model = models.get("vit")(num_classes=5, input_shape=(16, 16, 3), rngs=nnx.Rngs(0),
                              patch_size=4, hidden=16, depth=2, num_heads=2, mlp_dim=32,
                              norm_eps=_eps("vit"), pretrained=str(tmp_path / "model.safetensors"))
    got, want = _logits(model, "vit")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_bad_timm_files_are_clear_errors(tmp_path):
    sd = _vit_timm("vit")
    with pytest.raises(ValueError, match="no timm weights at"):
        hub_timm.read_state_dict(tmp_path / "missing.safetensors")
    (tmp_path / "model.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="no torch here.*save_file"):
        hub_timm.read_state_dict(tmp_path / "model.pth")
    save_file({**sd, "fc_norm.weight": sd["norm.weight"]}, str(tmp_path / "a.safetensors"))
    with pytest.raises(ValueError, match=r"no vit rule maps: \['fc_norm.weight'\]"):
        hub_timm.load(tmp_path / "a.safetensors", num_heads=2)
    swin = to_timm(_hf("swin"), _swin_names(True), SWIN_QKV,
                   lambda m: f"layers.{m[1]}.blocks.{m[2]}.attn.qkv.{m[4]}")
    save_file(swin, str(tmp_path / "s.safetensors"))
    with pytest.raises(ValueError, match="does not record the image size; pass input_shape"):
        hub_timm.load(tmp_path / "s.safetensors")
    from flax import nnx

    from bnn_jax import models

    vit = nnx.eval_shape(lambda: models.get("vit")(
        num_classes=5, input_shape=(16, 16, 3), rngs=nnx.Rngs(0), patch_size=4, hidden=16,
        depth=2, num_heads=2, mlp_dim=32))
    with pytest.raises(ValueError, match="holds a timm swin state dict; the model to fill is"):
        hub_timm.load_into(vit, tmp_path / "s.safetensors")

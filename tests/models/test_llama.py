"""LLaMA decoder: Hugging Face parity on the committed fixture, packing, quantizers, bad input."""

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import models
from bnn_jax.data import text
from bnn_jax.models import hub, llama

FIXTURE = pathlib.Path(__file__).parents[1] / "fixtures" / "hf_llama"
REF = dict(np.load(FIXTURE / "reference.npz"))


def _tiny(**kw):
    kw = {**dict(vocab_size=50, max_len=16, hidden=32, intermediate=48, num_layers=2,
                 num_heads=4, num_kv_heads=2, rngs=nnx.Rngs(0)), **kw}
    return llama.Model(**kw)


@nnx.jit
def _forward(model, ids, positions=None, segment_ids=None):
    # Compiled: op-by-op dispatch of the eager model is slower than one small compile.
    return model(ids, positions=positions, segment_ids=segment_ids)


def test_imported_logits_match_hugging_face():
    model = hub.load(FIXTURE)
    logits = _forward(model, jnp.asarray(REF["batch"]))
    assert logits.shape == REF["logits"].shape
    np.testing.assert_allclose(np.asarray(logits), REF["logits"], atol=1e-4, rtol=0)


def test_fixture_tokenizer_matches_hugging_face_ids():
    tok = text.load_tokenizer(FIXTURE)
    assert tok.encode("The import statement binds a name in the local namespace.") == \
        REF["text_ids"].tolist()
    assert (tok.bos_id, tok.eos_id) == (1, 2)


def test_import_reads_config_fields():
    fields = hub.model_fields(hub.read_config(FIXTURE))
    assert fields["num_kv_heads"] == 2 and fields["rope_theta"] == 500.0
    assert fields["max_len"] == 64 and fields["tie_embeddings"] is False


def test_import_with_bitnet_quantizers_changes_the_linears_only():
    fp = hub.load(FIXTURE)
    q = hub.load(FIXTURE, kernel_quantizer="bitnet_weight", input_quantizer="bitnet_act")
    np.testing.assert_array_equal(q.embed_tokens.embedding[...], fp.embed_tokens.embedding[...])
    w = q.layers[0].mlp.up_proj.quantized_kernel()
    assert len(np.unique(np.round(np.asarray(w) / np.abs(np.asarray(w)).max(), 6))) == 3
    batch = jnp.asarray(REF["batch"])
    assert not np.allclose(_forward(q, batch), _forward(fp, batch))


def _copy(tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, d)
    return d


def test_checkpoint_that_does_not_match_its_config_is_a_clear_error(tmp_path):
    d = _copy(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"shapes do not match.*gate_proj.weight: checkpoint "
                                         r"\(32, 64\).*model \(32, 96\)"):
        hub.load(d)


def test_missing_files_and_unknown_types_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no config.json .* place the Hugging Face model"):
        hub.load(tmp_path)
    d = _copy(tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no \\*.safetensors weights .* place the model's"):
        hub.load(d)
    cfg = json.loads((FIXTURE / "config.json").read_text())
    with pytest.raises(ValueError, match="importable model types: bart, bert, .*llama, mbart"):
        hub.family_of({**cfg, "model_type": "gpt2"})
    with pytest.raises(ValueError, match="rope_scaling"):
        hub.model_fields({**cfg, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})


def test_unmapped_tensor_is_a_clear_error():
    tensors = hub.read_safetensors(FIXTURE)
    tensors["model.layers.0.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="no llama rule maps.*extra.weight"):
        hub.map_tensors(tensors, hub.LLAMA)


def test_sequence_longer_than_max_len_is_a_clear_error():
    with pytest.raises(ValueError, match="longer than the model's max_len=16"):
        _tiny()(jnp.zeros((1, 17), jnp.int32))


def test_packed_segments_equal_separate_documents():
    model = _tiny()
    a = np.array([3, 4, 5, 6, 7]), np.array([8, 9, 10])
    packed = jnp.asarray(np.concatenate(a))[None]
    seg = jnp.asarray([[1] * 5 + [2] * 3])
    pos = jnp.asarray([[0, 1, 2, 3, 4, 0, 1, 2]])
    out = _forward(model, packed, pos, seg)
    np.testing.assert_allclose(out[0, :5], _forward(model, jnp.asarray(a[0])[None])[0],
                               atol=1e-5)
    np.testing.assert_allclose(out[0, 5:], _forward(model, jnp.asarray(a[1])[None])[0],
                               atol=1e-5)
    # Without segments the second document sees the first: different logits.
    assert not np.allclose(_forward(model, packed)[0, 5:], out[0, 5:], atol=1e-3)


def test_hidden_states_are_sown_per_block():
    model = _tiny()
    ids = jnp.ones((2, 6), jnp.int32)
    logits, inter = nnx.capture(model, nnx.Intermediate)(ids)
    states = inter["hidden_states"]
    assert len(states) == 2 and states[0].shape == (2, 6, 32)
    np.testing.assert_allclose(logits, model.lm_head(model.norm(states[-1])), atol=1e-5)


def test_registered_and_constructor_errors():
    assert models.get("llama") is llama.Model
    with pytest.raises(ValueError, match="num_kv_heads=3 must divide num_heads=4"):
        _tiny(num_kv_heads=3)


def test_rotary_is_a_rotation_of_pairs():
    # Independent statement: pair (x_i, x_{i+d/2}) rotated by pos·θ^(-2i/d).
    d, theta, pos = 8, 10000.0, 3
    x = np.random.default_rng(0).standard_normal((1, 1, 1, d)).astype(np.float32)
    ang = llama.rotary_angles(jnp.full((1, 1), pos), d, theta)
    y = np.asarray(llama.apply_rotary(jnp.asarray(x), ang))[0, 0, 0]
    for i in range(d // 2):
        a = pos * theta ** (-2 * i / d)
        x1, x2 = x[0, 0, 0, i], x[0, 0, 0, i + d // 2]
        np.testing.assert_allclose([y[i], y[i + d // 2]],
                                   [x1 * np.cos(a) - x2 * np.sin(a),
                                    x2 * np.cos(a) + x1 * np.sin(a)], atol=1e-5)


def test_tied_embeddings_use_the_embedding_as_head():
    model = _tiny(tie_embeddings=True)
    assert model.lm_head is None
    ids = jnp.asarray([[1, 2, 3]])
    logits, inter = nnx.capture(model, nnx.Intermediate)(ids)
    h = model.norm(inter["hidden_states"][-1])
    np.testing.assert_allclose(logits, h @ model.embed_tokens.embedding[...].T, atol=1e-5)
    assert "lm_head" not in str(nnx.state(model, nnx.Param))


def test_subln_normalizes_every_bitlinear_input():
    x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32) * 3 + 1
    rms = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6)
    c = x - x.mean(-1, keepdims=True)
    ln = c / np.sqrt((c ** 2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(llama.subln(jnp.asarray(x), "rms", 1e-6), rms, atol=1e-5)
    np.testing.assert_allclose(llama.subln(jnp.asarray(x), "layer", 1e-6), ln, atol=1e-5)
    model = _tiny(subln="rms")
    mlp, h = model.layers[0].mlp, jnp.asarray(np.random.default_rng(1).standard_normal((1, 2, 32)),
                                              jnp.float32)
    hn = llama.subln(h, "rms", 1e-6)
    inner = jax.nn.silu(mlp.gate_proj(hn)) * mlp.up_proj(hn)
    np.testing.assert_allclose(mlp(h), mlp.down_proj(llama.subln(inner, "rms", 1e-6)),
                               atol=1e-5)
    np.testing.assert_allclose(mlp(5.0 * h), mlp(h), atol=1e-4)  # scale-free input
    # No parameters of its own: the same parameter tree as without it.
    shapes = lambda m: jax.tree.map(jnp.shape, nnx.state(m, nnx.Param))  # noqa: E731
    assert shapes(model) == shapes(_tiny())
    with pytest.raises(ValueError, match="subln must be None or one of"):
        _tiny(subln="batch")


def test_sharded_checkpoint_with_index_loads_the_same(tmp_path):
    from safetensors.numpy import save_file

    d = tmp_path / "sharded"
    d.mkdir()
    for f in ("config.json",):
        shutil.copy(FIXTURE / f, d / f)
    tensors = hub.read_safetensors(FIXTURE)
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    for fname, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(d / fname))
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: f for f, ks in shards.items() for k in ks}}))
    a, b = hub.load(FIXTURE), hub.load(d)
    np.testing.assert_array_equal(a.layers[1].mlp.down_proj.kernel[...],
                                  b.layers[1].mlp.down_proj.kernel[...])
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ValueError, match="lists shards missing"):
        hub.load(d)


def test_learned_kernel_quantizer_arrays_follow_the_loaded_kernel():
    # bivit_weight's per-channel scale starts from the kernel: after import it must be the
    # scale of the pretrained kernel, not of the random one the model was built with.
    model = hub.load(FIXTURE, kernel_quantizer="bivit_weight")
    layer = model.layers[1].self_attn.k_proj
    kernel = hub.read_safetensors(FIXTURE)["model.layers.1.self_attn.k_proj.weight"].T
    want = layer.kernel_quantizer.init(jnp.asarray(kernel))["alpha"]
    np.testing.assert_allclose(layer.kernel_alpha[...], want, rtol=1e-6)


def test_tied_checkpoint_loads_with_or_without_a_stored_head(tmp_path):
    from safetensors.numpy import save_file

    d = _copy(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": True}))
    tensors = hub.read_safetensors(FIXTURE)
    model = hub.load(d)  # lm_head.weight present: dropped, the head is the embedding
    assert model.lm_head is None
    np.testing.assert_array_equal(model.embed_tokens.embedding[...],
                                  tensors["model.embed_tokens.weight"])
    del tensors["lm_head.weight"]
    save_file(tensors, str(d / "model.safetensors"))
    assert hub.load(d).lm_head is None

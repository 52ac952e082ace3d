"""BART / mBART: Hugging Face parity, cached decoding, TBT quantizer placement, bad input."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import generate, models
from bnn_jax.models import bart, hub, mbart
from bnn_jax.nn import QuantLinear, Quantize, initialize
from bnn_jax.nn.attention import MultiHeadAttention

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures"


@nnx.jit
def _forward(model, ids, dec, mask):
    return model(ids, dec, attention_mask=mask)


@pytest.mark.parametrize("name", ["hf_bart", "hf_mbart"])
def test_imported_logits_match_hugging_face(name):
    ref = dict(np.load(FIXTURES / name / "reference.npz"))
    model = hub.load(FIXTURES / name)
    assert type(model) is (bart.Model if name == "hf_bart" else mbart.Model)
    logits = _forward(model, jnp.asarray(ref["input_ids"]), jnp.asarray(ref["decoder_input_ids"]),
                      jnp.asarray(ref["attention_mask"]))
    assert logits.shape == ref["logits"].shape
    np.testing.assert_allclose(np.asarray(logits), ref["logits"], atol=1e-4, rtol=0)


def test_mbart_is_pre_norm_with_final_norms_and_scaled_embeddings():
    fields = hub.model_fields(hub.read_config(FIXTURES / "hf_mbart"))
    assert fields["scale_embedding"] is True
    assert hub.model_fields(hub.read_config(FIXTURES / "hf_bart"))["scale_embedding"] is False
    m = mbart.Model(vocab_size=20, max_len=8, hidden=16, rngs=nnx.Rngs(0))
    b = bart.Model(vocab_size=20, max_len=8, hidden=16, rngs=nnx.Rngs(0))
    assert m.embed_scale == 4.0 and b.embed_scale == 1.0
    assert m.encoder.layer_norm is not None and b.encoder.layer_norm is None
    assert m.encoder.layers[0].pre_norm and not b.encoder.layers[0].pre_norm


def _cached_logits(model, src, src_mask, dec):
    """Decoder logits fed one token at a time through encode / init_cache / decode."""
    encoded = model.encode(src, src_mask)
    b, t = dec.shape
    cache = model.init_cache(b, t)
    kv_mask = jnp.zeros((b, t), bool)
    out = []
    for i in range(t):
        kv_mask = kv_mask.at[:, i].set(True)
        logits, cache = model.decode(dec[:, i:i + 1], cache, index=jnp.int32(i),
                                     positions=jnp.full((b, 1), i, jnp.int32), kv_mask=kv_mask,
                                     encoded=encoded, encoder_mask=src_mask)
        out.append(logits[:, 0])
    return jnp.stack(out, axis=1)


@pytest.mark.parametrize("bits", [None, pytest.param("W1E1A1", marks=pytest.mark.slow)])
def test_cached_decode_equals_full_forward(bits):
    ref = dict(np.load(FIXTURES / "hf_bart" / "reference.npz"))
    src, mask = jnp.asarray(ref["input_ids"]), jnp.asarray(ref["attention_mask"])
    dec = jnp.asarray(ref["decoder_input_ids"])
    model = hub.load(FIXTURES / "hf_bart", bits=bits)
    if bits:
        initialize(model, src, dec, attention_mask=mask)
    full = _forward(model, src, dec, mask)
    cached = nnx.jit(_cached_logits)(model, src, mask, dec)
    np.testing.assert_allclose(np.asarray(cached), np.asarray(full), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_beam_search_with_the_cache_matches_full_forward_decoding():
    ref = dict(np.load(FIXTURES / "hf_bart" / "reference.npz"))
    model = hub.load(FIXTURES / "hf_bart")
    src = jnp.asarray(ref["input_ids"])
    mask = jnp.asarray(ref["attention_mask"], bool)
    s = generate.Settings(max_new_tokens=4, strategy="beam", num_beams=3, eos_id=2)
    graphdef, state = nnx.split(model)
    run = [generate._generate(graphdef, state, src, mask, jax.random.key(0), settings=s,
                              enc_dec=True, decoder_start_id=2, cached=cached)
           for cached in (True, False)]
    np.testing.assert_array_equal(run[0]["tokens"], run[1]["tokens"])
    np.testing.assert_allclose(run[0]["scores"], run[1]["scores"], atol=1e-5)
    # Greedy through the public entry point equals argmax over teacher-forced full forwards.
    out = generate.generate(model, src, mask, max_new_tokens=4, decoder_start_id=2)["tokens"]
    dec = jnp.full((2, 1), 2, jnp.int32)
    for _ in range(4):
        nxt = jnp.argmax(_forward(model, src, dec, mask)[:, -1], axis=-1)
        dec = jnp.concatenate([dec, nxt[:, None].astype(jnp.int32)], axis=1)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(dec[:, 1:]))


# -- TBT quantizer placement (modeling_bart_quant.py / utils_quant.py) ---------------------------

def _expected(bits):
    """The placement table of the paper's code, written out independently."""
    if bits is None:
        return dict(kernel=None, embed=None, signed=None, unsigned=None)
    w, e, a = map(int, re.fullmatch(r"W(\d+)E(\d+)A(\d+)", bits).groups())
    act = {1: "tbt_act", 2: "tbt_act", 8: "tbt_act8"}.get(a)
    signed = (None if act is None else
              (act, dict(bits=a, signed=True)) if a < 8 else (act, dict(symmetric=True)))
    unsigned = (None if act is None else
                (act, dict(bits=a, signed=False)) if a < 8 else (act, dict(symmetric=False)))
    return dict(kernel=None if w == 32 else ("tbt_weight", dict(bits=w, channel_axis=-1)),
                embed=None if e == 32 else ("tbt_weight", dict(bits=e, channel_axis=0)),
                signed=signed, unsigned=unsigned)


def _matches(q, want):
    if want is None:
        return q is None
    name, params = want
    return q is not None and q.name == name and all(q.params[k] == v for k, v in params.items())


@pytest.mark.parametrize("bits", [None, "W1E1A1", "W2E2A2", "W1E1A8", "W2E2A8", "W2E32A8"])
@pytest.mark.parametrize("cls", [bart.Model, mbart.Model])
def test_tbt_quantizer_placement(cls, bits):
    want = _expected(bits)
    model = cls(vocab_size=30, max_len=8, hidden=16, ffn=24, encoder_heads=2, rngs=nnx.Rngs(0),
                bits=bits)
    linears, acts, other = {}, {}, []
    for path, node in nnx.iter_graph(model):
        p = "/".join(map(str, path))
        if isinstance(node, QuantLinear):
            linears[p] = node
        elif isinstance(node, Quantize):
            acts[p] = node.quantizer
        elif isinstance(node, (nnx.LayerNorm, nnx.Embed)):
            other.append(p)
    # 4 attention projections + fc1/fc2 per encoder layer; twice the attention per decoder layer.
    assert len(linears) == 2 * 6 + 2 * 10
    for p, layer in linears.items():
        role = "unsigned" if p.endswith("fc2") else "signed"
        assert p.rsplit("/", 1)[-1] in ("query", "key", "value", "out", "fc1", "fc2"), p
        assert _matches(layer.input_quantizer, want[role]), (p, layer.input_quantizer)
        assert _matches(layer.kernel_quantizer, want["kernel"]), (p, layer.kernel_quantizer)
    assert len(acts) == 6 * 4
    for p, q in acts.items():
        role = "unsigned" if p.endswith("attn_quant") else "signed"
        assert p.rsplit("/", 1)[-1] in ("q_quant", "k_quant", "v_quant", "attn_quant"), p
        assert _matches(q, want[role]), (p, q)
    assert _matches(model.shared.quantizer, want["embed"])
    # LayerNorms and learned positions carry no quantizer: they are plain Flax modules.
    assert sorted(p for p in other if "embed_positions" in p) == [
        "decoder/embed_positions", "encoder/embed_positions"]


def test_lm_head_reads_the_full_precision_table():
    model = bart.Model(vocab_size=30, max_len=8, hidden=16, rngs=nnx.Rngs(0), bits="W1E1A1")
    x = jax.random.normal(jax.random.key(1), (2, 3, 16))
    table = np.asarray(model.shared.embedding[...])
    want = np.asarray(x) @ table.T + np.asarray(model.final_logits_bias[...])
    np.testing.assert_allclose(np.asarray(model._logits(x)), want, atol=1e-5)
    # ...while lookups use the binarized rows: a·sign(row), a = mean|row|.
    rows = np.asarray(model.shared(jnp.arange(3)))
    binary = np.abs(table[:3]).mean(axis=1, keepdims=True) * np.sign(table[:3])
    np.testing.assert_allclose(rows, binary, atol=1e-6)


def test_attention_is_the_shared_skeleton_and_hidden_states_are_sown():
    model = bart.Model(vocab_size=30, max_len=8, hidden=16, rngs=nnx.Rngs(0))
    assert isinstance(model.decoder.layers[0].encoder_attn, MultiHeadAttention)
    ids = jnp.ones((1, 4), jnp.int32)
    _, inter = nnx.capture(model, nnx.Intermediate)(ids, ids)
    flat = {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(inter)}
    assert len([k for k in flat if k.startswith("encoder/hidden_states")]) == 1
    assert len(jax.tree.leaves(flat["encoder/hidden_states"])) == 3  # embeddings + 2 layers


@pytest.mark.parametrize("kw, msg", [
    (dict(bits="W3E1A1"), "weights and embedding take 1, 2 or 32"),
    (dict(bits="2-2-8"), "must look like 'W2E2A8'"),
    (dict(act="swish"), "valid: \\['gelu'"),
    (dict(encoder_heads=3), "must divide hidden"),
])
def test_bad_fields_are_clear_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        bart.Model(vocab_size=30, max_len=8, hidden=16, rngs=nnx.Rngs(0), **kw)


def test_registered_by_name():
    assert models.get("bart") is bart.Model and models.get("mbart") is mbart.Model
    assert "bits" in models.fields("bart")


def test_unsupported_checkpoint_configs_are_clear_errors():
    cfg = hub.read_config(FIXTURES / "hf_bart")
    with pytest.raises(ValueError, match="tie_word_embeddings=false is not supported"):
        hub.model_fields({**cfg, "tie_word_embeddings": False})
    with pytest.raises(ValueError, match="activation_function='silu' is not supported"):
        hub.model_fields({**cfg, "activation_function": "silu"})
    tensors = hub.read_safetensors(FIXTURES / "hf_bart")
    tensors["model.encoder.layers.0.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="no bart rule maps.*extra.weight"):
        hub.map_tensors(tensors, hub.BART)


@pytest.mark.slow
def test_binary_student_has_gradients_for_latent_weights_and_alphas():
    model = bart.Model(vocab_size=30, max_len=8, hidden=16, ffn=16, encoder_layers=1,
                       decoder_layers=1, encoder_heads=2, rngs=nnx.Rngs(0), bits="W1E1A1")
    src = jax.random.randint(jax.random.key(0), (2, 6), 3, 30)
    dec = jax.random.randint(jax.random.key(1), (2, 5), 3, 30)
    initialize(model, src, dec)

    def loss(m):
        logp = jax.nn.log_softmax(m(src, dec))
        return -jnp.take_along_axis(logp, dec[..., None], axis=-1).mean()

    grads = nnx.grad(loss)(model)
    flat = {"/".join(map(str, k)): np.asarray(v) for k, v in nnx.to_flat_state(grads)}
    for p in ("encoder/layers/0/self_attn/query/kernel", "decoder/layers/0/mlp/fc2/kernel",
              "encoder/layers/0/mlp/fc1/input_alpha", "decoder/layers/0/self_attn/attn_quant/alpha",
              "shared/embedding"):
        assert np.isfinite(flat[p]).all() and np.abs(flat[p]).sum() > 0, p

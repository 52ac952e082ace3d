"""BERT: Hugging Face parity (pretraining and classification heads), BiBERT / BiPFT placement."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import models
from bnn_jax.models import bert, hub
from bnn_jax.models.transformer import Attention
from bnn_jax.nn import BiAttention, BiPFTAttention, QuantLinear, initialize

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures"


@nnx.jit
def _forward(model, ids, mask, types):
    return model(ids, mask, types)


def _ref(name):
    ref = dict(np.load(FIXTURES / name / "reference.npz"))
    return ref, [jnp.asarray(ref[k]) for k in ("input_ids", "attention_mask", "token_type_ids")]


def test_pretraining_checkpoint_matches_hugging_face_mlm_and_nsp():
    ref, args = _ref("hf_bert")
    model = hub.load(FIXTURES / "hf_bert")
    assert model.head == "pretraining"
    mlm, nsp = _forward(model, *args)
    np.testing.assert_allclose(np.asarray(mlm), ref["logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(nsp), ref["nsp_logits"], atol=1e-4, rtol=0)


def test_classification_checkpoint_matches_hugging_face():
    ref, args = _ref("hf_bert_cls")
    model = hub.load(FIXTURES / "hf_bert_cls")
    assert (model.head, model.num_labels) == ("classification", 3)
    logits = _forward(model, *args)
    assert logits.shape == (2, 3)
    np.testing.assert_allclose(np.asarray(logits), ref["logits"], atol=1e-4, rtol=0)


def test_unknown_architecture_is_a_clear_error(tmp_path):
    import json
    import shutil

    shutil.copytree(FIXTURES / "hf_bert_cls", tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["architectures"] = ["BertForQuestionAnswering"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="importable: .*BertForSequenceClassification"):
        hub.load(tmp_path / "m")


def _tiny(**kw):
    kw = {**dict(vocab_size=40, max_len=12, hidden=16, intermediate=24, num_heads=2), **kw}
    return bert.Model(rngs=nnx.Rngs(0), **kw)


def _walk(model):
    return {"/".join(map(str, p)): n for p, n in nnx.iter_graph(model)}


def _names(q):
    return None if q is None else (q.name, dict(q.params))


# The papers' code, written out: (linear input, linear kernel, word table, attention class).
PLACEMENT = {
    None: (None, None, None, Attention),
    "bibert": (("bibert_act", {}), ("bibert_weight", {"channel_axis": -1}),
               ("bibert_weight", {"channel_axis": 0}), BiAttention),
    "bipft": (("bipft_act", {}), ("bipft_weight", {"layerwise": True}),
              ("bipft_weight", {"layerwise": False}), BiPFTAttention),
}


def _is(q, want):
    if want is None:
        return q is None
    return q is not None and q.name == want[0] and all(q.params[k] == v
                                                       for k, v in want[1].items())


@pytest.mark.parametrize("method", [None, "bibert", "bipft"])
def test_quantizer_placement(method):
    act, kernel, embed, attn_cls = PLACEMENT[method]
    model = _tiny(method=method, num_labels=2)
    nodes = _walk(model)
    linears = {p: n for p, n in nodes.items() if isinstance(n, QuantLinear)}
    # query, key, value, out, intermediate, output per layer, and the pooler: all quantized.
    assert len(linears) == 2 * 6 + 1 and "pooler" in linears
    for p, layer in linears.items():
        assert _is(layer.input_quantizer, act), p
        assert _is(layer.kernel_quantizer, kernel), p
    assert _is(model.embeddings.word_embeddings.quantizer, embed)
    for layer in model.layers:
        assert type(layer.attention) is attn_cls
    # Full precision: classifier, positions, token types, LayerNorms (plain Flax modules).
    assert type(model.classifier) is nnx.Linear
    assert type(model.embeddings.position_embeddings) is nnx.Embed
    assert type(model.embeddings.token_type_embeddings) is nnx.Embed
    assert sum(isinstance(n, nnx.LayerNorm) for n in nodes.values()) == 1 + 2 * 2


def _attention(model, ids, mask):
    _, inter = nnx.capture(model, nnx.Intermediate)(ids, mask)
    flat = {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(inter)}
    return {k: np.asarray(jax.tree.leaves(v)[0]) for k, v in flat.items()
            if k.endswith("/attention")}


def test_bibert_attention_is_binary_without_softmax():
    model = _tiny(method="bibert")
    ids = jax.random.randint(jax.random.key(0), (2, 6), 0, 40)
    mask = jnp.ones((2, 6)).at[1, 4:].set(0)
    att = _attention(model, ids, mask)
    assert len(att) == 2
    for a in att.values():
        assert set(np.unique(a)) <= {0.0, 1.0}  # {0, 1}: no softmax normalization
        assert (a[1, :, :, 4:] == 0).all()      # masked keys never attended
        assert not np.allclose(a.sum(-1), 1.0)
    # The context is {0,1} x {±1}: integer valued before the output projection.
    layer = model.layers[0].attention
    x = model.embeddings(ids, jnp.zeros_like(ids))
    ctx = np.asarray(layer.context(x, x, mask.astype(bool)[:, None, None]))
    np.testing.assert_array_equal(ctx, np.round(ctx))


def test_bipft_attention_is_elastic_binary_with_rank1_estimators():
    model = _tiny(method="bipft", estimators=True)
    ids = jax.random.randint(jax.random.key(0), (2, 6), 0, 40)
    mask = jnp.ones((2, 6))
    initialize(model, ids, mask)
    att = model.layers[0].attention
    for name in ("q_p", "k_p", "q_m", "k_m", "v_p"):
        assert getattr(att, f"{name}_kernel").size == 16  # Linear(hidden, 1): rank 1, all heads
    a = next(iter(_attention(model, ids, mask).values()))
    alpha = float(att.attn_alpha[...])
    assert set(np.round(np.unique(a) / alpha, 5)) <= {0.0, 1.0}  # unsigned: {0, alpha}
    assert not hasattr(_tiny(method="bipft", estimators=False).layers[0].attention, "q_p_kernel")


def test_heads_and_pooler():
    assert not hasattr(_tiny(), "pooler") and _tiny().head == "mlm"
    m = _tiny(num_labels=1)  # regression (STS-B)
    ids = jnp.ones((3, 5), jnp.int32)
    assert m(ids).shape == (3, 1)


@pytest.mark.parametrize("kw, msg", [
    (dict(method="binarybert"), "method.*bibert"),
    (dict(head="classification"), "needs num_labels"),
    (dict(head="qa"), "head"),
    (dict(num_heads=3), "must divide"),
])
def test_bad_fields_are_clear_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        _tiny(**kw)


def test_registered_by_name():
    assert models.get("bert") is bert.Model
    assert {"method", "head", "bool_rule", "estimators"} <= set(models.fields("bert"))


def test_pretraining_checkpoint_loads_under_a_new_classification_head():
    ref, args = _ref("hf_bert")
    pre = hub.load(FIXTURES / "hf_bert")
    with pytest.warns(UserWarning, match=r"task-head parameters \['classifier/bias', "
                                         r"'classifier/kernel'\]"):
        cls = hub.load(FIXTURES / "hf_bert", head="classification", num_labels=3)
    # The encoder and the pooler come from the checkpoint; MLM/NSP tensors are dropped.
    np.testing.assert_array_equal(cls.pooler.kernel[...], pre.pooler.kernel[...])
    np.testing.assert_array_equal(cls.layers[1].output.kernel[...],
                                  pre.layers[1].output.kernel[...])
    assert not hasattr(cls, "nsp") and _forward(cls, *args).shape == (2, 3)
    # Encoder tensors are never optional: a missing one is still an error.
    tensors = hub.read_safetensors(FIXTURES / "hf_bert")
    del tensors["bert.encoder.layer.0.output.dense.weight"]
    mapped = hub.map_tensors(tensors, hub.BERT)
    with pytest.raises(ValueError, match=r"no tensor for model parameters \['layers/0/output"):
        hub._check(_tiny_like_fixture(), mapped, hub.BERT)


def _tiny_like_fixture():
    fields = hub.model_fields(hub.read_config(FIXTURES / "hf_bert"))
    return nnx.eval_shape(lambda: bert.Model(rngs=nnx.Rngs(0), **fields))

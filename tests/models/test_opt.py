"""OPT: imported checkpoint logits and greedy decoding against Hugging Face (fixture made by
tests/fixtures/make_hf_opt.py with transformers), cached decode against the full forward."""

import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import generate
from bnn_jax.models import hub, opt

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "hf_opt"
REF = dict(np.load(FIXTURE / "reference.npz"))


@pytest.fixture(scope="module")
def model():
    return hub.load(FIXTURE)


def test_imported_opt_logits_match_hugging_face(model):
    assert isinstance(model, opt.Model) and model.embed_positions.embedding.shape[0] == 66
    logits = np.asarray(model(jnp.asarray(REF["batch"])))
    np.testing.assert_allclose(logits, REF["logits"], rtol=1e-4, atol=1e-4)


def test_opt_greedy_decoding_with_left_padding_matches_hugging_face(model):
    out = generate.generate(model, REF["prompt_ids"], REF["prompt_mask"],
                            max_new_tokens=int(REF["greedy"].shape[1]))
    np.testing.assert_array_equal(np.asarray(out["tokens"]), REF["greedy"])


def test_opt_cached_decode_equals_full_forward():
    m = opt.Model(vocab_size=20, max_len=12, hidden=16, ffn=24, num_layers=2, num_heads=2,
                  rngs=nnx.Rngs(0))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 20, (2, 7)))
    full = np.asarray(m(ids))
    cache = m.init_cache(2, 12)
    pos = jnp.broadcast_to(jnp.arange(7), (2, 7))
    kv = jnp.zeros((2, 12), bool).at[:, :7].set(True)
    first, cache = m.decode(ids[:, :4], cache, index=jnp.int32(0), positions=pos[:, :4],
                            kv_mask=kv)
    np.testing.assert_allclose(np.asarray(first), full[:, :4], rtol=1e-5, atol=1e-5)
    for t in range(4, 7):  # one token at a time, each step extending the cache
        step, cache = m.decode(ids[:, t:t + 1], cache, index=jnp.int32(t),
                               positions=pos[:, t:t + 1], kv_mask=kv)
        np.testing.assert_allclose(np.asarray(step)[:, 0], full[:, t], rtol=1e-5, atol=1e-5)


def test_opt_import_rejects_unsupported_configs():
    cfg = hub.read_config(FIXTURE)
    for key, value, msg in (("activation_function", "gelu", "only 'relu'"),
                            ("do_layer_norm_before", False, "post-LN"),
                            ("word_embed_proj_dim", 16, "project_in/out")):
        with pytest.raises(ValueError, match=msg):
            hub.model_fields({**cfg, key: value})

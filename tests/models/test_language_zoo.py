"""The language zoo's student initialization: TBT's layer mapping from a teacher checkpoint,
position tables cut to the student's length, and BERT students of the teacher's depth."""

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax.models import bart, bert, hub

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures"


def six_layer_bart(tmp_path):
    """A 6+6-layer BART checkpoint made from the 2-layer fixture: layer l is layer l % 2 of
    the fixture times 1 + l/10 (so every layer differs)."""
    from safetensors.numpy import save_file

    tensors = hub.read_safetensors(FIXTURES / "hf_bart")
    out = {}
    for name, value in tensors.items():
        if ".layers." not in name:
            out[name] = value
            continue
        head, rest = name.split(".layers.")
        i, tail = rest.split(".", 1)
        if i == "0":
            for layer in range(6):
                src = tensors[f"{head}.layers.{layer % 2}.{tail}"]
                out[f"{head}.layers.{layer}.{tail}"] = (src * (1 + 0.1 * layer)).astype(src.dtype)
    d = tmp_path / "bart6"
    d.mkdir()
    cfg = json.loads((FIXTURES / "hf_bart" / "config.json").read_text())
    cfg.update(encoder_layers=6, decoder_layers=6)
    (d / "config.json").write_text(json.dumps(cfg))
    save_file(out, str(d / "model.safetensors"))
    return d, out


def test_tbt_layer_map_is_the_reference_table():
    # run_summarization_no_trainer.py distill_mappings, re-stated.
    table = {1: [5], 2: [0, 5], 3: [0, 2, 5], 4: [0, 2, 3, 5], 5: [0, 1, 3, 4, 5],
             6: [0, 1, 2, 3, 4, 5]}
    for n, want in table.items():
        assert bart.tbt_layer_map(n, 6) == want
        assert bart.tbt_hidden_map(n, 6) == [0] + [j + 1 for j in want]
    assert bart.tbt_layer_map(2, 2) == [0, 1]
    with pytest.raises(ValueError, match="TBT maps 1-6 student layers onto a 6-layer teacher"):
        bart.tbt_layer_map(1, 2)


def test_a_three_layer_student_copies_teacher_layers_0_2_5(tmp_path):
    d, tensors = six_layer_bart(tmp_path)
    student = bart.Model(vocab_size=96, max_len=32, encoder_layers=3, decoder_layers=1,
                         rngs=nnx.Rngs(3), pretrained=str(d), bits="W1E1A1")
    assert len(student.encoder.layers) == 3 and student.hidden == 16
    for i, j in enumerate([0, 2, 5]):
        np.testing.assert_array_equal(
            np.asarray(student.encoder.layers[i].mlp.fc1.kernel[...]),
            tensors[f"model.encoder.layers.{j}.fc1.weight"].T)
    np.testing.assert_array_equal(
        np.asarray(student.decoder.layers[0].encoder_attn.query.kernel[...]),
        tensors["model.decoder.layers.5.encoder_attn.q_proj.weight"].T)
    np.testing.assert_array_equal(np.asarray(student.shared.embedding[...]),
                                  tensors["model.shared.weight"])


def test_a_shorter_student_equals_the_teacher_on_inputs_it_can_take():
    ref = dict(np.load(FIXTURES / "hf_bart" / "reference.npz"))
    teacher = hub.load(FIXTURES / "hf_bart")  # 32 positions
    length = ref["input_ids"].shape[1]
    student = bart.Model(vocab_size=96, max_len=length, rngs=nnx.Rngs(0),
                         pretrained=str(FIXTURES / "hf_bart"))
    assert student.encoder.embed_positions.embedding.shape[0] == length + 2
    args = (jnp.asarray(ref["input_ids"]), jnp.asarray(ref["decoder_input_ids"]))
    mask = jnp.asarray(ref["attention_mask"])
    np.testing.assert_allclose(np.asarray(student(*args, attention_mask=mask)), ref["logits"],
                               atol=1e-4)
    np.testing.assert_allclose(np.asarray(student(*args, attention_mask=mask)),
                               np.asarray(teacher(*args, attention_mask=mask)), atol=1e-6)


def test_bert_student_starts_from_the_checkpoint_and_needs_its_depth(tmp_path):
    ref = dict(np.load(FIXTURES / "hf_bert_cls" / "reference.npz"))
    fields = hub.model_fields(hub.read_config(FIXTURES / "hf_bert_cls"))
    length = ref["input_ids"].shape[1]
    student = bert.Model(rngs=nnx.Rngs(0), max_len=length, vocab_size=fields["vocab_size"],
                         num_labels=fields["num_labels"], method="bibert",
                         pretrained=str(FIXTURES / "hf_bert_cls"))
    assert student.embeddings.position_embeddings.embedding.shape[0] == length
    student = bert.Model(rngs=nnx.Rngs(0), max_len=length, vocab_size=fields["vocab_size"],
                         num_labels=fields["num_labels"],
                         pretrained=str(FIXTURES / "hf_bert_cls"))
    kw = {k: jnp.asarray(ref[k]) for k in ("attention_mask", "token_type_ids") if k in ref}
    np.testing.assert_allclose(np.asarray(student(jnp.asarray(ref["input_ids"]), **kw)),
                               ref["logits"], atol=1e-4)
    with pytest.raises(ValueError, match="set num_layers="):
        bert.Model(rngs=nnx.Rngs(0), max_len=length, vocab_size=fields["vocab_size"],
                   num_labels=fields["num_labels"], num_layers=1,
                   pretrained=str(FIXTURES / "hf_bert_cls"))
    with pytest.raises(ValueError, match="use the checkpoint's tokenizer"):
        bert.Model(rngs=nnx.Rngs(0), max_len=length, vocab_size=7, num_labels=2,
                   pretrained=str(FIXTURES / "hf_bert_cls"))
    with pytest.raises(ValueError, match="longer than the 32 positions"):
        bart.Model(rngs=nnx.Rngs(0), max_len=40, vocab_size=96,
                   pretrained=str(FIXTURES / "hf_bart"))


def test_the_last_hidden_state_is_after_the_final_norm_as_hugging_face_returns_it():
    from bnn_jax.models import mbart

    m = mbart.Model(vocab_size=20, max_len=8, hidden=16, rngs=nnx.Rngs(0))
    ids = jnp.asarray([[3, 4, 5, 6]])
    _, inter = nnx.capture(m, nnx.Intermediate)(ids, ids)
    states = nnx.to_pure_dict(inter)["encoder"]["hidden_states"]
    assert len(states) == 3
    np.testing.assert_allclose(np.asarray(states[-1]), np.asarray(m.encoder_hidden(ids)),
                               atol=1e-6)
    # ...while the one before is the first layer's raw output (no final LayerNorm on it).
    x = m.encoder.embed(m._tokens(ids), jnp.arange(4)[None])
    np.testing.assert_allclose(np.asarray(states[1]),
                               np.asarray(m.encoder.layers[0](x, None)), atol=1e-6)

"""The language recipes through ``train.run``: TBT's and BiBERT's step-1 loss against the
reference totals recomputed here in numpy (every term, the layer maps, the quirks), the loss
falling over a few steps, and beam-search decoding at the end; the configs' settings."""

import importlib.util
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import data, models
from bnn_jax.models import hub
from bnn_jax.nn import initialize
from bnn_jax.train import run

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"


def config_module(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def six_layer_bart(tmp_path):
    from test_language_zoo import six_layer_bart as make

    return make(tmp_path)[0]


def train_log(workdir):
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if x["split"] == "train"]


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def captured(model, *args, **kwargs):
    out, inter = nnx.capture(model, nnx.Intermediate)(*args, **kwargs)
    return np.asarray(out, np.float64), nnx.to_pure_dict(inter)


def arr(x):
    return np.asarray(x[0] if isinstance(x, (tuple, list)) else x, np.float64)


def quick(arg, **over):
    c = config_module("tbt").get_config(arg)
    for k, v in over.items():
        c[k] = v
    c.tensorboard, c.async_checkpoint, c.log_every = False, False, 1
    c.mesh.num_devices = 1
    return c


def test_config_settings_follow_the_papers():
    tbt, bibert, bipft = (config_module(n) for n in ("tbt", "bibert", "bipft"))
    x = tbt.get_config("bits=W2E2A8")
    assert x.optimizer.learning_rate == 3e-4 and x.task.label_smoothing == 0.0
    gen = x.task.generate
    assert (gen.num_beams, gen.min_new_tokens + 1, gen.max_new_tokens + 1,
            gen.length_penalty) == (6, 11, 62, 1.0)
    cnn = tbt.get_config("dataset=cnn_dailymail,bits=W2E2A2")
    gen = cnn.task.generate
    assert (gen.num_beams, gen.min_new_tokens + 1, gen.max_new_tokens + 1,
            gen.length_penalty) == (4, 56, 142, 2.0)
    assert cnn.optimizer.learning_rate == 7e-4
    assert x.total_steps == 20 * -(-204_045 // 128)
    assert x.kd.teacher_import == x.model.pretrained == x.data.tokenizer
    assert [t["weight"] for t in x.kd.terms][:3] == [1.0, 1.0, 1.0] and x.kd.task_weight == 1.0
    sst = bibert.get_config("task=sst2")
    assert (sst.optimizer.learning_rate, sst.data.batch_size, sst.data.max_len) == (1e-4, 16, 64)
    assert sst.kd.task_weight == 0.5 and sst.kd.terms[0]["name"] == "soft_ce"
    sts = bibert.get_config("task=stsb")
    assert sts.kd.task_weight == 0.0 and sts.kd.terms[0]["name"] == "logit_mse"
    assert bibert.get_config("task=rte").optimizer.learning_rate == 1e-5
    ft = bipft.get_config("task=mnli")
    assert (ft.optimizer.schedule, ft.optimizer.learning_rate, ft.data.batch_size) == (
        "constant", 2e-5, 32)
    assert ft.total_steps == 6 * -(-392_702 // 32) and ft.model.estimators is False
    with pytest.raises(ValueError, match="bits must be one of"):
        tbt.get_config("bits=W3E3A3")
    with pytest.raises(ValueError, match="task must be one of"):
        bibert.get_config("task=squad")


@pytest.mark.slow  # one 3+2-layer W1E1A1 student, 12 steps and beam decoding: ~60 s
def test_tbt_step_one_loss_is_the_reference_total_and_it_falls(tmp_path):
    teacher_dir = six_layer_bart(tmp_path)
    tbt = config_module("tbt")
    batch_size = 4
    c = quick("quick,steps=12")
    c.data = dict(c.data, vocab_size=96, batch_size=batch_size, num_train=64, num_test=8,
                  eval_batch_size=8)
    c.model = dict(name="bart", bits="W1E1A1", pretrained=str(teacher_dir), encoder_layers=3,
                   decoder_layers=2)
    c.kd = dict(enabled=True, teacher_import=str(teacher_dir), task_weight=1.0,
                terms=tbt.tbt_terms((3, 2), (6, 6), device_batch=batch_size))
    result = run(c, str(tmp_path / "student"))
    log = train_log(tmp_path / "student")
    # Beam-search decoding of the eval split ran at the end (ROUGE of the reversal task).
    assert 0.0 <= result["test_rouge1"] <= 100.0 and "test_rougeL" in result
    losses = [x["loss"] for x in log]
    assert np.mean(losses[-3:]) < losses[0]

    # Step 1 recomputed: the same first batch, the student as the loop starts it (weights of
    # teacher layers 0, 2, 5 / 0, 5; alphas from the first batch), the imported teacher.
    ds = data.build(c.data, seed=c.seed)
    b = ds.train_batch(0)
    ids, dec = jnp.asarray(b["input_ids"]), jnp.asarray(b["decoder_input_ids"])
    mask = jnp.asarray(b["attention_mask"])
    student = models.build(c.model, rngs=nnx.Rngs(c.seed), **ds.spec)
    initialize(student, ids, dec, attention_mask=mask)
    teacher = hub.load(teacher_dir)
    s_out, s = captured(student, ids, dec, attention_mask=mask)
    t_out, t = captured(teacher, ids, dec, attention_mask=mask)
    lp_s, lp_t = log_softmax(s_out), log_softmax(t_out)
    m = b["loss_mask"]
    task = (-np.take_along_axis(lp_s, b["target_ids"][..., None], -1)[..., 0] * m).sum() / m.sum()
    # KD_loss.DistributionLoss over every (batch, position) row.
    logits = np.mean(-(np.exp(lp_t) * lp_s).sum(-1))
    enc_map, dec_map = [0, 2, 5], [0, 5]
    hid = 0.0
    for stack, lmap in (("encoder", enc_map), ("decoder", dec_map)):
        hs, ht = s[stack]["hidden_states"], t[stack]["hidden_states"]
        assert len(hs) == len(lmap) + 1 and len(ht) == 7
        for i, h in enumerate(hs):  # state 0 <-> 0, state i <-> map[i-1] + 1
            j = 0 if i == 0 else lmap[i - 1] + 1
            hid += np.mean((arr(h) - arr(ht[j])) ** 2)
    att = 0.0
    for stack, attn, lmap in (("encoder", "self_attn", enc_map), ("decoder", "self_attn", dec_map),
                              ("decoder", "encoder_attn", dec_map)):
        for i, j in enumerate(lmap):
            a_s = arr(s[stack]["layers"][i][attn]["attention"])
            a_t = arr(t[stack]["layers"][j][attn]["attention"])
            att += np.mean((a_s - a_t) ** 2)
    # enc_hid_last_loss: a sum over the examples of each one's MSE.
    last_s, last_t = arr(s["encoder"]["hidden_states"][-1]), arr(t["encoder"]["hidden_states"][-1])
    last = sum(np.mean((last_s[k] - last_t[k]) ** 2) for k in range(batch_size))
    expected = task + logits + hid + att + last
    np.testing.assert_allclose(losses[0], expected, rtol=1e-4)
    assert att > 1e-6 and last > 1e-6  # the code-only terms are really there


def two_label_bert(tmp_path):
    """The 3-label BERT fixture cut to 2 labels (synthetic_glue's), as a model directory."""
    from safetensors.numpy import save_file

    d = tmp_path / "bert2"
    d.mkdir()
    cfg = json.loads((FIXTURES / "hf_bert_cls" / "config.json").read_text())
    cfg["id2label"] = {"0": "A", "1": "B"}
    cfg["label2id"] = {"A": 0, "B": 1}
    (d / "config.json").write_text(json.dumps(cfg))
    tensors = hub.read_safetensors(FIXTURES / "hf_bert_cls")
    for k in ("classifier.weight", "classifier.bias"):
        tensors[k] = np.ascontiguousarray(tensors[k][:2])
    save_file(tensors, str(d / "model.safetensors"))
    return d


@pytest.mark.slow  # a 2-layer BiBERT student, 10 steps: ~40 s
def test_bibert_step_one_loss_is_the_reference_total_and_it_falls(tmp_path):
    bibert = config_module("bibert")
    hf = two_label_bert(tmp_path)
    c = bibert.get_config("quick,steps=10")
    c.tensorboard, c.async_checkpoint, c.log_every = False, False, 1
    c.mesh.num_devices = 1
    c.data = dict(c.data, vocab_size=96, batch_size=8, num_train=64, num_test=16,
                  eval_batch_size=16)
    c.model = dict(name="bert", method="bibert", pretrained=str(hf))
    task_weight, terms = bibert.bibert_terms(regression=False)
    c.kd = dict(enabled=True, teacher_import=str(hf), task_weight=task_weight, terms=terms)
    run(c, str(tmp_path / "student"))
    losses = [x["loss"] for x in train_log(tmp_path / "student")]
    assert np.mean(losses[-3:]) < losses[0]

    ds = data.build(c.data, seed=c.seed)
    b = ds.train_batch(0)
    args = (jnp.asarray(b["input_ids"]),)
    kw = dict(attention_mask=jnp.asarray(b["attention_mask"]),
              token_type_ids=jnp.asarray(b["token_type_ids"]))
    student = models.build(c.model, rngs=nnx.Rngs(c.seed), **ds.spec)
    s_out, s = captured(student, *args, **kw)
    t_out, t = captured(hub.load(hf), *args, **kw)
    lp_s, lp_t = log_softmax(s_out), log_softmax(t_out)
    # quant_task_glue.py: soft_cross_entropy (.mean() over elements) + 0.5 * NLL.
    pred = np.mean(-np.exp(lp_t) * lp_s) + 0.5 * np.mean(
        -lp_s[np.arange(len(b["label"])), b["label"]])

    def unit(x):
        return x / np.sqrt(np.sum(x ** 2))

    def r2b(a, c_):  # att_loss_r2b
        return np.sqrt(np.sum((unit(a) - unit(c_)) ** 2))

    rep = sum(r2b(arr(a), arr(c_)) for a, c_ in zip(s["hidden_states"], t["hidden_states"]))
    assert len(s["hidden_states"]) == 3  # embeddings + 2 layers
    dmd = 0.0
    for layer in range(2):
        for f in "qkv":
            fs, ft = (arr(m_["layers"][layer]["attention"][f]) for m_ in (s, t))
            ps, pt = (np.einsum("bhid,bhjd->bhij", x, x) / np.sqrt(x.shape[-1]) for x in (fs, ft))
            ps, pt = (np.where(x <= -100.0, 0.0, x) for x in (ps, pt))
            dmd += r2b(ps, pt)
    np.testing.assert_allclose(losses[0], pred + rep + dmd, rtol=1e-4)


def test_nlp_small_table_is_rendered_from_its_results():
    spec = importlib.util.spec_from_file_location("nlp_small", ROOT / "experiments/nlp_small.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = json.loads((ROOT / "experiments/results/nlp_small.json").read_text())
    assert module.markdown(results) == (ROOT / "experiments/nlp_small.md").read_text()
    runs = {(r["part"], r["method"]) for r in results["runs"]}
    assert {("seq2seq", m) for m in module.SEQ2SEQ} <= runs
    assert {("classification", m) for m in module.CLASSIFICATION} <= runs

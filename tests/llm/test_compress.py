"""Post-training compression: the PTQ grids against their formulas, block-by-block data flow
(block i+1 calibrated on the compressed block i), exact salient counts, GPTQ below RTN, and the
CLI end to end on the LLaMA and OPT fixtures (saved, reloaded, evaluated)."""

import functools
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import compress, lm_eval, quant
from bnn_jax.compress import __main__ as cli
from bnn_jax.compress.methods import linears
from bnn_jax.models import llama

FIX = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
FIELDS = dict(vocab_size=40, max_len=16, hidden=32, intermediate=48, num_layers=2, num_heads=4)


def np_gptq_grid(w, bits):
    """GPTQ's Quantizer (min-max incl. 0 per output row), kernel [in, out]."""
    lo, hi = np.minimum(w.min(0), 0), np.maximum(w.max(0), 0)
    scale = (hi - lo) / (2 ** bits - 1)
    zero = np.round(-lo / scale)
    return scale * (np.clip(np.round(w / scale) + zero, 0, 2 ** bits - 1) - zero)


def test_int_weight_is_gptq_min_max_grid_and_idempotent():
    w = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)
    for bits in (2, 3, 4):
        q = quant.get(dict(name="int_weight", bits=bits))
        arrays = q.init(jnp.asarray(w))
        got = np.asarray(q(jnp.asarray(w), **arrays))
        np.testing.assert_allclose(got, np_gptq_grid(w, bits), rtol=1e-6, atol=1e-6)
        assert len(np.unique(got[:, 0])) <= 2 ** bits
        np.testing.assert_allclose(np.asarray(q(jnp.asarray(got), **arrays)), got, atol=1e-6)


def test_pbllm_ptq_weight_init_binarizes_all_but_the_largest_fraction():
    w = np.random.default_rng(1).normal(size=(10, 4)).astype(np.float32)
    q = quant.get(dict(name="pbllm_ptq_weight", salient_fraction=0.2))
    a = {k: np.asarray(v) for k, v in q.init(jnp.asarray(w)).items()}
    salient = np.abs(w) >= np.sort(np.abs(w).ravel())[-8]  # round(0.2 * 40) = 8 largest |W|
    np.testing.assert_array_equal(a["salient_mask"] != 0, salient)
    b = ~salient
    mu = (w * b).sum(0) / b.sum(0)
    alpha = (np.abs(w - mu) * b).sum(0) / b.sum(0)
    want = np.where(salient, np_gptq_grid(w, 8), alpha * np.sign(w - mu) + mu)
    np.testing.assert_allclose(np.asarray(q(jnp.asarray(w), **a)), want, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny():
    fp = llama.Model(rngs=nnx.Rngs(0), **FIELDS)
    calib = np.random.default_rng(2).integers(0, 40, (4, 16)).astype(np.int32)
    make = functools.partial(llama.Model, rngs=nnx.Rngs(5), **FIELDS)
    return fp, make, calib


def test_pbllm_gptq_calibrates_each_block_on_the_compressed_previous_block(tiny):
    fp, make, calib = tiny
    q, report = compress.compress(fp, make, calib, method="pbllm_gptq", salient=0.25,
                                  blocksize=8, log=lambda _: None)
    # Block 1's q_proj input: the compressed block 0's output through block 1's input norm.
    ids = jnp.asarray(calib)
    pos = jnp.broadcast_to(jnp.arange(16), (4, 16))
    mask = jnp.tril(jnp.ones((16, 16), bool))[None]
    h, _ = q.layers[0](q.embed_tokens(ids), pos, mask)
    x1 = np.asarray(fp.layers[1].input_layernorm(h))
    w_fp = np.asarray(fp.layers[1].self_attn.q_proj.kernel[...])
    want, mask1, _ = quant.gptq_pb(w_fp, x1, salient_fraction=0.25, blocksize=8)
    got = q.layers[1].self_attn.q_proj
    np.testing.assert_allclose(np.asarray(got.kernel[...]), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got.kernel_salient_mask[...]) != 0, mask1)
    for name, lin in linears(q).items():  # exact salient fraction in every linear
        m = np.asarray(lin.kernel_salient_mask[...])
        assert m.sum() == round(0.25 * m.size), name
    assert max(r["grid_mismatch"] for r in report["layers"]) < 1e-5
    # The stored grids reproduce the compressed kernels: the forward pass is the compressed one.
    plain = llama.Model(rngs=nnx.Rngs(0), **FIELDS)
    src = {tuple(p): v for p, v in nnx.to_flat_state(nnx.state(q, nnx.Param))}
    for p, var in nnx.to_flat_state(nnx.state(plain, nnx.Param)):
        var.set_value(src[tuple(p)].get_value())
    np.testing.assert_allclose(np.asarray(q(ids)), np.asarray(plain(ids)), rtol=1e-4, atol=1e-4)


def test_gptq_compensation_reconstructs_better_than_rounding(tiny):
    fp, make, calib = tiny
    errs = {}
    for method in ("rtn", "gptq"):
        _, rep = compress.compress(fp, make, calib, method=method, bits=2, blocksize=8,
                                   log=lambda _: None)
        errs[method] = np.array([r["relative_error"] for r in rep["layers"]])
    assert errs["gptq"].mean() < errs["rtn"].mean()
    assert (errs["gptq"] <= errs["rtn"] + 1e-9).mean() >= 0.8  # nearly every layer


def test_cli_rejects_bad_arguments_before_loading_anything(tmp_path):
    with pytest.raises(ValueError, match="never overwritten"):
        cli.main(["--model", "missing", "--method", "rtn", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        cli.main(["--model", "missing", "--method", "awq", "--out", str(tmp_path / "new")])
    with pytest.raises(ValueError, match="--bits must be in"):
        cli.main(["--model", "missing", "--method", "gptq", "--bits", "1",
                  "--out", str(tmp_path / "new")])


@pytest.mark.slow
@pytest.mark.parametrize("fixture,method", [("hf_llama", "pbllm_gptq"), ("hf_opt", "gptq"),
                                            ("hf_llama", "dbllm"), ("hf_opt", "pbllm_qat")])
def test_cli_compresses_saves_and_reloads_the_fixtures(tmp_path, fixture, method):
    out = tmp_path / "run"
    cli.main(["--model", str(FIX / fixture), "--method", method, "--calib", "pydoc",
              "--nsamples", "4", "--seq_len", "32", "--steps", "3", "--out", str(out)])
    meta = json.loads((out / "compress.json").read_text())
    assert meta["method"] == method
    assert len(meta["layers"]) == (14 if fixture == "hf_llama" else 12)
    model, tok = lm_eval.load_model(str(out))
    base, _ = lm_eval.load_model(str(FIX / fixture))
    assert type(model.layers[0].fc1 if fixture == "hf_opt" else model.layers[0].mlp.up_proj
                ).__name__ == "QuantLinear"
    ids = jnp.asarray(np.arange(3, 19)[None])
    assert not np.allclose(np.asarray(model(ids)), np.asarray(base(ids)), atol=1e-3)
    ppl = lm_eval.perplexity(model, lm_eval.eval_stream("pydoc", tok, window=64)[:2048],
                             window=64)
    assert np.isfinite(ppl["perplexity"])
    with pytest.raises(ValueError, match="never overwritten"):
        cli.main(["--model", str(FIX / fixture), "--method", method, "--out", str(out)])

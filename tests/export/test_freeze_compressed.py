"""freeze() of models written by ``bnn_jax.compress``: GPTQ-PB (``pbllm_ptq_weight``) becomes
FrozenPBLinear, DB-LLM (``dbllm_fdb``) and the 2-bit RTN/GPTQ grid (``int_weight``)
FrozenDBLinear; the frozen LLaMA fixture's logits equal the compressed fake-quant logits and
its cached decode equals its own full forward. Frozen and fake-quant outputs differ by float32
rounding alone (another summation order, e.g. α·(x @ S) + μ·Σx against x @ (α·S + μ)): the
tolerance is RTOL = 2e-5 of the output's largest magnitude."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import export, generate, lm_eval
from bnn_jax.compress import __main__ as cli
from bnn_jax.export.lowbit import FrozenDBLinear, FrozenPBLinear
from bnn_jax.nn import QuantLinear
from test_freeze_lowbit import RTOL, _close, cached_decode  # a sibling module (tests/export)

FIX = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "hf_llama"


def _compressed(tmp_path, method, *extra):
    """The fixture compressed by the CLI's own path, written and loaded back."""
    out = tmp_path / method
    cli.main(["--model", str(FIX), "--method", method, "--calib", "pydoc", "--nsamples", "4",
              "--seq_len", "16", "--blocksize", "16", "--steps", "2", "--out", str(out),
              *extra])
    model, _ = lm_eval.load_model(str(out))
    return model


def _np_int_grid(w, bits):
    """GPTQ's min-max grid including 0 per output channel (kernel [in, out])."""
    lo, hi = np.minimum(w.min(0), 0), np.maximum(w.max(0), 0)
    scale = (hi - lo) / (2 ** bits - 1)
    zero = np.round(-lo / scale)
    return scale * (np.clip(np.round(w / scale) + zero, 0, 2 ** bits - 1) - zero)


class One(nnx.Module):
    def __init__(self, k, n, quantizer, rngs):
        self.lin = QuantLinear(k, n, rngs=rngs, kernel_quantizer=quantizer)

    def __call__(self, x):
        return self.lin(x)


@pytest.mark.parametrize("sign_zero", [0, 1])
def test_gptq_pb_linear_is_plane_plus_mean_plus_sparse_8bit(sign_zero):
    spec = dict(name="pbllm_ptq_weight", salient_fraction=0.2, sign_zero=sign_zero)
    model = One(50, 24, spec, nnx.Rngs(0))
    lin = model.lin
    salient = np.asarray(lin.kernel_salient_mask[...]) != 0
    mu = np.asarray(lin.kernel_mu[...])
    assert np.min(np.abs(mu)) > 1e-3  # the offset term matters
    frozen, recs = export.freeze(model, strict=True)
    new = frozen.lin
    assert type(new) is FrozenPBLinear and recs[0].encoding == "binary + sparse 8-bit"
    assert new.w_sign[...].shape == (2, 24) and int(new.counts[...].sum()) == salient.sum()
    np.testing.assert_array_equal(np.asarray(new.offset[...]), mu.reshape(-1))
    # Its weights, restated: α·sign(W − μ) + μ off the mask, the 8-bit codes on it.
    w = np.asarray(lin.kernel[...])
    hs, hz = np.asarray(lin.kernel_high_scale[...]), np.asarray(lin.kernel_high_zero[...])
    high = hs * (np.clip(np.round(w / hs) + hz, 0, 255) - hz)
    sgn = np.sign(w - mu) if sign_zero == 0 else np.where(w >= mu, 1.0, -1.0)
    want_w = np.where(salient, high, np.asarray(lin.kernel_alpha[...]) * sgn + mu)
    x = np.asarray(jax.random.normal(jax.random.key(1), (3, 50)))
    _close(frozen(jnp.asarray(x)), x.astype(np.float64) @ want_w)
    _close(frozen(jnp.asarray(x)), model(jnp.asarray(x)))


def test_gptq_pb_weight_at_its_mean_is_refused():
    model = One(16, 8, dict(name="pbllm_ptq_weight", salient_fraction=0.1), nnx.Rngs(0))
    lin = model.lin
    salient = np.asarray(lin.kernel_salient_mask[...]) != 0
    r = int(np.nonzero(~salient[:, 0])[0][0])
    k = np.array(lin.kernel[...])
    k[r, 0] = np.asarray(lin.kernel_mu[...])[0, 0]  # sign(0) = 0: the weight is μ, not ±α + μ
    lin.kernel[...] = jnp.asarray(k)
    with pytest.raises(ValueError, match="strict=True.*sign_zero=1"):
        export.freeze(model, strict=True)


def test_two_bit_int_grid_is_two_bit_planes():
    model = One(40, 12, dict(name="int_weight", bits=2), nnx.Rngs(3))
    frozen, recs = export.freeze(model, strict=True)
    assert type(frozen.lin) is FrozenDBLinear and recs[0].plane_bytes == 2 * 4 * 2 * 12
    w = np.asarray(model.lin.kernel[...])
    x = np.asarray(jax.random.normal(jax.random.key(4), (3, 40)))
    _close(frozen(jnp.asarray(x)), x.astype(np.float64) @ _np_int_grid(w, 2))
    _close(frozen(jnp.asarray(x)), model(jnp.asarray(x)))


@pytest.mark.slow
@pytest.mark.parametrize("method,cls,extra", [
    ("pbllm_gptq", FrozenPBLinear, ["--salient", "0.2"]),
    ("dbllm", FrozenDBLinear, []),
    ("rtn", FrozenDBLinear, ["--bits", "2"])])
def test_frozen_compressed_llama(tmp_path, method, cls, extra):
    model = _compressed(tmp_path, method, *extra)
    frozen, recs = export.freeze(model, strict=True)
    assert len(recs) == 14 and all(r.frozen and r.kind == "QuantLinear" for r in recs)
    lins = [_at(frozen, r.path) for r in recs]
    assert all(type(m) is cls for m in lins)
    # One bit per weight per plane, columns padded to 32-bit words: 1 plane for PB-LLM, 2 else.
    planes = 1 if cls is FrozenPBLinear else 2
    assert [r.plane_bytes for r in recs] == [planes * 4 * -(-m.k // 32) * m.n for m in lins]
    if method == "rtn":  # the 2-bit grid, restated: the fake-quant kernel is on it
        lin = model.layers[0].mlp.up_proj
        np.testing.assert_allclose(np.asarray(lin.quantized_kernel()),
                                   _np_int_grid(np.asarray(lin.kernel[...]), 2), atol=1e-6)
    ids = jax.random.randint(jax.random.key(0), (2, 6), 0, 384)
    full = nnx.jit(lambda m, i: m(i))(frozen, ids)
    _close(full, nnx.jit(lambda m, i: m(i))(model, ids), rtol=RTOL)
    # Cached greedy decoding on the packed layers equals greedy steps of the full forward.
    out = generate.generate(frozen, ids[:, :3], max_new_tokens=3)
    seq = ids[:, :3]
    for _ in range(3):
        seq = jnp.concatenate([seq, jnp.argmax(frozen(seq)[:, -1], -1)[:, None]], axis=1)
    np.testing.assert_array_equal(np.asarray(out["tokens"]), np.asarray(seq[:, 3:]))
    _close(cached_decode(frozen, ids, 8), full, rtol=RTOL)


def _at(model, path):
    """The module at a record's path."""
    node = model
    for part in path.split("/"):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def test_wider_int_grid_is_refused_with_the_supported_forms():
    model = One(16, 8, dict(name="int_weight", bits=3), nnx.Rngs(0))
    frozen, recs = export.freeze(model)
    assert type(frozen.lin) is QuantLinear and not recs[0].frozen
    assert "3-bit grid has no packed form" in recs[0].reason
    assert "supported: 'int_weight' at <= 2 bits" in recs[0].reason
    with pytest.raises(ValueError, match="strict=True.*3-bit grid"):
        export.freeze(model, strict=True)

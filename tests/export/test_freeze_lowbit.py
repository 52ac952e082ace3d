"""freeze() of BitNet b1.58 (W1.58A8), PB-LLM and DB-LLM linears: frozen outputs equal the
fake-quant ones, a frozen LLaMA decoder matches its fake-quant logits and its cached decode
matches its own full forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import export
from bnn_jax.export.lowbit import FrozenBitLinear, FrozenDBLinear, FrozenPBLinear
from bnn_jax.models import llama
from bnn_jax.nn import QuantLinear
from bnn_jax.quant.pbllm import pbllm_prepare

BITNET = dict(input_quantizer="bitnet_act", kernel_quantizer="bitnet_weight")
PBLLM = dict(kernel_quantizer=dict(name="pbllm_weight", salient_fraction=0.1))
DBLLM = dict(kernel_quantizer="dbllm_fdb")
# Frozen and fake-quant outputs differ by float32 rounding (another summation order, and
# x_q·w_q vs the exact integer sum times both scales): relative to the output's scale.
RTOL = 2e-5


class One(nnx.Module):
    def __init__(self, k, n, quant, rngs, bias=True):
        self.lin = QuantLinear(k, n, use_bias=bias, rngs=rngs, **quant)

    def __call__(self, x):
        return self.lin(x)


def _prepare_pbllm(model):
    """What PB-LLM QAT does at the start: salient weights on their 8-bit grid."""
    for _, m in nnx.iter_graph(model):
        if isinstance(m, QuantLinear) and m.kernel_quantizer.name == "pbllm_weight":
            k, _ = pbllm_prepare(m.kernel[...], m.kernel_quantizer.params["salient_fraction"])
            m.kernel[...] = k


def _perturb_dbllm(model):
    """Learned FDB scales that are no longer the 2-bit initialisation."""
    for _, m in nnx.iter_graph(model):
        if isinstance(m, QuantLinear) and m.kernel_quantizer.name == "dbllm_fdb":
            m.kernel_alpha1[...] = m.kernel_alpha1[...] * 1.3
            m.kernel_offset[...] = m.kernel_offset[...] + 0.01


def _close(got, want, rtol=RTOL):
    got, want = np.asarray(got), np.asarray(want)
    err = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert err <= rtol, err


@pytest.mark.parametrize("fmt", ["base3", "2bit"])
def test_bitnet_linear(fmt):
    model = One(70, 37, BITNET, nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 3, 70))
    frozen, recs = export.freeze(model, trit_format=fmt)
    assert type(frozen.lin) is FrozenBitLinear
    assert recs[0].activations == "int8" and fmt in recs[0].encoding
    _close(frozen(x), model(x))
    # The int8 kernel sums integer codes: identical on the native and the XLA path.
    xla, _ = export.freeze(model, trit_format=fmt, backend="xla")
    np.testing.assert_array_equal(np.asarray(xla(x)), np.asarray(frozen(x)))


def test_bitnet_int_sum_is_exact():
    # (codes @ levels) computed independently in numpy, times both scales, is the frozen output.
    model = One(64, 16, BITNET, nnx.Rngs(2), bias=False)
    x = np.asarray(jax.random.normal(jax.random.key(3), (4, 64)))
    frozen, _ = export.freeze(model)
    s = 127.0 / np.maximum(np.abs(x).max(-1, keepdims=True), 1e-5)
    codes = np.clip(np.round(x.astype(np.float32) * s.astype(np.float32)), -128, 127)
    wq = np.asarray(model.lin.quantized_kernel())
    gamma = np.abs(wq).max()
    levels = np.round(wq / gamma).astype(np.int64)
    want = (codes.astype(np.int64) @ levels) * np.float32(gamma) / s.astype(np.float32)
    np.testing.assert_allclose(np.asarray(frozen(jnp.asarray(x))), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("granularity", ["matrix", "row"])
def test_pbllm_linear(granularity):
    quant = dict(kernel_quantizer=dict(name="pbllm_weight", salient_fraction=0.2,
                                       scale_granularity=granularity))
    model = One(50, 40, quant, nnx.Rngs(0))
    _prepare_pbllm(model)
    x = jax.random.normal(jax.random.key(1), (3, 50))
    frozen, recs = export.freeze(model)
    lin = frozen.lin
    assert type(lin) is FrozenPBLinear and lin.w_sign[...].shape == (2, 40)  # a 1-bit plane
    salient = np.asarray(model.lin.kernel_salient_mask[...]) != 0
    zeros = np.sum(~salient & (np.asarray(model.lin.quantized_kernel()) == 0))
    assert salient.sum() == round(0.2 * 50 * 40)
    assert int(lin.counts[...].sum()) == salient.sum() + zeros
    assert recs[0].plane_bytes == 2 * 40 * 4  # ceil(50/32) words per column
    _close(frozen(x), model(x))


def test_pbllm_zero_weights_are_sparse_entries():
    quant = dict(kernel_quantizer=dict(name="pbllm_weight", salient_fraction=0.1))
    model = One(40, 24, quant, nnx.Rngs(4))
    _prepare_pbllm(model)
    salient = np.asarray(model.lin.kernel_salient_mask[...]) != 0
    k = np.array(model.lin.kernel[...])
    k[~salient & (np.arange(k.size).reshape(k.shape) % 7 == 0)] = 0.0  # sign(0) = 0
    model.lin.kernel[...] = jnp.asarray(k)
    x = jax.random.normal(jax.random.key(5), (2, 40))
    frozen, _ = export.freeze(model)
    zeros = np.sum(~salient & (np.asarray(model.lin.quantized_kernel()) == 0))
    assert zeros >= 100 and int(frozen.lin.counts[...].sum()) == salient.sum() + zeros
    _close(frozen(x), model(x))


def test_pbllm_off_grid_salient_weights_stay_float():
    quant = dict(kernel_quantizer=dict(name="pbllm_weight", salient_fraction=0.1))
    model = One(40, 24, quant, nnx.Rngs(4))  # latent kernel never put on the 8-bit grid
    frozen, recs = export.freeze(model)
    assert type(frozen.lin) is QuantLinear and "8-bit grid" in recs[0].reason
    with pytest.raises(ValueError, match="strict=True.*8-bit grid"):
        export.freeze(model, strict=True)


def test_dbllm_linear():
    model = One(45, 30, DBLLM, nnx.Rngs(0))
    _perturb_dbllm(model)
    x = jax.random.normal(jax.random.key(1), (3, 45))
    frozen, recs = export.freeze(model)
    assert type(frozen.lin) is FrozenDBLinear and recs[0].plane_bytes == 2 * 2 * 30 * 4
    _close(frozen(x), model(x))


def test_unsupported_quantizer_names_the_supported_ones():
    model = One(8, 4, dict(kernel_quantizer=dict(name="dorefa", k_bit=2, mode="weights")),
                nnx.Rngs(0))
    _, recs = export.freeze(model)
    assert "unsupported kernel quantizer 'dorefa'" in recs[0].reason
    assert "supported:" in recs[0].reason and "'pbllm_weight'" in recs[0].reason
    with pytest.raises(ValueError, match="unsupported kernel quantizer 'dorefa'"):
        export.freeze(model, strict=True)
    with pytest.raises(ValueError, match="valid choices"):
        export.freeze(model, trit_format="base5")


def _decoder(quant, seed=0):
    model = llama.Model(vocab_size=50, max_len=8, rngs=nnx.Rngs(seed), hidden=32,
                        intermediate=48, num_layers=1, num_heads=4, num_kv_heads=2,
                        subln="rms" if quant is BITNET else None, **quant)
    _prepare_pbllm(model)
    _perturb_dbllm(model)
    return model


@pytest.mark.parametrize("quant", [
    pytest.param(BITNET, id="bitnet"), pytest.param(PBLLM, id="pbllm", marks=pytest.mark.slow),
    pytest.param(DBLLM, id="dbllm", marks=pytest.mark.slow)])
def test_frozen_decoder_logits_and_cached_decode(quant):
    model = _decoder(quant)
    ids = jax.random.randint(jax.random.key(1), (2, 5), 0, 50)
    frozen, recs = export.freeze(model, strict=True)
    assert len(recs) == 7 and all(r.frozen for r in recs)
    full = nnx.jit(lambda m, i: m(i))(frozen, ids)
    # A float32 difference in one layer's input can move an activation code across a rounding
    # boundary of the next BitNet layer: a larger tolerance there (a code step, not a bug).
    _close(full, nnx.jit(lambda m, i: m(i))(model, ids), rtol=1e-3 if quant is BITNET else RTOL)
    _close(cached_decode(frozen, ids, 8), full, rtol=RTOL)


def cached_decode(model, ids, max_len):
    """The logits of decoding ``ids [B, T]`` one token at a time through the KV cache."""
    b = ids.shape[0]
    step_fn = nnx.jit(lambda m, i, c, t, kv: m.decode(i, c, index=t, positions=jnp.full((b, 1), t),
                                                      kv_mask=kv))
    cache = model.init_cache(b, max_len)
    step = []
    for t in range(ids.shape[1]):
        kv_mask = jnp.arange(max_len)[None, :].repeat(b, 0) <= t
        logits, cache = step_fn(model, ids[:, t:t + 1], cache, jnp.asarray(t), kv_mask)
        step.append(logits)
    return jnp.concatenate(step, axis=1)


def test_save_refuses_lowbit_layers(tmp_path):
    frozen, _ = export.freeze(One(8, 4, BITNET, nnx.Rngs(0)))
    with pytest.raises(ValueError, match="does not store"):
        export.save(frozen, str(tmp_path / "m.npz"))


@pytest.mark.slow
def test_pbllm_large_non_square():
    quant = dict(kernel_quantizer=dict(name="pbllm_weight", salient_fraction=0.1))
    model = One(2048, 5504, quant, nnx.Rngs(0), bias=False)
    _prepare_pbllm(model)
    x = jax.random.normal(jax.random.key(1), (2, 2048))
    frozen, recs = export.freeze(model, strict=True)
    assert recs[0].frozen
    _close(frozen(x), model(x))

"""PB-LLM: 8-bit quantizer, QAT partial binarization and GPTQ-PB against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnn_jax.quant as q
from bnn_jax.quant import pbllm

RNG = np.random.default_rng(6)
f32 = np.float32


def np_asym8(w, axes, include_zero=False):
    lo, hi = w.min(axis=axes, keepdims=True), w.max(axis=axes, keepdims=True)
    if include_zero:
        lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
    scale = (hi - lo) / 255
    zp = np.round(-lo / scale)
    return scale * (np.clip(np.round(w / scale) + zp, 0, 255) - zp), scale


@pytest.mark.parametrize("shape,axis,axes", [((20, 4), -1, (0,)), ((3, 3, 2, 5), -1, (0, 1, 2)),
                                             ((6, 7), 0, (1,)), ((6, 7), None, None)])
@pytest.mark.parametrize("include_zero", [False, True])
def test_asym_fake_quant_matches_standard_formula(shape, axis, axes, include_zero):
    w = (RNG.normal(size=shape) + 0.7).astype(f32)  # rows not centred on 0
    y = np.asarray(q.asym_fake_quant(jnp.asarray(w), channel_axis=axis,
                                     include_zero=include_zero))
    expected, scale = np_asym8(w, axes, include_zero)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(y - w) <= 0.5 * scale * (1 + 1e-4))  # a true round-to-nearest grid
    # numpy input stays numpy and agrees
    np.testing.assert_allclose(pbllm.asym_fake_quant(w, channel_axis=axis,
                                                     include_zero=include_zero),
                               expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n,fraction", [(200, 0.1), (120, 0.25), (64, 0.5)])
def test_qat_salient_mask_counts(n, fraction):
    w = RNG.normal(size=(n // 4, 4)).astype(f32)
    mask = np.asarray(pbllm.qat_salient_mask(w, fraction))
    assert mask.sum() == round(n * fraction)
    order = np.sort(w.reshape(-1))
    k = round(n * fraction / 2)
    expected = (w <= order[k - 1]) | (w >= order[n - (round(n * fraction) - k)])
    np.testing.assert_array_equal(mask, expected)
    code = np.asarray(pbllm.qat_salient_mask(w, fraction, count_rule="code"))
    assert code.sum() == int(n * fraction / 2) - 1 + n - int(n * (1 - fraction / 2))


def np_pbllm(w, mask, g, granularity, train_salient):
    keep = ~mask
    if granularity == "matrix":
        s = np.abs(w[keep]).mean()
    else:
        s = (np.abs(w) * keep).sum(axis=0, keepdims=True) / keep.sum(axis=0, keepdims=True)
    y = np.where(mask, w, np.sign(w) * s)
    dw = np.where(mask, g if train_salient else 0, g * s)
    return y, dw


@pytest.mark.parametrize("granularity", ["matrix", "row"])
@pytest.mark.parametrize("train_salient", [False, True])
def test_pbllm_qat_weight(granularity, train_salient):
    w = RNG.normal(size=(16, 5)).astype(f32)
    w[3, 1] = 0.0
    quant = q.get("pbllm_weight", salient_fraction=0.2, scale_granularity=granularity,
                  train_salient=train_salient)
    mask = quant.init(jnp.asarray(w))["salient_mask"]
    assert mask.dtype == jnp.float32 and np.asarray(mask).sum() == 16
    g = RNG.normal(size=w.shape).astype(f32)
    y, vjp = jax.vjp(lambda w: quant(w, salient_mask=mask), jnp.asarray(w))
    ey, edw = np_pbllm(w, np.asarray(mask) != 0, g, granularity, train_salient)
    np.testing.assert_allclose(y, ey, rtol=1e-6)
    assert np.asarray(y)[3, 1] == 0.0  # sign(0) = 0
    np.testing.assert_allclose(vjp(jnp.asarray(g))[0], edw, rtol=1e-6)


def test_pbllm_mask_in_a_parameter_tree_gets_zero_gradient():
    w = jnp.asarray(RNG.normal(size=(8, 3)).astype(f32))
    quant = q.get("pbllm_weight", salient_fraction=0.25)
    params = {"kernel": w, **quant.init(w)}
    grads = jax.grad(lambda p: jnp.sum(quant(p["kernel"], salient_mask=p["salient_mask"])))(params)
    np.testing.assert_array_equal(grads["salient_mask"], 0)


def test_pbllm_prepare_and_fake_quant_salient():
    w = RNG.normal(size=(32, 4)).astype(f32)
    w8, mask = pbllm.pbllm_prepare(w, 0.25)
    np.testing.assert_allclose(w8, np_asym8(w, (0,))[0], rtol=1e-5, atol=1e-6)
    quant = q.get("pbllm_weight", salient_quant="fake_quant")
    y = np.asarray(quant(jnp.asarray(w), salient_mask=mask))
    m = np.asarray(mask)
    np.testing.assert_allclose(y[m], np.asarray(w8)[m], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# GPTQ-PB
# ---------------------------------------------------------------------------------------------

def layer(n_in=160, n_out=12, n=400):
    kernel = RNG.normal(size=(n_in, n_out)).astype(f32)
    mixing = RNG.normal(size=(n_in, n_in)) / np.sqrt(n_in) + np.eye(n_in)
    x = (RNG.normal(size=(n, n_in)) @ mixing).astype(f32)  # correlated inputs, as in LLMs
    return kernel, x


def err(x, kernel, kernel_hat):
    return np.linalg.norm(x.astype(np.float64) @ (kernel - kernel_hat))


@pytest.mark.parametrize("saliency", ["magnitude", "hessian"])
@pytest.mark.parametrize("fraction", [0.1, 0.25])
def test_gptq_pb_beats_plain_partial_binarization(saliency, fraction):
    kernel, x = layer()
    hat, mask, _ = q.gptq_pb(kernel, x, salient_fraction=fraction, saliency=saliency)
    rtn, mask_rtn, _ = q.gptq_pb(kernel, x, salient_fraction=fraction, saliency=saliency,
                                 use_gptq=False)
    assert mask.shape == kernel.shape and hat.shape == kernel.shape
    assert mask.sum() == round(fraction * kernel.size)  # exactly the requested fraction
    np.testing.assert_array_equal(mask, mask_rtn)
    assert err(x, kernel, hat) < 0.97 * err(x, kernel, rtn)


def test_gptq_pb_magnitude_mask_and_binary_values():
    kernel, x = layer(n_in=32, n_out=4)
    hat, mask, _ = q.gptq_pb(kernel, x, salient_fraction=0.25, use_gptq=False)
    order = np.sort(np.abs(kernel).reshape(-1))
    np.testing.assert_array_equal(mask, np.abs(kernel) >= order[-32])
    # Binarized entries of each output channel take the two values μ ± α of its binarizer.
    for j in range(4):
        assert len(np.unique(np.round(hat[~mask[:, j], j], 5))) <= 2
    count = q.gptq_pb(kernel, x, salient_fraction=0.25, count_rule="code")[1].sum()
    assert count == kernel.size - (int(kernel.size * 0.75) + 1)


def test_gptq_pb_without_binarized_columns_is_8bit():
    kernel, x = layer(n_in=40, n_out=6)
    rtn, mask, _ = q.gptq_pb(kernel, x, salient_fraction=1.0, use_gptq=False)
    assert mask.all()
    expected, _ = np_asym8(kernel.astype(np.float64), (0,), include_zero=True)
    np.testing.assert_allclose(rtn, expected, rtol=1e-6, atol=1e-7)
    hat, _, _ = q.gptq_pb(kernel, x, salient_fraction=1.0, blocksize=16, groupsize=None)
    lo = np.minimum(kernel.min(axis=0), 0)
    scale = (np.maximum(kernel.max(axis=0), 0) - lo) / 255
    codes = hat / scale + np.round(-lo / scale)
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)  # on each channel's grid
    assert codes.min() > -1e-3 and codes.max() < 255 + 1e-3
    assert err(x, kernel, hat) < err(x, kernel, rtn)


def test_gptq_pb_errors():
    kernel, x = layer(n_in=8, n_out=2, n=16)
    with pytest.raises(ValueError, match="saliency"):
        q.gptq_pb(kernel, x, salient_fraction=0.1, saliency="random")
    with pytest.raises(ValueError, match="features"):
        q.gptq_pb(kernel, x[:, :4], salient_fraction=0.1)


def ref_hessian(seqs):
    """gptq.py ``add_batch`` (lines 35-51), fed one sequence ``[1, seq, in]`` per call as
    run.py does (lines 155-156): a running mean over samples."""
    cols = seqs.shape[-1]
    H, nsamples = np.zeros((cols, cols)), 0
    for s in seqs:
        inp = s[None].astype(np.float64)
        tmp = inp.shape[0]
        inp = inp.reshape(-1, cols).T
        H *= nsamples / (nsamples + tmp)
        nsamples += tmp
        inp = np.sqrt(2 / nsamples) * inp
        H += inp @ inp.T
    return H


def ref_fasterquant(W, H, low_frac, blocksize, percdamp=0.01, salient_metric="magnitude"):
    """gptq.py ``fasterquant`` (lines 54-168) with LowQuantizer("xnor", groupsize=-1) and
    HighQuantizer(8, perchannel=True, sym=False), in float64. W is ``[out, in]``."""
    W, H = W.astype(np.float64).copy(), H.copy()
    rows, cols = W.shape
    # HighQuantizer.calibrate(W, weight=True): per row, range widened to contain 0.
    xmin, xmax = np.minimum(W.min(1), 0), np.maximum(W.max(1), 0)
    both0 = (xmin == 0) & (xmax == 0)
    xmin[both0], xmax[both0] = -1, 1
    scale = ((xmax - xmin) / 255)[:, None]
    zero = np.round(-xmin[:, None] / scale)

    def q_high(w):
        return scale[:, 0] * (np.clip(np.round(w / scale[:, 0]) + zero[:, 0], 0, 255) - zero[:, 0])

    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * np.mean(np.diag(H))
    H[np.arange(cols), np.arange(cols)] += damp
    Hinv = np.linalg.cholesky(np.linalg.inv(H)).T  # cholesky, cholesky_inverse, upper cholesky
    if salient_metric == "magnitude":
        sal = np.abs(W)
    else:
        sal = W ** 2 / np.diag(Hinv)[None, :] ** 2
    mask = sal <= np.sort(sal.reshape(-1))[int(sal.size * low_frac)]  # True = binarized
    wm = W * mask
    mean = wm.mean(-1, keepdims=True)  # LowQuantizer.calibrate("xnor")
    alpha = np.abs(wm - mean).mean(-1, keepdims=True)
    losses = np.zeros(rows)
    for c0 in range(0, cols, blocksize):
        c1 = min(c0 + blocksize, cols)
        W1, Q1, Err1 = W[:, c0:c1].copy(), np.zeros((rows, c1 - c0)), np.zeros((rows, c1 - c0))
        L1 = np.zeros_like(W1)
        Hinv1 = Hinv[c0:c1, c0:c1]
        for i in range(c1 - c0):
            w, d = W1[:, i], Hinv1[i, i]
            low = np.sign(w - mean[:, 0]) * alpha[:, 0] + mean[:, 0]
            q = np.where(mask[:, c0 + i], low, q_high(w))
            Q1[:, i] = q
            L1[:, i] = (w - q) ** 2 / d ** 2
            err = (w - q) / d
            W1[:, i:] -= np.outer(err, Hinv1[i, i:])
            Err1[:, i] = err
        W[:, c0:c1] = Q1
        losses += L1.sum(1) / 2
        W[:, c1:] -= Err1 @ Hinv[c0:c1, c1:]
    return W, mask, losses.sum()


@pytest.mark.parametrize("saliency", ["magnitude", "hessian"])
def test_gptq_pb_hessian_over_samples_and_dead_features_match_reference(saliency):
    n_in, n_out, samples, seq = 32, 6, 5, 7
    kernel = RNG.normal(size=(n_in, n_out)).astype(f32)
    x = RNG.normal(size=(samples, seq, n_in)).astype(f32)
    x[..., [3, 17]] = 0  # dead input features: H_dd = 0
    H = ref_hessian(x)
    np.testing.assert_allclose(pbllm.pb_hessian(x), H, rtol=1e-10, atol=1e-12)
    fraction = 0.25
    hat, salient, loss = q.gptq_pb(kernel, x, salient_fraction=fraction, saliency=saliency,
                                   blocksize=8, count_rule="code", binarizer_stats="code")
    ew, emask, eloss = ref_fasterquant(kernel.T, H, 1 - fraction, 8, salient_metric=saliency)
    np.testing.assert_array_equal(salient, ~emask.T)
    np.testing.assert_allclose(hat, ew.T.astype(f32), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss, eloss, rtol=1e-6)
    # Averaging over tokens instead divides H, and so the loss, by about seq.
    tok = q.gptq_pb(kernel, x, salient_fraction=fraction, saliency=saliency, blocksize=8,
                    count_rule="code", hessian_norm="tokens")[2]
    np.testing.assert_allclose(pbllm.pb_hessian(x, hessian_norm="tokens"), H / seq, rtol=1e-10,
                               atol=1e-12)
    assert abs(tok * seq / loss - 1) < 0.2


def test_pb_hessian_rejects_ambiguous_shapes():
    with pytest.raises(ValueError, match="samples, seq, in"):
        pbllm.pb_hessian(np.ones((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="hessian_norm"):
        pbllm.pb_hessian(np.ones((3, 4)), hessian_norm="rows")

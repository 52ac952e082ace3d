"""sign(0) conventions: methods on torch.sign default to 0 at 0 and take sign_zero=1 for +1."""

import inspect
import math

import jax.numpy as jnp
import numpy as np
import pytest

import bnn_jax.quant as q
from binarizer_oracles import np_sign, rand, vjp
from bnn_jax.quant.pbllm import gptq_pb
from bnn_jax.quant.registry import _REGISTRY
from bnn_jax.quant.tbt import elastic_quantize


def signs(v, sign_zero):
    return np.sign(v) if sign_zero == 0 else np_sign(v)


def with_zeros(shape, seed):
    x = rand(shape, seed)
    x.reshape(-1)[[0, 3]] = 0.0
    x.reshape(-1)[5] = -0.0
    return x


SIGN_ZERO_METHODS = ["tbt_weight", "tbt_act", "bibert_weight", "bibert_act", "bipft_weight",
                     "bipft_act", "binarydm_lmb", "binarydm_lmb1", "pbllm_weight",
                     "pbllm_ptq_weight"]


def test_every_sign_formula_states_its_convention():
    for name, e in _REGISTRY.items():
        if "sign(" in e.formula:
            assert "sign(0)=" in e.formula, name
        params = inspect.signature(e.fn).parameters
        if "sign_zero" in params:
            assert params["sign_zero"].default == 0, name  # the reference's torch.sign
            assert "sign_zero=1" in e.formula and name in SIGN_ZERO_METHODS, name
    assert all("sign_zero" in inspect.signature(_REGISTRY[n].fn).parameters
               for n in SIGN_ZERO_METHODS)


@pytest.mark.parametrize("name", SIGN_ZERO_METHODS)
def test_sign_zero_is_validated_with_the_choices(name):
    with pytest.raises(ValueError, match=r"sign_zero must be one of \[0, 1\]"):
        q.get(name, sign_zero=2)


def test_sign_zero_functions_validate():
    x = jnp.ones((2, 3))
    for call in (lambda: elastic_quantize(x, 1.0, sign_zero=-1),
                 lambda: q.bibert_sign(x, sign_zero=True),
                 lambda: gptq_pb(np.ones((4, 2)), np.ones((3, 4)), salient_fraction=0.0,
                                 sign_zero=5)):
        with pytest.raises(ValueError, match="sign_zero"):
            call()


@pytest.mark.parametrize("sign_zero", [0, 1])
def test_tbt_weight_and_act(sign_zero):
    w = with_zeros((6, 4), 1)
    y, (dw,), g = vjp(lambda a: q.get("tbt_weight", sign_zero=sign_zero)(a), w)
    np.testing.assert_allclose(y, np.abs(w).mean(0) * signs(w, sign_zero), rtol=1e-6)
    np.testing.assert_array_equal(dw, g)
    x = with_zeros((3, 5), 2)
    quant = q.get("tbt_act", sign_zero=sign_zero)
    y, (dx, da), g = vjp(lambda a, s: quant(a, alpha=s), x, np.float32(0.7))
    s = signs(x, sign_zero)
    np.testing.assert_allclose(y, 0.7 * s, rtol=1e-6)
    # dα = Σ g·sign(x) · 1/sqrt(N·Q_P), Q_P = 1: the same sign as the forward.
    np.testing.assert_allclose(da, np.sum(g * s) / math.sqrt(x.size), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sign_zero", [0, 1])
def test_bibert(sign_zero):
    w = rand((3, 4), 3)
    w[:, 1] = [1.0, 2.0, 3.0]  # centred column: -1, 0, 1
    y = q.get("bibert_weight", sign_zero=sign_zero)(jnp.asarray(w))
    c = w - w.mean(0)
    assert c[1, 1] == 0
    np.testing.assert_allclose(y, np.abs(w).mean(0) * signs(c, sign_zero), rtol=1e-6)
    x = with_zeros((4, 3), 4)
    np.testing.assert_array_equal(q.get("bibert_act", sign_zero=sign_zero)(jnp.asarray(x)),
                                  signs(x, sign_zero))
    qq, k, v = with_zeros((1, 2, 4), 5), rand((1, 3, 4), 6), with_zeros((1, 3, 4), 7)
    ctx, att = q.bi_attention(qq, k, v, sign_zero=sign_zero)
    scores = signs(qq, sign_zero) @ signs(k, sign_zero).swapaxes(-1, -2) / 2.0
    np.testing.assert_allclose(att, (scores > 0).astype(np.float32))
    np.testing.assert_allclose(ctx, (scores > 0) @ signs(v, sign_zero), rtol=1e-6)


@pytest.mark.parametrize("sign_zero", [0, 1])
def test_bipft(sign_zero):
    w = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 3.0]], np.float32)  # mean 3: two exact zeros
    y = q.get("bipft_weight", sign_zero=sign_zero)(jnp.asarray(w))
    np.testing.assert_allclose(y, np.abs(w).mean() * signs(w - 3.0, sign_zero), rtol=1e-6)
    x = rand((2, 4), 8)
    shift = -x[0].copy()  # x + b == 0 on the first row
    y = q.get("bipft_act", sign_zero=sign_zero)(jnp.asarray(x), alpha=jnp.float32(0.5),
                                               shift=jnp.asarray(shift))
    np.testing.assert_allclose(y, 0.5 * signs(x + shift, sign_zero), rtol=1e-6)


@pytest.mark.parametrize("sign_zero", [0, 1])
def test_binarydm_lmb(sign_zero):
    w = with_zeros((5, 3), 9)
    s1 = np.abs(w).mean(0, keepdims=True)
    S = lambda v: signs(v, sign_zero)  # noqa: E731
    s2 = np.abs(w - s1 * S(w)).mean(0, keepdims=True)
    quant = q.get("binarydm_lmb", sign_zero=sign_zero)
    init = quant.init(jnp.asarray(w))
    np.testing.assert_allclose(init["sigma2"], s2, rtol=1e-6)
    y = quant(jnp.asarray(w), **init)
    first = s1 * S(w)
    np.testing.assert_allclose(y, first + s2 * S(w - first), rtol=1e-6)
    y1 = q.get("binarydm_lmb1", sign_zero=sign_zero)(jnp.asarray(w), sigma1=jnp.asarray(s1))
    np.testing.assert_allclose(y1, s1 * S(w), rtol=1e-6)


@pytest.mark.parametrize("sign_zero", [0, 1])
def test_pbllm(sign_zero):
    w = with_zeros((4, 5), 10)
    mask = np.zeros_like(w)
    mask[1, 2] = 1.0
    y = q.get("pbllm_weight", sign_zero=sign_zero)(jnp.asarray(w), salient_mask=mask)
    scale = np.abs(w)[mask == 0].mean()
    np.testing.assert_allclose(y, np.where(mask == 1, w, scale * signs(w, sign_zero)), rtol=1e-6)
    # GPTQ-PB's binarizer: one output row [-1, 0, 1 | 5 salient], masked stats μ = 0, α = 2/3.
    kernel = np.array([[-1.0], [0.0], [1.0], [5.0]], np.float32)
    x = rand((16, 4), 11)
    got, salient, _ = gptq_pb(kernel, x, salient_fraction=0.25, use_gptq=False,
                              binarizer_stats="masked", sign_zero=sign_zero)
    assert salient[:, 0].tolist() == [False, False, False, True]
    np.testing.assert_allclose(got[:3, 0], [-2 / 3, 2 / 3 * sign_zero, 2 / 3], rtol=1e-6)

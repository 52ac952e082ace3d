"""QuantLinear/QuantConv against larq's QuantDense, QuantConv2D, QuantDepthwiseConv2D, tiny_bnn."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax.nn import (QuantConv, QuantEinsum, QuantLinear, QuantLinearGeneral,
                        apply_constraints)
from conftest import ORACLE


BIN = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", kernel_constraint="weight_clip")


def _o(key):
    return jnp.asarray(ORACLE[key])


def _grads(layer, x, dy):
    """(y, dL/dx, dL/dparams) for L = sum(y * dy)."""
    def loss(layer, x):
        return jnp.sum(layer(x) * dy)

    (dlayer, dx) = nnx.jit(nnx.grad(loss, argnums=(0, 1)))(layer, x)
    return dx, dlayer


def _close(a, b):
    # Gradients are float sums of ~100 terms in another order than TF's: a few ulps of |terms|.
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_quant_linear_matches_larq_quant_dense():
    p = "layer/quant_dense_64x32/"
    layer = QuantLinear(64, 32, **BIN, rngs=nnx.Rngs(0))
    layer.kernel[...] = _o(p + "param/kernel")
    layer.bias[...] = _o(p + "param/bias")
    x = _o(p + "x")
    np.testing.assert_array_equal(layer.quantized_kernel(), ORACLE[p + "param_quantized/kernel"])
    # sign(x) @ sign(W) is an exact integer; adding the bias is one rounding in both libraries.
    np.testing.assert_array_equal(layer(x), ORACLE[p + "y"])
    for kind, dy in (("rand", _o(p + "dy_rand")), ("ones", jnp.ones((3, 32)))):
        dx, dl = _grads(layer, x, dy)
        _close(dx, ORACLE[p + f"grad_{kind}/x"])
        _close(dl.kernel[...], ORACLE[p + f"grad_{kind}/kernel"])
        _close(dl.bias[...], ORACLE[p + f"grad_{kind}/bias"])


CONV_CASES = {
    "quant_conv2d_3x3_8x8x16_same_pad0": dict(padding="SAME", pad_values=0.0, strides=1),
    "quant_conv2d_3x3_8x8x16_same_pad1": dict(padding="SAME", pad_values=1.0, strides=1),
    "quant_conv2d_3x3_8x8x16_valid_stride2": dict(padding="VALID", strides=2),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_quant_conv_matches_larq_quant_conv2d(case):
    p = f"layer/{case}/"
    layer = QuantConv(16, 8, (3, 3), use_bias=False, **CONV_CASES[case], **BIN,
                      rngs=nnx.Rngs(0))
    layer.kernel[...] = _o(p + "param/kernel")
    x = _o(p + "x")
    np.testing.assert_array_equal(layer.quantized_kernel(), ORACLE[p + "param_quantized/kernel"])
    y = layer(x)
    assert y.shape == ORACLE[p + "y"].shape
    np.testing.assert_array_equal(y, ORACLE[p + "y"])  # sums of +-1: exact integers
    for kind, dy in (("rand", _o(p + "dy_rand")), ("ones", jnp.ones(y.shape))):
        dx, dl = _grads(layer, x, dy)
        _close(dx, ORACLE[p + f"grad_{kind}/x"])
        _close(dl.kernel[...], ORACLE[p + f"grad_{kind}/kernel"])


def test_pad_values_differ_from_zero_padding():
    # The two oracle cases share nothing but the layout; on one input, pad 1 and pad 0 must differ
    # exactly at the border and agree in the interior.
    p = "layer/quant_conv2d_3x3_8x8x16_same_pad1/"
    x, k = _o(p + "x"), _o(p + "param/kernel")
    outs = []
    for pv in (0.0, 1.0):
        layer = QuantConv(16, 8, (3, 3), use_bias=False, pad_values=pv, **BIN, rngs=nnx.Rngs(0))
        layer.kernel[...] = k
        outs.append(np.asarray(layer(x)))
    np.testing.assert_array_equal(outs[0][:, 1:-1, 1:-1], outs[1][:, 1:-1, 1:-1])
    border_diff = outs[1] - outs[0]
    # Each padded +1 adds sign(W) of the tap it meets: top-left corner gets 5 padded taps.
    corner = np.sign(np.where(np.asarray(k) >= 0, 1, -1))
    expect = corner[0, :, :, :].sum(axis=(0, 1)) + corner[1:, 0, :, :].sum(axis=(0, 1))
    np.testing.assert_array_equal(border_diff[0, 0, 0], expect)


def test_quant_depthwise_conv_matches_larq():
    p = "layer/quant_depthwise_3x3_8x8x16_same_pad1/"
    layer = QuantConv(16, 16, (3, 3), padding="SAME", pad_values=1.0, feature_group_count=16,
                      use_bias=False, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                      rngs=nnx.Rngs(0))
    # Keras depthwise kernel (kh, kw, in, multiplier) -> grouped HWIO (kh, kw, 1, in*multiplier).
    to_hwio = lambda a: jnp.reshape(a, (3, 3, 1, 16))  # noqa: E731
    layer.kernel[...] = to_hwio(_o(p + "param/depthwise_kernel"))
    x = _o(p + "x")
    np.testing.assert_array_equal(layer.quantized_kernel(),
                                  to_hwio(_o(p + "param_quantized/depthwise_kernel")))
    y = layer(x)
    np.testing.assert_array_equal(y, ORACLE[p + "y"])
    for kind, dy in (("rand", _o(p + "dy_rand")), ("ones", jnp.ones(y.shape))):
        dx, dl = _grads(layer, x, dy)
        _close(dx, ORACLE[p + f"grad_{kind}/x"])
        _close(dl.kernel[...], to_hwio(_o(p + f"grad_{kind}/depthwise_kernel")))


# ---------------------------------------------------------------------------------------------
# tiny_bnn end to end: conv -> batch norm -> conv (stride 2) -> flatten -> dense
# ---------------------------------------------------------------------------------------------


class TinyBNN(nnx.Module):
    def __init__(self, rngs):
        conv = dict(padding="SAME", pad_values=1.0, use_bias=False, **BIN)
        self.conv1 = QuantConv(16, 16, (3, 3), **conv, rngs=rngs)
        self.bn1 = nnx.BatchNorm(16, momentum=0.9, epsilon=1e-3, rngs=rngs)
        self.conv2 = QuantConv(16, 4, (3, 3), strides=2, **conv, rngs=rngs)
        self.dense = QuantLinear(64, 32, **BIN, rngs=rngs)

    def __call__(self, x):
        acts = {"conv1": self.conv1(x)}
        acts["bn1"] = self.bn1(acts["conv1"])
        acts["conv2"] = self.conv2(acts["bn1"])
        acts["flatten"] = acts["conv2"].reshape(x.shape[0], -1)
        acts["dense"] = self.dense(acts["flatten"])
        return acts


def _tiny_model():
    p = "model/tiny_bnn/param/"
    m = TinyBNN(nnx.Rngs(0))
    m.conv1.kernel[...] = _o(p + "conv1/kernel")
    m.conv2.kernel[...] = _o(p + "conv2/kernel")
    m.dense.kernel[...] = _o(p + "dense/kernel")
    m.dense.bias[...] = _o(p + "dense/bias")
    m.bn1.scale[...] = _o(p + "bn1/gamma")
    m.bn1.bias[...] = _o(p + "bn1/beta")
    m.bn1.mean[...] = _o(p + "bn1/moving_mean")
    m.bn1.var[...] = _o(p + "bn1/moving_variance")
    return m


PARAMS = {"conv1/kernel": ("conv1", "kernel"), "bn1/gamma": ("bn1", "scale"),
          "bn1/beta": ("bn1", "bias"), "conv2/kernel": ("conv2", "kernel"),
          "dense/kernel": ("dense", "kernel"), "dense/bias": ("dense", "bias")}


def _param(tree, name):
    mod, attr = PARAMS[name]
    return getattr(getattr(tree, mod), attr)[...]


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_tiny_bnn_end_to_end(mode):
    p = f"model/tiny_bnn/{mode}/"
    m = _tiny_model()
    m.train() if mode == "train" else m.eval()
    x = _o("model/tiny_bnn/x")
    for name in ("conv1", "conv2", "dense"):
        np.testing.assert_array_equal(getattr(m, name).quantized_kernel(),
                                      ORACLE[f"model/tiny_bnn/param_quantized/{name}/kernel"])

    @nnx.jit
    def run(m, x, dy):
        def loss(m, x):
            acts = m(x)
            return jnp.sum(acts["dense"] * dy), acts

        (dm, dx), acts = nnx.grad(loss, argnums=(0, 1), has_aux=True)(m, x)
        return acts, dm, dx

    for kind in ("rand", "ones"):
        dy = _o(p + "dy_rand") if kind == "rand" else jnp.ones((2, 32))
        m = _tiny_model()
        m.train() if mode == "train" else m.eval()
        acts, dm, dx = run(m, x, dy)
        np.testing.assert_array_equal(acts["conv1"], ORACLE[p + "act/conv1"])
        for name in ("bn1", "conv2", "flatten", "dense"):
            np.testing.assert_allclose(acts[name], ORACLE[p + f"act/{name}"], rtol=1e-5,
                                       atol=1e-5)
        # conv2 sums +-1 products; bn1 agrees up to rounding, so its signs and conv2 are exact.
        np.testing.assert_array_equal(acts["conv2"], ORACLE[p + "act/conv2"])
        np.testing.assert_allclose(dx, ORACLE[p + f"grad_{kind}/x"], rtol=1e-4, atol=1e-5)
        for name in PARAMS:
            np.testing.assert_allclose(_param(dm, name), ORACLE[p + f"grad_{kind}/{name}"],
                                       rtol=1e-4, atol=1e-5, err_msg=name)


def test_tiny_bnn_moving_statistics():
    m = _tiny_model()
    old_mean, old_var = np.asarray(m.bn1.mean[...]), np.asarray(m.bn1.var[...])
    m.train()
    acts = m(_o("model/tiny_bnn/x"))
    np.testing.assert_allclose(m.bn1.mean[...],
                               ORACLE["model/tiny_bnn/train/bn1_moving_mean_after"],
                               rtol=1e-6, atol=1e-6)
    # Keras/TF updates the moving variance with the unbiased (n/(n-1)) batch variance; Flax uses
    # the biased one. Check Flax's batch variance, then that the Bessel factor is the only gap.
    c1 = np.asarray(acts["conv1"], np.float64)
    n = c1.shape[0] * c1.shape[1] * c1.shape[2]
    biased = c1.var(axis=(0, 1, 2))
    np.testing.assert_allclose(m.bn1.var[...], 0.9 * old_var + 0.1 * biased, rtol=1e-5)
    np.testing.assert_allclose(0.9 * old_var + 0.1 * biased * n / (n - 1),
                               ORACLE["model/tiny_bnn/train/bn1_moving_variance_after"], rtol=1e-5)
    assert not np.allclose(old_mean, m.bn1.mean[...])


def test_tiny_bnn_sgd_step_with_weight_clip():
    p = "model/tiny_bnn/"
    m = _tiny_model()
    m.eval()
    dy = _o(p + "infer/dy_rand")

    @nnx.jit
    def step(m, x):
        g = nnx.grad(lambda m: jnp.sum(m(x)["dense"] * dy))(m)
        params = nnx.state(m, nnx.Param)
        nnx.update(m, jax.tree.map(lambda w, d: w - 0.5 * d, params, g))
        return apply_constraints(m)

    n = step(m, _o(p + "x"))
    assert n == 3
    for name in PARAMS:
        after = np.asarray(_param(m, name))
        np.testing.assert_allclose(after, ORACLE[p + f"after_sgd_step/{name}"], rtol=1e-5,
                                   atol=1e-6, err_msg=name)
    # The step must actually have hit the clip (otherwise the constraint test tests nothing).
    assert np.max(np.abs(np.asarray(m.conv1.kernel[...]))) == 1.0


# ---------------------------------------------------------------------------------------------
# Options beyond the oracle, against direct computations written here
# ---------------------------------------------------------------------------------------------


def _sign(a):
    return np.where(a >= 0, 1.0, -1.0).astype(np.float32)


def _np_conv(x, w, stride, pads, dil=1, groups=1, pad_value=0.0):
    """Direct loop convolution on NHWC / HWIO after explicit constant padding."""
    x = np.pad(x, [(0, 0), pads[0], pads[1], (0, 0)], constant_values=pad_value)
    kh, kw, cin_g, cout = w.shape
    ho = (x.shape[1] - (kh - 1) * dil - 1) // stride + 1
    wo = (x.shape[2] - (kw - 1) * dil - 1) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, cout), np.float64)
    cout_g = cout // groups
    for o in range(cout):
        g = o // cout_g
        for i in range(ho):
            for j in range(wo):
                patch = x[:, i * stride:i * stride + (kh - 1) * dil + 1:dil,
                          j * stride:j * stride + (kw - 1) * dil + 1:dil,
                          g * cin_g:(g + 1) * cin_g]
                out[:, i, j, o] = np.einsum("nhwc,hwc->n", patch, w[..., o])
    return out


def test_quant_conv_groups_dilation_against_loops():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 6, 4)).astype(np.float32)
    layer = QuantConv(4, 6, (3, 2), strides=1, kernel_dilation=2, padding=((2, 1), (1, 0)),
                      pad_values=-1.0, feature_group_count=2, use_bias=True, **BIN,
                      rngs=nnx.Rngs(1))
    layer.bias[...] = jnp.asarray(rng.standard_normal(6).astype(np.float32))
    w = np.asarray(layer.kernel[...])
    want = _np_conv(_sign(x), _sign(w), 1, [(2, 1), (1, 0)], dil=2, groups=2,
                    pad_value=-1.0) + np.asarray(layer.bias[...])
    np.testing.assert_allclose(layer(jnp.asarray(x)), want, rtol=1e-6, atol=1e-6)
    # Gradients under nnx.jit against a reference written with lax and the detach trick.
    ste = lambda t: jax.lax.stop_gradient(jnp.where(t >= 0, 1.0, -1.0) - t) + t  # noqa: E731

    def ref(x, w):
        xq = ste(x) * (jnp.abs(x) <= 1) + jax.lax.stop_gradient(ste(x)) * (jnp.abs(x) > 1)
        wq = ste(w) * (jnp.abs(w) <= 1) + jax.lax.stop_gradient(ste(w)) * (jnp.abs(w) > 1)
        xp = jnp.pad(xq, [(0, 0), (2, 1), (1, 0), (0, 0)], constant_values=-1.0)
        return jax.lax.conv_general_dilated(xp, wq, (1, 1), "VALID", rhs_dilation=(2, 2),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=2)

    dy = jnp.asarray(rng.standard_normal(want.shape).astype(np.float32))
    dx, dl = _grads(layer, jnp.asarray(x), dy)
    rx, rw = jax.jit(jax.grad(lambda x, w: jnp.sum(ref(x, w) * dy), argnums=(0, 1)))(
        jnp.asarray(x), layer.kernel[...])
    np.testing.assert_allclose(dx, rx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dl.kernel[...], rw, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dl.bias[...], np.asarray(dy).sum((0, 1, 2)), rtol=1e-5)
    assert np.any(np.asarray(dx) == 0) and np.any(np.asarray(dx) != 0)


def test_quant_conv_1d_causal_and_batchless():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((9, 3)).astype(np.float32)  # no batch axis, like nnx.Conv allows
    layer = QuantConv(3, 2, 3, padding="CAUSAL", use_bias=False, **BIN, rngs=nnx.Rngs(3))
    w = _sign(np.asarray(layer.kernel[...]))
    xs = np.pad(_sign(x), [(2, 0), (0, 0)])
    want = np.stack([np.einsum("kc,kco->o", xs[t:t + 3], w) for t in range(9)])
    y = layer(jnp.asarray(x))
    assert y.shape == (9, 2)
    np.testing.assert_array_equal(y, want)


def test_full_precision_layers_equal_nnx():
    rngs = nnx.Rngs(0)
    x = jax.random.normal(jax.random.key(1), (2, 5, 5, 3))
    ref = nnx.Conv(3, 4, (3, 3), strides=2, padding="CIRCULAR", rngs=rngs)
    q = QuantConv(3, 4, (3, 3), strides=2, padding="CIRCULAR", kernel=ref.kernel, bias=ref.bias)
    np.testing.assert_array_equal(q(x), ref(x))
    lin = nnx.Linear(3, 2, rngs=rngs)
    np.testing.assert_array_equal(QuantLinear(3, 2, kernel=lin.kernel, bias=lin.bias)(x),
                                  lin(x))
    ein = nnx.Einsum("nhwc,cd->nhwd", (3, 2), (2,), rngs=rngs)
    np.testing.assert_array_equal(
        QuantEinsum("nhwc,cd->nhwd", (3, 2), (2,), kernel=ein.kernel, bias=ein.bias)(x), ein(x))


def test_quant_einsum_against_numpy():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    layer = QuantEinsum("btd,dhk->bthk", (4, 2, 3), (2, 3), input_quantizer="ste_sign",
                        kernel_quantizer="ste_sign", rngs=nnx.Rngs(0))
    w, b = np.asarray(layer.kernel[...]), np.asarray(layer.bias[...])
    want = np.einsum("btd,dhk->bthk", _sign(x), _sign(w)) + b
    np.testing.assert_allclose(layer(jnp.asarray(x)), want, rtol=1e-6, atol=1e-6)
    dy = rng.standard_normal(want.shape).astype(np.float32)
    dx, dl = _grads(layer, jnp.asarray(x), jnp.asarray(dy))
    # Clipped STE on both operands (|.| <= 1 passes).
    np.testing.assert_allclose(dx, np.einsum("bthk,dhk->btd", dy, _sign(w)) * (np.abs(x) <= 1),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dl.kernel[...],
                               np.einsum("btd,bthk->dhk", _sign(x), dy) * (np.abs(w) <= 1),
                               rtol=1e-5, atol=1e-6)


def test_learned_quantizer_state_is_initialised_and_trained():
    from bnn_jax.quant.registry import Quantizer

    # A quantizer with learned arrays written here (scaled sign with a learned per-channel alpha
    # initialised to mean|x|): the layers must hold it as nnx.Param and differentiate it.
    def fn(x, *, alpha, clip_value=1.0):
        return jnp.where(x >= 0, 1.0, -1.0) * alpha

    q = Quantizer(fn=fn, name="test_scaled_sign", params={"clip_value": 1.0},
                  learned=("alpha",), init_fn=lambda x, **_: {"alpha": jnp.mean(jnp.abs(x), 0)})
    layer = QuantLinear(4, 3, input_quantizer=q, kernel_quantizer=q, rngs=nnx.Rngs(0))
    w = np.asarray(layer.kernel[...])
    np.testing.assert_allclose(layer.kernel_alpha[...], np.abs(w).mean(0), rtol=1e-6)
    assert not hasattr(layer, "input_alpha")
    x = jnp.asarray(np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32))
    y = nnx.jit(lambda m, x: m(x))(layer, x)
    a_in = np.abs(np.asarray(x)).mean(0)
    np.testing.assert_allclose(layer.input_alpha[...], a_in, rtol=1e-6)
    want = (_sign(np.asarray(x)) * a_in) @ (_sign(w) * np.abs(w).mean(0)) + np.asarray(
        layer.bias[...])
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    g = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x))))(layer)
    # d sum(y) / d alpha_in[i] = sum_n sign(x[n,i]) * sum_o Wq[i,o]
    np.testing.assert_allclose(g.input_alpha[...],
                               _sign(np.asarray(x)).sum(0) * (_sign(w) * np.abs(w).mean(0)).sum(1),
                               rtol=1e-5)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown quantizer 'ste_sgn'"):
        QuantLinear(2, 2, kernel_quantizer="ste_sgn", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="kernel_constraint must be a constraint"):
        QuantLinear(2, 2, kernel_constraint="ste_sign", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="padding must be one of"):
        QuantConv(2, 2, 3, padding="FULL", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="pad_values other than 0 cannot be combined with "
                                         "CIRCULAR"):
        QuantConv(2, 2, 3, padding="circular", pad_values=1.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="feature_group_count"):
        QuantConv(4, 6, 3, feature_group_count=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"kernel \(HWIO\) has shape \(3, 3, 4, 6\), expected "
                                         r"\(3, 3, 2, 6\)"):
        QuantConv(2, 6, (3, 3), kernel=nnx.Param(jnp.ones((3, 3, 4, 6))))
    # A wrong input must fail before its first call creates learned arrays of its shape.
    lin = QuantLinear(4, 2, input_quantizer="rsign", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"input of shape \(3, 5\), the last axis must be "
                                         r"in_features=4"):
        lin(jnp.ones((3, 5)))
    assert lin.learned_pending() and lin(jnp.ones((3, 4))).shape == (3, 2)
    with pytest.raises(ValueError, match=r"QuantConv: input of shape \(1, 5, 5, 3\)"):
        QuantConv(4, 2, (3, 3), rngs=nnx.Rngs(0))(jnp.ones((1, 5, 5, 3)))
    with pytest.raises(ValueError, match=r"QuantConv: input of shape \(5, 4\)"):
        QuantConv(4, 2, (3, 3), rngs=nnx.Rngs(0))(jnp.ones((5, 4)))
    gen = QuantLinearGeneral((2, 3), 4, axis=(-2, -1), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"sizes \(3, 2\) on axes \(1, 2\), expected "
                                         r"in_features=\(2, 3\)"):
        gen(jnp.ones((1, 3, 2)))
    with pytest.raises(ValueError, match="does not fit an input of rank 1"):
        gen(jnp.ones((6,)))
    ein = QuantEinsum("btd,dk->btk", (4, 2), input_quantizer="rsign", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"input of shape \(1, 2, 5\) does not fit"):
        ein(jnp.ones((1, 2, 5)))
    assert ein.learned_pending() and ein(jnp.ones((1, 2, 4))).shape == (1, 2, 2)
    # A bias of the wrong shape would broadcast silently into a wrong output.
    with pytest.raises(ValueError, match=r"QuantLinear: bias has shape \(1,\), expected \(2,\)"):
        QuantLinear(3, 2, bias=nnx.Param(jnp.ones((1,))), rngs=nnx.Rngs(0))


def test_first_call_inside_grad_initialises_without_leaking_gradient():
    x = jnp.asarray(np.random.default_rng(9).standard_normal((6, 4)).astype(np.float32))
    dx_first = {}
    for call in ("first", "second"):
        layer = QuantLinear(4, 3, input_quantizer=dict(name="lsq", bits=2), rngs=nnx.Rngs(0))
        if call == "second":
            layer(x)  # create input_step eagerly first
        dx_first[call] = nnx.jit(nnx.grad(lambda m, x: jnp.sum(m(x) ** 2), argnums=1))(layer, x)
        np.testing.assert_allclose(layer.input_step[...],
                                   2 * np.abs(np.asarray(x)).mean() / np.sqrt(1), rtol=1e-6)
    # The init rule's dependence on x must not add a gradient path on the first call.
    np.testing.assert_allclose(dx_first["first"], dx_first["second"], rtol=1e-6)


class _LearnedNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = QuantConv(3, 4, (3, 3), input_quantizer="rsign", kernel_quantizer="ste_sign",
                              rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.fc = QuantLinear(4, 2, input_quantizer=dict(name="lsq", bits=2), rngs=rngs)

    def __call__(self, x, *, pool=True):
        y = self.bn(self.conv(x))
        return self.fc(y.mean((1, 2)) if pool else y[:, 0, 0])


def test_initialize_creates_learned_arrays_from_data_and_restores_statistics():
    from bnn_jax.nn import initialize, pending_learned

    m = _LearnedNet(nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 5, 5, 3)).astype(np.float32))
    assert pending_learned(m) == ["conv", "fc"]
    mean_before = np.asarray(m.bn.mean[...])
    assert initialize(m, x, pool=True) == ["conv", "fc"]
    assert pending_learned(m) == [] and initialize(m, x) == []
    np.testing.assert_array_equal(m.bn.mean[...], mean_before)  # BN statistics put back
    np.testing.assert_array_equal(m.conv.input_beta[...], np.zeros(3))  # RSign: beta = 0
    # LSQ's step comes from the data that reached fc in train mode (batch statistics in BN).
    h = nnx.jit(lambda m, x: m.bn(m.conv(x)).mean((1, 2)))(m, x)
    np.testing.assert_allclose(m.fc.input_step[...], 2 * np.abs(np.asarray(h)).mean(),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="not called"):
        m2 = _LearnedNet(nnx.Rngs(1))
        m2.extra = QuantLinear(2, 2, input_quantizer=dict(name="lsq", bits=2),
                               rngs=nnx.Rngs(0))
        initialize(m2, x)


def _registry_names(learned_only):
    from bnn_jax import quant

    names = quant.names("quantizer")
    return [n for n in names if quant.entry(n).signature()[1]] if learned_only else names


def _check_quantizer_in_layer(name, role):
    """A QuantConv with ``name`` as its input or kernel quantizer initializes, runs under nnx.jit
    and has finite gradients for every parameter, learned quantizer arrays included."""
    from bnn_jax import quant
    from bnn_jax.nn import initialize

    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 5, 4)).astype(np.float32))

    class Net(nnx.Module):
        def __init__(self):
            self.conv = QuantConv(4, 8, (3, 3), rngs=nnx.Rngs(0), **{f"{role}_quantizer": name})

        def __call__(self, x):
            return self.conv(x)

    net = Net()
    initialize(net, x)
    learned = quant.entry(name).signature()[1]
    for n in learned:
        assert isinstance(getattr(net.conv, f"{role}_{n}"), nnx.Param)
    g = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x) ** 2)))(net)
    for leaf in jax.tree.leaves(nnx.state(g)):
        assert np.all(np.isfinite(np.asarray(leaf)))
    assert np.any(np.asarray(g.conv.kernel[...]) != 0) or role == "input"


# Learned-state quantizers not exercised by the other nn tests (LSQ, RSign, BiViT, BiPFT are);
# the slow test below runs the whole registry.
@pytest.mark.parametrize("role", ["input", "kernel"])
@pytest.mark.parametrize("name", ["lsq_plus", "binarydm_lmb", "pbllm_weight", "dbllm_fdb"])
def test_registered_quantizers_with_learned_state_work_in_layers(name, role):
    assert name in _registry_names(learned_only=True)
    _check_quantizer_in_layer(name, role)


@pytest.mark.slow
@pytest.mark.parametrize("role", ["input", "kernel"])
@pytest.mark.parametrize("name", _registry_names(learned_only=False))
def test_every_registered_quantizer_works_in_layers(name, role):
    _check_quantizer_in_layer(name, role)

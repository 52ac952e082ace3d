"""LSQ / LSQ+ against numpy implementations of methods.md §1.6-1.7 (OFQ's LSQ as the code)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

import bnn_jax.quant as q
from binarizer_oracles import edges, rand, vjp


def qrange(bits, signed):
    return (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def np_lsq(x, s, offset, bits, signed, boundary):
    """Forward, dx, ds (per element, before the sum) and d offset of LSQ(+), without g."""
    qn, qp = qrange(bits, signed)
    s = np.maximum(s, 1e-5)
    v = (x - offset) / s
    c = np.clip(v, -qn, qp)
    inside = (v >= -qn) & (v <= qp) if boundary == "inclusive" else (v > -qn) & (v < qp)
    y = np.round(c) * s + offset
    ds = np.round(c) - v * inside  # round(v) - v inside, -Q_N / Q_P outside
    return y, inside.astype(np.float64), ds, 1.0 - inside


@pytest.mark.parametrize("bits,signed", [(2, True), (3, True), (4, False)])
@pytest.mark.parametrize("boundary", ["inclusive", "exclusive"])
def test_lsq_forward_and_gradients(bits, signed, boundary):
    quant = q.get("lsq", bits=bits, signed=signed, boundary=boundary)
    assert quant.learned == ("step",)
    qn, qp = qrange(bits, signed)
    step = np.float32(0.5)
    # Random data plus points exactly on the range edges and rounding ties, and their neighbours.
    special = edges(qp * 0.5, -qn * 0.5, 0.25, -0.25, 0.0)
    for x in [rand((4, 5), bits), special]:
        x = np.abs(x) if not signed else x
        y, (dx, dstep), g = vjp(lambda a, s: quant(a, step=s), x, step)
        ey, inside, ds, _ = np_lsq(x.astype(np.float64), 0.5, 0.0, bits, signed, boundary)
        np.testing.assert_allclose(y, ey, rtol=1e-6)
        np.testing.assert_array_equal(dx, g * inside)
        gscale = 1.0 / math.sqrt(x.size * qp)
        np.testing.assert_allclose(dstep, np.sum(g * ds) * gscale, rtol=1e-5, atol=1e-6)


def test_lsq_per_channel_step_and_grad_scale():
    x = rand((6, 3), 11)
    step = np.array([0.3, 0.6, 0.9], np.float32)
    y, (dx, dstep), g = vjp(lambda a, s: q.get("lsq", bits=3)(a, step=s), x, step)
    ey, inside, ds, _ = np_lsq(x.astype(np.float64), step, 0.0, 3, True, "inclusive")
    np.testing.assert_allclose(y, ey, rtol=1e-6)
    np.testing.assert_allclose(dstep, (g * ds).sum(0) / math.sqrt(6 * 3), rtol=1e-5, atol=1e-6)


def test_lsq_step_floor():
    x = rand((5,), 2)
    y, (_, dstep), g = vjp(lambda a, s: q.get("lsq")(a, step=s), x, np.float32(1e-7))
    ey, _, ds, _ = np_lsq(x.astype(np.float64), 1e-7, 0.0, 2, True, "inclusive")
    np.testing.assert_allclose(y, ey, rtol=1e-5)  # forward uses 1e-5
    np.testing.assert_allclose(dstep, np.sum(g * ds) / math.sqrt(5), rtol=1e-5)  # STE floor


@pytest.mark.parametrize("signed,rule,factor", [(True, "code", 2), (False, "code", 4),
                                                (False, "paper", 2), (True, "paper", 2)])
def test_lsq_per_tensor_init(signed, rule, factor):
    # "code": TBT utils_quant.py lines 153-155 (4· unsigned); "paper" (and OFQ's unused
    # per-tensor branch, lsq.py line 562): 2· for both signs.
    x = rand((4, 6), 3)
    quant = q.get("lsq", bits=3, signed=signed, init_rule=rule)
    qp = qrange(3, signed)[1]
    np.testing.assert_allclose(quant.init(x)["step"],
                               factor * np.mean(np.abs(x)) / math.sqrt(qp), rtol=1e-6)


class RefOfqLsq:
    """OFQ src/quantization/quantizer/lsq.py ``LsqQuantizer`` (lines 515-602, per_channel=True:
    one step per token position, x.shape[-2]) and ``LsqQuantizer4v`` (lines 701-792: one per
    last-axis channel), bits >= 2, in float64: init, forward, dx and ds."""

    def __init__(self, bit, all_positive, kind):
        self.qn = 0 if all_positive else -(2 ** (bit - 1))
        self.qp = 2 ** bit - 1 if all_positive else 2 ** (bit - 1) - 1
        self.all_positive, self.kind = all_positive, kind

    def init_from(self, x):
        f = 4 if self.all_positive else 2
        a = np.abs(x)
        if self.kind == "token":
            m = {2: lambda: a.mean(-1), 3: lambda: a.mean(-1).mean(0),
                 4: lambda: a.mean(-1).mean(0).mean(0)}[x.ndim]()
        else:
            m = {3: lambda: a.mean(0).mean(0), 4: lambda: a.mean(0).mean(0).mean(0)}[x.ndim]()
        return f * m / self.qp ** 0.5

    def forward_backward(self, x, s, g):
        if self.kind == "token":
            alpha = s[:, None]
            n = {2: x.shape[-1], 3: x.shape[0] * x.shape[-1],
                 4: x.shape[0] * x.shape[1] * x.shape[-1]}[x.ndim]
        else:
            alpha = s
            n = x.shape[0] * x.shape[1] * (x.shape[2] if x.ndim == 4 else 1)
        gs = 1.0 / (self.qp * n) ** 0.5
        a = np.where(alpha > 1e-5, alpha, 1e-5)  # clip(): straight-through
        v = x / a
        c = np.clip(v, self.qn, self.qp)
        y = np.round(c) * a
        inside = (v >= self.qn) & (v <= self.qp)
        # y = round_pass(clamp(x / a)) · a: dy/da = round(c) − (x/a)·1[inside]
        ds_elem = g * (np.round(c) - v * inside) * gs
        reduce = tuple(d for d in range(x.ndim) if d != (x.ndim - 2 if self.kind == "token"
                                                           else x.ndim - 1))
        return y, g * inside, ds_elem.sum(axis=reduce)


@pytest.mark.parametrize("granularity,shape", [("token", (3, 5, 4)), ("token", (2, 3, 5, 4)),
                                               ("token", (5, 4)), ("channel", (3, 5, 4)),
                                               ("channel", (2, 3, 5, 4))])
@pytest.mark.parametrize("bits,signed", [(2, True), (3, False)])
def test_lsq_token_and_channel_match_ofq(granularity, shape, bits, signed):
    ref = RefOfqLsq(bits, not signed, granularity)
    x = rand(shape, 31).astype(np.float64)
    x = x if signed else np.abs(x)
    quant = q.get("lsq", bits=bits, signed=signed, granularity=granularity)
    step = quant.init(jnp.asarray(x, np.float32))["step"]
    s0 = ref.init_from(x)
    np.testing.assert_allclose(np.asarray(step).reshape(-1), s0, rtol=1e-5)
    # A perturbed step (so exact ties are unlikely) with one entry below the 1e-5 floor.
    s = (s0 * (1 + 0.4 * np.random.default_rng(1).random(s0.shape)))
    s[0] = 1e-7
    s = s.astype(np.float32)
    step = s[:, None] if granularity == "token" else s
    assert np.asarray(quant.init(jnp.asarray(x, np.float32))["step"]).shape == step.shape
    y, (dx, dstep), g = vjp(lambda a, t: quant(a, step=t), x.astype(np.float32), step)
    ey, edx, eds = ref.forward_backward(x.astype(np.float32).astype(np.float64),
                                        s.astype(np.float64), g.astype(np.float64))
    np.testing.assert_allclose(y, ey, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, edx, rtol=1e-6)  # (g / s)·s rounds in float32
    np.testing.assert_array_equal(dx != 0, edx != 0)
    np.testing.assert_allclose(np.asarray(dstep).reshape(-1), eds, rtol=1e-4, atol=1e-5)


def test_lsq_granularity_errors_and_nn_init():
    from flax import nnx  # noqa: F401  (the nn layers create the step from init on first call)
    from bnn_jax.nn import Quantize

    with pytest.raises(ValueError, match="granularity"):
        q.get("lsq", granularity="row")
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        q.get("lsq", granularity="token").init(jnp.ones((5,)))
    x = jnp.asarray(rand((2, 6, 4), 8))
    for granularity, shape in [("token", (6, 1)), ("channel", (4,)), ("tensor", ())]:
        layer = Quantize(dict(name="lsq", bits=2, granularity=granularity))
        y = layer(x)
        assert layer.step.shape == shape and y.shape == x.shape


@pytest.mark.parametrize("bits,signed", [(2, False), (4, True)])
def test_lsq_plus_forward_and_gradients(bits, signed):
    quant = q.get("lsq_plus", bits=bits, signed=signed)
    assert quant.learned == ("step", "offset")
    x = rand((5, 4), 21, scale=2.0)
    step, offset = np.float32(0.4), np.float32(-0.3)
    y, (dx, dstep, doff), g = vjp(lambda a, s, b: quant(a, step=s, offset=b), x, step, offset)
    ey, inside, ds, db = np_lsq(x.astype(np.float64), 0.4, -0.3, bits, signed, "inclusive")
    qp = qrange(bits, signed)[1]
    gscale = 1.0 / math.sqrt(x.size * qp)
    np.testing.assert_allclose(y, ey, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, g * inside, rtol=1e-6)  # (g / s)·s rounds in float32
    np.testing.assert_allclose(dstep, np.sum(g * ds) * gscale, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(doff, np.sum(g * db) * gscale, rtol=1e-5, atol=1e-6)


def test_lsq_plus_inits():
    x = rand((8, 3), 4)
    mm = q.get("lsq_plus", bits=2, signed=False).init(x)
    np.testing.assert_allclose(mm["step"], (x.max() - x.min()) / 3, rtol=1e-6)
    np.testing.assert_allclose(mm["offset"], x.min(), rtol=1e-6)
    # min/max init maps min and max exactly onto the end levels
    y = np.asarray(q.get("lsq_plus", bits=2, signed=False)(jnp.asarray(x), **mm))
    np.testing.assert_allclose([y.min(), y.max()], [x.min(), x.max()], rtol=1e-5)
    s3 = q.get("lsq_plus", bits=3, init_rule="3sigma").init(x)
    mu, sd = x.astype(np.float64).mean(), x.astype(np.float64).std()
    np.testing.assert_allclose(s3["step"], max(abs(mu - 3 * sd), abs(mu + 3 * sd)) / 4, rtol=1e-5)
    assert float(s3["offset"]) == 0.0


@pytest.mark.parametrize("bad", [dict(bits=1), dict(signed="yes"), dict(boundary="open"),
                                 dict(init_rule="mine")])
def test_lsq_rejects_bad_parameters(bad):
    with pytest.raises(ValueError):
        q.get("lsq", **bad)


def np_levels_error(x, s, b, qn, qp):
    k = np.clip(np.round((x - b) / s), -qn, qp)
    return np.sum((x - (k * s + b)) ** 2)


def np_mse_init(x, bits, signed, grid=10, iterations=20):
    """methods.md §1.7 MSE init as documented: the best range [lo + a·R, hi − b·R] over a grid
    of trims a, b in {0, .05, ..., .45}, then alternating least squares (codes, then the line
    x ≈ s·k + β), keeping a refit only if it does not raise the squared error."""
    qn, qp = qrange(bits, signed)
    x = x.astype(np.float64).reshape(-1)
    lo, hi = x.min(), x.max()
    best = None
    for a in np.arange(grid) / (2 * grid):
        for bb in np.arange(grid) / (2 * grid):
            s = ((hi - bb * (hi - lo)) - (lo + a * (hi - lo))) / (qn + qp)
            o = lo + a * (hi - lo) + qn * s
            e = np_levels_error(x, s, o, qn, qp)
            if best is None or e < best[0]:
                best = (e, s, o)
    _, s, b = best
    for _ in range(iterations):
        k = np.clip(np.round((x - b) / s), -qn, qp)
        var = np.sum((k - k.mean()) ** 2)
        if var == 0:
            continue
        ns = np.sum((k - k.mean()) * (x - x.mean())) / var
        nb = x.mean() - ns * k.mean()
        if ns > 0 and np_levels_error(x, ns, nb, qn, qp) <= np_levels_error(x, s, b, qn, qp):
            s, b = ns, nb
    return s, b


@pytest.mark.parametrize("bits,signed,shape,seed", [(2, False, (64, 3), 5), (3, True, (40,), 6),
                                                    (4, False, (8, 4, 5), 7)])
def test_lsq_plus_mse_init(bits, signed, shape, seed):
    x = rand(shape, seed) + np.float32(0.3)  # asymmetric data, as after a swish
    quant = q.get("lsq_plus", bits=bits, signed=signed, init_rule="mse")
    got = quant.init(jnp.asarray(x))
    s, b = np_mse_init(x, bits, signed)
    np.testing.assert_allclose([float(got["step"]), float(got["offset"])], [s, b], rtol=2e-4,
                               atol=1e-5)
    qn, qp = qrange(bits, signed)
    x64 = x.astype(np.float64).reshape(-1)
    err = np_levels_error(x64, float(got["step"]), float(got["offset"]), qn, qp)
    mm = q.get("lsq_plus", bits=bits, signed=signed).init(jnp.asarray(x))
    err_mm = np_levels_error(x64, float(mm["step"]), float(mm["offset"]), qn, qp)
    assert err <= err_mm * (1 + 1e-6)  # never worse than min/max (it is on the grid)
    # The forward with the MSE init reproduces the numpy quantization error.
    y = np.asarray(quant(jnp.asarray(x), **got), np.float64).reshape(-1)
    np.testing.assert_allclose(np.sum((x64 - y) ** 2), err, rtol=1e-4)


def test_lsq_plus_mse_init_beats_minmax_with_outliers():
    x = rand((500,), 9)
    x[:3] = [12.0, -9.0, 15.0]  # min/max spends the 2-bit levels on three outliers
    quant = q.get("lsq_plus", bits=2, signed=False, init_rule="mse")
    got, mm = quant.init(jnp.asarray(x)), q.get("lsq_plus", bits=2).init(jnp.asarray(x))
    x64 = x.astype(np.float64)
    err = np_levels_error(x64, float(got["step"]), float(got["offset"]), 0, 3)
    err_mm = np_levels_error(x64, float(mm["step"]), float(mm["offset"]), 0, 3)
    assert err < 0.5 * err_mm
    s, b = np_mse_init(x, 2, False)
    np.testing.assert_allclose([float(got["step"]), float(got["offset"])], [s, b], rtol=2e-4)


def test_lsq_plus_mse_init_constant_and_grid_inputs():
    c = np.full((4, 3), 0.7, np.float32)
    init = q.get("lsq_plus", init_rule="mse").init(jnp.asarray(c))
    y = q.get("lsq_plus", init_rule="mse")(jnp.asarray(c), **init)
    np.testing.assert_array_equal(np.asarray(y), c)
    # Data exactly on a 2-bit grid (every level used) is represented with zero error.
    grid = np.array([-0.5, 0.0, 0.5, 1.0] * 5, np.float32)
    init = q.get("lsq_plus", bits=2, init_rule="mse").init(jnp.asarray(grid))
    np.testing.assert_allclose([float(init["step"]), float(init["offset"])], [0.5, -0.5],
                               rtol=1e-6)


def test_lsq_plus_rejects_unknown_init_rule():
    with pytest.raises(ValueError, match="minmax"):
        q.get("lsq_plus", init_rule="kmeans")

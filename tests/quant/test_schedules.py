"""Every method schedule at 0/25/50/75/100 % of training against its closed form, under jit."""

import math

import jax
import numpy as np
import pytest

from bnn_jax.quant import schedules as S

TOTAL = 400
STEPS = [0, 100, 200, 300, 400]
FRACS = [0.0, 0.25, 0.5, 0.75, 1.0]


def at_all(fn):
    f = jax.jit(fn)
    return [f(s) for s in STEPS]


def test_progress_is_clipped():
    np.testing.assert_allclose(at_all(lambda s: S.progress(s, TOTAL)), FRACS)
    assert float(S.progress(500, TOTAL)) == 1.0 and float(S.progress(-5, TOTAL)) == 0.0


@pytest.mark.parametrize("o_end", [3.0, 2.0])
def test_reste_o(o_end):
    expect = [1 + (o_end - 1) * (1 - math.cos(math.pi / 2 * p)) for p in FRACS]
    np.testing.assert_allclose(at_all(lambda s: S.reste_o(s, TOTAL, o_end=o_end)), expect,
                               rtol=1e-6)
    if o_end == 3.0:  # methods.md: 1.15, 1.59, 2.23 at 25/50/75 %
        np.testing.assert_allclose(expect[1:4], [1.15, 1.59, 2.23], atol=6e-3)


@pytest.mark.parametrize("t_min,t_max", [(0.1, 10.0), (1e-3, 10.0)])
def test_irnet_t_k(t_min, t_max):
    got = at_all(lambda s: S.irnet_t_k(s, TOTAL, t_min=t_min, t_max=t_max))
    for (t, k), p in zip(got, FRACS):
        et = 10 ** (math.log10(t_min) + (math.log10(t_max) - math.log10(t_min)) * p)
        np.testing.assert_allclose(t, et, rtol=1e-5)
        np.testing.assert_allclose(k, 1 / et if et < 1 else 1.0, rtol=1e-5)


def test_fda_terms_and_noise_weight():
    got = at_all(lambda s: S.fda_terms(s, TOTAL))
    assert [int(n) for n in got] == [9 + math.floor(9 * p) for p in FRACS] == [9, 11, 13, 15, 18]
    assert all(np.asarray(n).dtype == np.int32 for n in got)
    # per-epoch use: e = 0 .. E-1 reaches 9 + floor(9 (E-1)/E)
    assert int(S.fda_terms(99, 100)) == 17
    alpha = at_all(lambda s: S.fda_noise_weight(s, TOTAL))
    np.testing.assert_allclose(alpha, [0.05 * (1 + math.cos(math.pi * (s + 1) / TOTAL))
                                       for s in STEPS], rtol=1e-5, atol=1e-8)


def test_biper_tau():
    lo, hi = 0.01, 0.05
    a = (hi - lo) / (math.e - 1)
    expect = [a * math.exp(p) + lo - a for p in FRACS]
    np.testing.assert_allclose(at_all(lambda s: S.biper_tau(s, TOTAL, tau_min=lo, tau_max=hi)),
                               expect, rtol=1e-6)
    assert expect[0] == pytest.approx(lo) and expect[-1] == pytest.approx(hi)
    np.testing.assert_allclose(S.biper_tau(123, TOTAL, tau_min=0.037, tau_max=0.037), 0.037,
                               rtol=1e-6)


def test_cga_active():
    got = at_all(lambda s: S.cga_active(s, TOTAL, cga_steps=100))
    assert [bool(v) for v in got] == [False, False, False, True, True]
    assert not bool(S.cga_active(299, TOTAL, cga_steps=100))

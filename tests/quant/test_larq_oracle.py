"""Every larq quantizer against larq 0.14 itself: forward exactly, gradients to float32 rounding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnn_jax.quant as q
from conftest import ORACLE, ORACLE_META

CASES = sorted({k.split("/")[1] for k in ORACLE if k.startswith("q/")})
INPUTS = ("grid", "randn", "special", "kernel4d")


def spec_of(case):
    """Registry name and parameters of an oracle case, read from the oracle's own metadata."""
    meta = ORACLE_META[next(k for k in ORACLE_META if k.startswith(f"q/{case}/"))]
    params = {k: v for k, v in meta["params"].items()}
    if case.startswith("act_"):
        return case[len("act_"):].split("__")[0], params
    if case.startswith("zoo_"):
        return case[len("zoo_"):], params
    return meta["alias"] or case.split("__")[0], params


def test_every_oracle_case_is_covered():
    assert len(CASES) == 33
    for case in CASES:
        name, params = spec_of(case)
        q.get(name, **params)  # raises if a larq quantizer is missing


def uses_tensor_statistic(name, x):
    """Quantizers whose output is scaled by a mean over several elements of x."""
    if name == "magnitude_aware_sign":
        return x.ndim > 1  # on 1-D inputs larq's scale is |x| itself
    return name in ("xnor_weight_scale", "magnitude_aware_sign_unclipped")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("inp", INPUTS)
def test_quantizer_matches_larq(case, inp):
    base = f"q/{case}/{inp}"
    if f"{base}/x" not in ORACLE:
        assert case == "zoo_xnor_weight_scale" and inp != "kernel4d"  # larq-zoo: 4-D only
        return
    name, params = spec_of(case)
    quant = q.get(name, **params)
    x = jnp.asarray(ORACLE[f"{base}/x"])
    y, vjp = jax.vjp(quant, x)
    if uses_tensor_statistic(name, x):
        # A mean|x| is a float32 sum, and Eigen (TF) and XLA add in different orders, so the
        # scale may differ in its last bits; the sign pattern must still be exact.
        np.testing.assert_array_equal(np.sign(y), np.sign(ORACLE[f"{base}/y"]))
        np.testing.assert_allclose(y, ORACLE[f"{base}/y"], rtol=3e-7, atol=0)
    else:
        np.testing.assert_array_equal(np.asarray(y), ORACLE[f"{base}/y"])
    (dx_ones,) = vjp(jnp.ones_like(y))
    (dx_rand,) = vjp(jnp.asarray(ORACLE[f"{base}/dy_rand"]))
    np.testing.assert_allclose(dx_ones, ORACLE[f"{base}/dx_ones"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx_rand, ORACLE[f"{base}/dx_rand"], rtol=1e-5, atol=1e-6)


def test_math_sign_and_heaviside():
    x = jnp.asarray(ORACLE["math/sign/x"])
    np.testing.assert_array_equal(q.sign(x), ORACLE["math/sign/y"])
    np.testing.assert_array_equal(q.heaviside(x), ORACLE["math/heaviside/y"])


def test_weight_clip_constraint():
    x = ORACLE["constraint/weight_clip/x"]
    np.testing.assert_array_equal(q.get("weight_clip")(jnp.asarray(x)),
                                  ORACLE["constraint/weight_clip/y"])

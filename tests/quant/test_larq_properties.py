"""Property tests of the larq quantizers: dtypes, level sets, finite gradients, jit/vmap/grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bnn_jax.quant as q

SHAPES = [(7,), (3, 5), (2, 3, 4)]


@st.composite
def arrays(draw, shapes=SHAPES):
    shape = draw(st.sampled_from(shapes))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 3.0]))
    x = np.random.default_rng(seed).standard_normal(shape) * scale
    # sprinkle exact boundary values: 0, +-1 and the TWN/threshold neighbourhood
    specials = np.array([0.0, -0.0, 1.0, -1.0, 0.05, -0.05], dtype=np.float32)
    mask = np.random.default_rng(seed + 1).random(shape) < 0.2
    x = np.where(mask, np.resize(specials, shape), x)
    return x.astype(np.float32)


def dorefa_levels(k, mode):
    n = 2**k - 1
    lv = np.arange(n + 1, dtype=np.float64) / n
    return lv if mode == "activations" else 2 * lv - 1


# name, params, expected level set (None: checked by a custom rule)
CASES = [
    ("ste_sign", {}, {-1.0, 1.0}),
    ("ste_sign", {"clip_value": None}, {-1.0, 1.0}),
    ("approx_sign", {}, {-1.0, 1.0}),
    ("swish_sign", {"beta": 5.0}, {-1.0, 1.0}),
    ("ste_heaviside", {}, {0.0, 1.0}),
    ("ste_tern", {}, {-1.0, 0.0, 1.0}),
    ("ste_tern", {"ternary_weight_networks": True}, {-1.0, 0.0, 1.0}),
    ("dorefa", {"k_bit": 1, "mode": "activations"}, set(dorefa_levels(1, "activations"))),
    ("dorefa", {"k_bit": 2, "mode": "activations"}, set(dorefa_levels(2, "activations"))),
    ("dorefa", {"k_bit": 3, "mode": "weights"}, set(dorefa_levels(3, "weights"))),
    ("magnitude_aware_sign", {}, "per_channel_scale"),
    ("magnitude_aware_sign_unclipped", {}, "tensor_scale"),
    ("noop", {}, "identity"),
    ("hard_tanh", {}, "interval"),
    ("leaky_tanh", {}, "monotone"),
]
IDS = [f"{n}-{p}" for n, p, _ in CASES]


def check_levels(name, levels, x, y):
    y64, x64 = np.asarray(y, np.float64), np.asarray(x, np.float64)
    if isinstance(levels, set):
        got = set(np.unique(y64))
        # bf16 holds every level of these low-bit sets up to its own rounding of the level
        tol = 1e-2 if y.dtype == jnp.bfloat16 else 1e-6
        assert all(min(abs(g - lv) for lv in levels) <= tol for g in got), (got, levels)
    elif levels == "per_channel_scale":
        scale = np.mean(np.abs(x64), axis=tuple(range(x.ndim - 1)))
        np.testing.assert_allclose(np.abs(y64), np.broadcast_to(scale, x.shape), rtol=1e-2)
    elif levels == "tensor_scale":
        np.testing.assert_allclose(np.abs(y64), np.mean(np.abs(x64)), rtol=1e-2)
    elif levels == "identity":
        np.testing.assert_array_equal(y64, x64)
    elif levels == "interval":
        assert np.all(np.abs(y64) <= 1.0)
    elif levels == "monotone":
        order = np.argsort(x64.ravel(), kind="stable")
        assert np.all(np.diff(y64.ravel()[order]) >= 0)


@pytest.mark.parametrize("name,params,levels", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@settings(max_examples=12, deadline=None)
@given(x=arrays())
def test_shape_dtype_levels_and_finite_gradients(name, params, levels, dtype, x):
    quant = q.get(name, **params)
    xd = jnp.asarray(x, dtype)
    y, vjp = jax.vjp(quant, xd)
    assert y.shape == x.shape and y.dtype == dtype
    check_levels(name, levels, xd, y)
    (dx,) = vjp(jnp.ones_like(y))
    assert dx.shape == x.shape and dx.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(dx.astype(jnp.float32))))


@pytest.mark.parametrize("name,params,levels", CASES, ids=IDS)
def test_jit_vmap_grad_compose(name, params, levels):
    quant = q.get(name, **params)
    xs = jnp.asarray(np.random.default_rng(3).standard_normal((4, 3, 5)), jnp.float32)
    grad_one = jax.grad(lambda x: jnp.sum(quant(x) * jnp.arange(x.size).reshape(x.shape)))
    composed = jax.jit(jax.vmap(grad_one))(xs)
    one_by_one = jnp.stack([grad_one(x) for x in xs])
    np.testing.assert_allclose(composed, one_by_one, rtol=1e-6, atol=1e-7)
    # a fused, batched reduction may add in another order: allow float32 rounding of the scales
    np.testing.assert_allclose(jax.jit(jax.vmap(quant))(xs), jnp.stack([quant(x) for x in xs]),
                               rtol=3e-7, atol=0)

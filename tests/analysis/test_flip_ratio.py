"""FlipRatio against larq 0.14's metric."""

import jax
import jax.numpy as jnp
import numpy as np

from bnn_jax.analysis.flip_ratio import FlipRatio, fraction_flipped
from conftest import ORACLE


def test_flip_ratio_matches_larq():
    values = ORACLE["flip_ratio/values"]
    state = FlipRatio.empty(values.shape[1:])
    update = jax.jit(FlipRatio.update)
    for t, v in enumerate(values):
        state = update(state, jnp.asarray(v))
        np.testing.assert_allclose(state.result(), ORACLE["flip_ratio/result"][t], rtol=1e-6)


def test_fraction_flipped_counts_sign_changes():
    rng = np.random.default_rng(0)
    a = {"w": rng.standard_normal((5, 7)).astype(np.float32), "v": rng.standard_normal(9)}
    b = {"w": -a["w"], "v": a["v"]}
    np.testing.assert_allclose(fraction_flipped(a, b), 35 / 44)
    np.testing.assert_allclose(fraction_flipped(a, a), 0.0)

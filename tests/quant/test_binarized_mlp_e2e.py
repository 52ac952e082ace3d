"""A tiny end-to-end check per method: 50 SGD steps of a 2-layer binarized MLP lower the loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnn_jax.quant as q

N, D, H = 64, 8, 16

# method: (weight quantizer, activation quantizer or "tanh", latent init scale, learning rate)
SPECS = {
    "binary_connect": (("binary_connect", {}), "tanh", 0.5, 0.2),
    "bnn_ste": (("bnn_ste", {}), ("bnn_ste", {}), 0.5, 0.2),
    "bnn_ste_exclusive": (("bnn_ste", {"boundary": "exclusive"}), "tanh", 0.5, 0.2),
    "xnor": (("xnor_weight", {}), ("xnor_act", {}), 0.5, 0.2),
    "xnor_paper": (("xnor_weight", {"gradient": "paper"}), ("xnor_act", {"scaling": "none"}),
                   0.5, 0.2),
    "bireal": (("bireal_weight", {}), ("approx_sign", {}), 0.5, 0.2),
    "twn": (("twn", {}), "tanh", 0.5, 0.2),
    "irnet": (("irnet_weight", {"t": 1.0, "k": 1.0}), ("irnet_ede", {"t": 1.0, "k": 1.0}), 0.5,
              0.2),
    "fda": (("fda", {}), ("fda", {}), 0.5, 0.05),
    "rsign": (("bireal_weight", {}), ("rsign", {}), 0.5, 0.2),
    "rprelu": (("bireal_weight", {}), ("rprelu", {}), 0.5, 0.2),
    "reste": (("reste_weight", {"o": 2.0}), ("reste", {"o": 2.0}), 0.5, 0.2),
    "biper": (("biper_weight", {}), ("biper_act", {}), 0.05, 0.008),
    "biper_stage1": (("biper_weight_stage1", {}), ("biper_act", {}), 0.05, 0.008),
    "lsq": (("lsq", {"bits": 2}), "tanh", 0.5, 0.2),
    "lsq_plus": (("statsq", {"bits": 2}), ("lsq_plus", {"bits": 2}), 0.5, 0.2),
    "statsq": (("statsq", {"bits": 2}), "tanh", 0.5, 0.2),
    "bivit": (("bivit_weight", {}), "tanh", 0.5, 0.2),
}


def build(spec):
    (wname, wparams), act, scale, lr = spec
    wq = q.get(wname, **wparams)
    aq = None if act == "tanh" else q.get(act[0], **act[1])
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((N, D)), jnp.float32)
    y = jnp.tanh(x @ jnp.asarray(rng.standard_normal((D, 1)), jnp.float32))
    params = {"w1": jnp.asarray(rng.standard_normal((D, H)) * scale, jnp.float32),
              "w2": jnp.asarray(rng.standard_normal((H, 1)) * scale, jnp.float32)}
    params["q1"], params["q2"] = wq.init(params["w1"]), wq.init(params["w2"])
    pre = x @ wq(params["w1"], **params["q1"]) / np.sqrt(D)
    params["qa"] = aq.init(pre) if aq is not None else {}

    def loss(p):
        h = x @ wq(p["w1"], **p["q1"]) / np.sqrt(D)
        h = jnp.tanh(h) if aq is None else aq(h, **p["qa"])
        out = h @ wq(p["w2"], **p["q2"]) / np.sqrt(H)
        return jnp.mean((out - y) ** 2)

    # Compile time dominates a 50-step run: skip XLA's expensive CPU passes.
    @jax.jit(compiler_options={"xla_backend_optimization_level": 0,
                               "xla_llvm_disable_expensive_passes": True})
    def train(p):
        def step(p, _):
            value, g = jax.value_and_grad(loss)(p)
            return jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g), value
        p, values = jax.lax.scan(step, p, None, length=50)
        return values, loss(p)

    return params, train


@pytest.mark.parametrize("method", sorted(SPECS))
def test_fifty_sgd_steps_lower_the_loss(method):
    params, train = build(SPECS[method])
    values, final = train(params)
    first = float(values[0])
    assert np.isfinite(first) and np.isfinite(float(final))
    assert float(final) < 0.9 * first, (method, first, float(final))

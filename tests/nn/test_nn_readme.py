"""The README section "Use bnn_jax quantizers in your own Flax model" runs as written."""


import jax
import jax.numpy as jnp
import numpy as np
from conftest import README, readme_python_blocks
from flax import nnx




def _nn_blocks():
    return readme_python_blocks("<!-- section:nn:start -->", "<!-- section:nn:end -->")


def test_readme_nn_section_runs(capsys):
    blocks = _nn_blocks()
    assert len(blocks) == 7
    scope = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), scope)
    model, report, logits = scope["model"], scope["report"], scope["logits"]
    from bnn_jax.nn import QuantLinear

    assert isinstance(model.hidden, QuantLinear) and type(model.stem) is nnx.Linear
    assert [r.path for r in report.replaced] == ["hidden"]
    assert sorted(report.unmatched) == ["head", "stem"]
    printed = capsys.readouterr().out
    assert "hidden: Linear -> QuantLinear" in printed
    # The quantized model computes sign(h) @ sign(W) + b in its hidden layer.
    x = jnp.ones((4, 16))
    h = np.asarray(nnx.relu(model.stem(x)))
    w, b = np.asarray(model.hidden.kernel[...]), np.asarray(model.hidden.bias[...])
    hidden = np.where(h >= 0, 1.0, -1.0) @ np.where(w >= 0, 1.0, -1.0) + b
    want = hidden @ np.asarray(model.head.kernel[...]) + np.asarray(model.head.bias[...])
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
    # The policy line gives the PokeBNN mix, the default last.
    rules = scope["rules"]
    assert [r.pattern for r in rules] == ["stem", r".*/se/.*", "head", ".*"]
    assert rules[-1].weight == "ste_sign"
    # The Linen layers quantize: a Dense of +-1 inputs and kernel gives integers.
    dense = scope["dense"]
    params = dense.init(jax.random.key(0), jnp.ones((1, 8)))
    y = dense.apply(params, jnp.linspace(-1, 1, 8)[None])
    np.testing.assert_array_equal(y, np.round(y))
    conv = scope["conv"]
    cp = conv.init(jax.random.key(0), jnp.ones((1, 4, 4, 2)))
    assert conv.apply(cp, jnp.ones((1, 4, 4, 2))).shape == (1, 4, 4, 64)

    # The scanned decoder: stacked QuantEinsums and a row-wise binary embedding.
    from bnn_jax.nn import QuantEinsum, QuantEmbed

    decoder = scope["decoder"]
    assert isinstance(decoder.blocks.up, QuantEinsum) and decoder.blocks.up.stack_shape == (4,)
    assert isinstance(decoder.embed, QuantEmbed) and scope["tokens"].shape == (2, 8, 100)
    # Linen: the original tree plus the RSign shift of the one binarized conv.
    variables = scope["variables"]["params"]
    assert sorted(variables) == ["Conv_0", "head", "stem"]
    assert sorted(variables["Conv_0"]) == ["bias", "input_beta", "kernel"]
    assert scope["out"].shape == (2, 10)
    # The health report printed the ReLU warning.
    assert "WARNING inputs of fc2 are all >= 0: ste_sign gives +1 everywhere" in printed
    # The trainer config validates (the import path is resolved only when the model is built).
    cfg = scope["get_config"]()
    assert cfg.model.name == "my_pkg.nets:MyNet" and len(cfg.quant.rules) == 2

"""The README's quantizer and Bop examples run as written."""

from conftest import README, readme_python_blocks


def test_quantizer_and_bop_examples_run():
    blocks = readme_python_blocks("<!-- quantizer-table:end -->", "<!-- section:nn:start -->")
    assert len(blocks) == 2
    scope = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), scope)
    assert float(scope["binarize"](scope["x"])[0]) == -1.0
    jnp, optax, tx = scope["jnp"], scope["optax"], scope["tx"]
    params = {"binary_conv": {"kernel": jnp.ones((2, 2))}, "bn": {"scale": jnp.ones(2)}}
    grads = {"binary_conv": {"kernel": jnp.ones((2, 2))}, "bn": {"scale": jnp.ones(2)}}
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    # Bop: m = 1e-4 * 1 so w * m = 1e-4 > 1e-8 and every binary weight flips to -1
    assert (new["binary_conv"]["kernel"] == -1).all()
    # Adam's first step moves by the learning rate
    assert abs(float(new["bn"]["scale"][0]) - (1 - 1e-3)) < 1e-6

"""larq-zoo networks: each builds by name and its counts equal larq's summary of the network."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bnn_jax import models
from bnn_jax.analysis import cost

# larq's own lq.models.summary of each larq-zoo network (larq 0.14.0, larq-zoo 2.4.0), written by
# tests/fixtures/make_larq_zoo_summaries.py.
LARQ = json.loads((pathlib.Path(__file__).parents[1] / "fixtures" /
                   "larq_zoo_summaries.json").read_text())

# (name, larq-zoo docstring "Parameters", docstring "Memory" in MiB, which count it is): the
# QuickNet and MeliusNet22 docstrings give larq's summary (BatchNorm scale/bias folded away),
# the other literature ones every array (Keras count_params); RealToBinaryNet's ("mixed") gives
# every array but the summary's memory. Read from larq/zoo@77c5853f, larq_zoo/{sota,literature}.
DOCSTRINGS = [
    ("quicknet_small", 12_655_688, 4.00, "total_params"),
    ("quicknet", 13_234_088, 4.17, "total_params"),
    ("quicknet_large", 23_342_248, 5.40, "total_params"),
    ("birealnet", 11_699_112, 4.03, "all_arrays"),
    ("binary_resnet_e18", 11_699_368, 4.03, "all_arrays"),
    ("binary_densenet28", 5_150_504, 4.12, "all_arrays"),
    ("binary_densenet37", 8_734_120, 5.25, "all_arrays"),
    ("binary_densenet37_dilated", 8_734_120, 5.25, "all_arrays"),
    ("binary_densenet45", 13_939_240, 7.54, "all_arrays"),
    ("xnornet", 62_396_768, 22.81, "all_arrays"),
    ("dorefanet", 62_403_912, 22.84, "all_arrays"),
    ("binary_alexnet", 61_859_192, 7.49, "all_arrays"),
    ("meliusnet22", 6_944_584, 3.88, "total_params"),
    ("real_to_binary_net", 11_995_624, 5.13, "mixed"),
]
MEMORY = {"total_params": "memory_bytes", "all_arrays": "all_arrays_memory_bytes",
          "mixed": "memory_bytes"}


def _abstract(name, shape=(224, 224, 3), classes=1000):
    return nnx.eval_shape(lambda: models.build(dict(name=name), num_classes=classes,
                                               input_shape=shape, rngs=nnx.Rngs(0)))


def _count(model):
    """Every array of the model, counted directly (independent of the cost analysis)."""
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model)))


def _larq_rows(lines):
    """{label: value} of larq's printed summary table ("| Total params   12.7 M |")."""
    rows = {}
    for line in lines:
        cells = line.strip("|+- ").rsplit("  ", 1)
        if len(cells) == 2 and cells[0].strip():
            rows[cells[0].strip()] = cells[1].strip()
    return rows


def test_the_reference_covers_the_whole_zoo():
    assert LARQ["versions"]["larq_zoo"] == "2.4.0" and LARQ["input_shape"] == [224, 224, 3]
    assert sorted(LARQ["networks"]) == sorted(d[0] for d in DOCSTRINGS)
    assert all(n in models.names() for n in LARQ["networks"])


@pytest.mark.parametrize("name,params,mib,kind", DOCSTRINGS)
def test_counts_equal_larq_summary_and_docstring(name, params, mib, kind):
    model = _abstract(name)
    c = cost.analyze(model, (224, 224, 3))
    t, ref = c.totals(), LARQ["networks"][name]
    # every total of larq's summary, exactly
    assert (t["total_params"], t["trainable_params"], t["non_trainable_params"]) == (
        ref["total_params"], ref["trainable_params"], ref["non_trainable_params"])
    assert t["memory_bytes"] * 8 == ref["memory_bits"]
    assert t["memory_8bit_bytes"] * 8 == ref["memory_8bit_bits"]
    assert t["float32_bytes"] * 8 == ref["float32_bits"]
    assert t["macs_by_precision"] == ref["macs_by_precision"] and t["macs"] == ref["macs"]
    assert t["binarized_mac_ratio"] == pytest.approx(ref["binarized_mac_ratio"], abs=1e-12)
    assert t["all_arrays"] == ref["keras_count_params"] == _count(model)
    # the printed summary reads as larq's does, row for row
    ours = dict(line.strip("| ").split(" | ") for line in cost.format_table(c).splitlines()
                if line.startswith("| ") and line.count(" | ") == 1)
    theirs = _larq_rows(ref["summary"][1:])
    assert len(theirs) >= 8
    for label, value in theirs.items():
        assert ours[label] == value, label
    # the docstring's hand-typed numbers, in its convention
    assert t["all_arrays" if kind == "mixed" else kind] == params
    assert round(t[MEMORY[kind]] / 2 ** 20, 2) == mib


@pytest.mark.slow  # compiling a full network's training step takes a minute or two on CPU
@pytest.mark.parametrize("name,shape", [("quicknet_small", (32, 32, 3)),
                                        ("binary_resnet_e18", (32, 32, 3)),
                                        ("binary_densenet28", (32, 32, 3))])
def test_small_forward_and_train_step(name, shape):
    model = models.build(dict(name=name), num_classes=10, input_shape=shape, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, *shape)), jnp.float32)
    y = jnp.asarray([1, 3])
    opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        def loss(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
        value, grads = nnx.value_and_grad(loss)(model)
        opt.update(model, grads)
        return value

    before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
    assert np.isfinite(float(step(model, opt)))
    after = nnx.state(model, nnx.Param)
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, after))
    assert any(changed)
    model.eval()
    assert model(x).shape == (2, 10)


# The forward and a training step at 224x224 of every zoo network: tests/models/test_zoo_native.py.


def test_unknown_arch_and_bad_fields_are_rejected():
    with pytest.raises(ValueError, match="arch must be one of"):
        models.build(dict(name="alexnet", arch="vgg"), num_classes=10,
                     input_shape=(224, 224, 3), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown field"):
        models.validate(dict(name="quicknet", width=3))


def test_readme_zoo_table_is_rendered_from_the_results():
    import importlib.util
    import json
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("zoo_experiment", root / "experiments/zoo.py")
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)
    results = json.loads((root / "experiments/results/zoo.json").read_text())
    assert zoo.readme_table(results) in (root / "README.md").read_text()
    assert zoo.render(results) == (root / "experiments/zoo.md").read_text()
    for name, params, _, kind in DOCSTRINGS:  # the committed results are the parity ones
        assert results[name]["ours"]["all_arrays" if kind == "mixed" else kind] == params
        assert zoo.summary_matches(results[name]["ours"], LARQ["networks"][name])
    assert "| NO |" not in zoo.render(results)


def test_cnn_small_table_is_rendered_from_its_results():
    import importlib.util
    import json
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("cnn_small", root / "experiments/cnn_small.py")
    exp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exp)
    results = json.loads((root / "experiments/results/cnn_small.json").read_text())
    md, points = exp.markdown(results)
    assert md == (root / "experiments/cnn_small.md").read_text()
    assert {r["method"] for r in results["runs"]} == set(exp.METHODS)
    assert len(points) == len(exp.METHODS) and (root / "experiments/cnn_small.png").exists()

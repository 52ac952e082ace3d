"""tfds pipelines offline with tfds.testing.mock_data: shapes, augmentation, resume, sharding."""

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from bnn_jax import data  # noqa: E402


def test_cifar10_batches_are_normalized_augmented_and_resumable(tmp_path):
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.build({"name": "cifar10", "batch_size": 8, "eval_batch_size": 8,
                         "data_dir": str(tmp_path), "shuffle_buffer": 16}, seed=3)
        assert ds.num_classes == 10 and ds.image_shape == (32, 32, 3)
        it = ds.train_batches(0)
        batches = [next(it) for _ in range(4)]
        b = batches[0]
        assert b["image"].shape == (8, 32, 32, 3) and b["image"].dtype == np.float32
        assert b["label"].dtype == np.int32 and b["label"].max() < 10
        resumed = next(ds.train_batches(3))
        np.testing.assert_array_equal(resumed["image"], batches[3]["image"])
        np.testing.assert_array_equal(resumed["label"], batches[3]["label"])
        evals = list(ds.eval_batches())
        assert sum(e["mask"].sum() for e in evals) == ds.num_test
        # Test images are not augmented: the same example gives the same pixels every time.
        np.testing.assert_array_equal(evals[0]["image"], next(iter(ds.eval_batches()))["image"])


def test_each_process_reads_its_own_share(tmp_path, monkeypatch):
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        shares = [data.build({"name": "mnist", "batch_size": 8, "eval_batch_size": 8,
                              "data_dir": str(tmp_path)}, process_index=p, process_count=2)
                  for p in range(2)]
        requested = []
        for s in shares:  # record which split each process reads (the mock ignores slicing)
            original = s.builder.as_dataset
            monkeypatch.setattr(s.builder, "as_dataset",
                                lambda split, _o=original, **kw: (requested.append(split),
                                                                  _o(split=split, **kw))[1])
        first = [next(s.train_batches(0)) for s in shares]
        assert all(f["image"].shape == (4, 28, 28, 1) for f in first)
        assert [str(r) for r in requested] == [str(x) for x in tfds.even_splits("train", 2)]
        # Same number of eval steps everywhere (5 = 40 examples / global eval batch 8).
        assert [len(list(s.eval_batches())) for s in shares] == [5, 5]


def test_imagenet_inception_crop_gives_the_configured_size(tmp_path):
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.build({"name": "imagenet2012", "batch_size": 4, "eval_batch_size": 4,
                         "data_dir": str(tmp_path), "image_size": 32, "shuffle_buffer": 8})
        assert next(ds.train_batches(0))["image"].shape == (4, 32, 32, 3)
        assert next(iter(ds.eval_batches()))["image"].shape == (4, 32, 32, 3)


def test_a_dataset_that_is_not_prepared_fails_fast_with_instructions(tmp_path):
    with pytest.raises(ValueError, match=r"not prepared .*tfds build cifar100 --data_dir"):
        data.build({"name": "cifar100", "batch_size": 8, "eval_batch_size": 8,
                    "data_dir": str(tmp_path / "empty")})


def test_processes_draw_different_augmentations(tmp_path):
    # The mock gives every process the same records (it ignores the split slicing), so equal
    # batches would mean every process crops and flips its i-th example the same way.
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        cfg = {"name": "cifar10", "batch_size": 16, "eval_batch_size": 8,
               "data_dir": str(tmp_path), "shuffle_buffer": 16}
        a, b = (next(data.build(cfg, seed=3, process_index=p, process_count=2).train_batches(0))
                for p in range(2))
        np.testing.assert_array_equal(a["label"], b["label"])  # the same examples ...
        assert not np.array_equal(a["image"], b["image"])  # ... augmented differently


def test_unnormalized_images_stay_in_unit_range(tmp_path):
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        cfg = {"name": "mnist", "batch_size": 8, "eval_batch_size": 8, "data_dir": str(tmp_path)}
        unit = next(iter(data.build({**cfg, "normalize": False}).eval_batches()))["image"]
        std = next(iter(data.build(cfg).eval_batches()))["image"]
    assert unit.min() >= 0.0 and unit.max() <= 1.0
    np.testing.assert_allclose(std, (unit - 0.1307) / 0.3081, rtol=1e-5, atol=1e-5)

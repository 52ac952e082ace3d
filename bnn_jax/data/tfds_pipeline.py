"""TensorFlow Datasets pipelines (MNIST, CIFAR-10/100, ImageNet) with the standard augmentations.

Never downloads: a dataset that is not prepared under ``data_dir`` fails at once with the command
that prepares it. Each process reads only its files/rows (``tfds.split_for_jax_process``). The
training stream is deterministic given the seed: augmentation randomness is a stateless function
of (seed, global example index), so resuming at step ``s`` skips ``s`` batches of undecoded
records and continues with exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

# Per-channel statistics used by the reference code of most binary-network papers.
_MEAN_STD = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
_TEST_SPLIT = {"imagenet2012": "validation"}


def _import():
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ValueError("tfds datasets need TensorFlow: pip install 'bnn_jax[tf]' "
                         "(tensorflow-cpu, tensorflow-datasets, importlib_resources)") from e
    tf.config.set_visible_devices([], "GPU")  # keep TensorFlow off the accelerators JAX uses
    return tf, tfds


def inception_crop(tf, image, seed, size):
    """Random area (8-100 %) and aspect (3/4-4/3) crop, resized (Szegedy et al., 2015)."""
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        seed=seed, area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
        min_object_covered=0.0, max_attempts=10, use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, crop)
    return tf.image.resize(image, (size, size), method="bilinear")


def central_crop(tf, image, size):
    """Short side to size/0.875, then the central ``size`` square (ImageNet eval)."""
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    scale = (size / 0.875) / tf.minimum(h, w)
    new_h, new_w = tf.cast(tf.round(h * scale), tf.int32), tf.cast(tf.round(w * scale), tf.int32)
    image = tf.image.resize(image, (new_h, new_w), method="bilinear")
    return tf.image.resize_with_crop_or_pad(image, size, size)


class TfdsDataset:
    """A tfds image-classification dataset, batched per process, resumable by step."""

    def __init__(self, name, *, global_batch_size, eval_batch_size, seed=0, process_index=0,
                 process_count=1, data_dir=None, shuffle_buffer=10_000, image_size=224,
                 normalize=True):
        tf, tfds = self._tf, self._tfds = _import()
        self.name, self.seed, self.image_size = name, seed, image_size
        self.global_batch_size, self.eval_batch_size = global_batch_size, eval_batch_size
        self.process_index, self.process_count = process_index, process_count
        self.shuffle_buffer = shuffle_buffer
        for what, size in (("data.batch_size", global_batch_size),
                           ("data.eval_batch_size", eval_batch_size)):
            if size % process_count:
                raise ValueError(f"{what}={size} is not divisible by the {process_count} processes")
        self.builder = tfds.builder(name, data_dir=data_dir)
        if not tf.io.gfile.exists(self.builder.data_dir) and not _mocked(tfds):
            raise ValueError(
                f"dataset {name!r} is not prepared under data_dir={self.builder.data_dir!r}. "
                f"Prepare it once with `tfds build {name} --data_dir=DIR` (ImageNet needs the "
                "manual download, see the tfds catalog) and pass --config.data.data_dir=DIR.")
        info = self.builder.info
        self.num_classes = info.features["label"].num_classes
        self.test_split = _TEST_SPLIT.get(name, "test")
        try:
            self.num_train = self._num_examples("train")
            self.num_test = self._num_examples(self.test_split)
        except (KeyError, OSError, tf.errors.OpError) as e:  # e.g. a build that did not finish
            raise ValueError(
                f"dataset {name!r} under data_dir={self.builder.data_dir!r} is incomplete "
                f"({type(e).__name__}: {str(e).strip(chr(34))[:160]}). Rebuild it with `tfds "
                f"build {name} --data_dir=DIR --overwrite` and pass --config.data.data_dir=DIR"
            ) from None
        if global_batch_size > self.num_train:
            raise ValueError(f"data.batch_size={global_batch_size} exceeds the {self.num_train} "
                             f"training examples of {name!r}")
        if name == "imagenet2012":
            self.image_shape = (image_size, image_size, 3)
        else:
            self.image_shape = tuple(info.features["image"].shape)
        # normalize=False: images stay in [0, 1] (diffusion); True: the usual mean/std.
        mean, std = _MEAN_STD[name] if normalize else ((0.0,), (1.0,))
        self._mean, self._std = tf.constant(mean), tf.constant(std)

    @property
    def spec(self) -> dict:
        """What the data says to the model: ``num_classes`` and ``input_shape``."""
        return {"num_classes": int(self.num_classes), "input_shape": tuple(self.image_shape)}

    def _num_examples(self, split: str) -> int:
        try:
            return int(self.builder.info.splits[split].num_examples)
        except KeyError:
            pass
        # No split metadata (tfds mock data, some community datasets): count the records once.
        ds = self.builder.as_dataset(split=split,
                                     decoders={"image": self._tfds.decode.SkipDecoding()})
        return int(ds.reduce(0, lambda c, _: c + 1))

    @property
    def steps_per_epoch(self) -> int:
        return self.num_train // self.global_batch_size

    def _normalize(self, image):
        tf = self._tf
        return (tf.cast(image, tf.float32) / 255.0 - self._mean) / self._std

    def _augment(self, index, example):
        tf = self._tf
        # index counts this process's examples; interleaving by process gives every example of
        # the global batch its own random stream (not the same crops on every process).
        global_index = index * self.process_count + self.process_index
        seed = tf.stack([tf.cast(self.seed, tf.int64), global_index])
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        image = example["image"]
        if self.name == "imagenet2012":
            image = tf.io.decode_jpeg(image, channels=3) if image.dtype == tf.string else image
            image = inception_crop(tf, image, crop_seed, self.image_size)
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        elif self.name.startswith("cifar"):
            # Pad 4 + random 32x32 crop + horizontal flip (He et al., 2016).
            image = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
            image = tf.image.stateless_random_crop(image, self.image_shape, crop_seed)
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        return {"image": self._normalize(image), "label": tf.cast(example["label"], tf.int32)}

    def _eval_map(self, example):
        tf = self._tf
        image = example["image"]
        if self.name == "imagenet2012":
            image = tf.io.decode_jpeg(image, channels=3) if image.dtype == tf.string else image
            image = central_crop(tf, image, self.image_size)
        return {"image": self._normalize(image), "label": tf.cast(example["label"], tf.int32),
                "mask": tf.constant(1.0)}

    def _read(self, split, shuffle_files):
        tfds = self._tfds
        sub = tfds.split_for_jax_process(split, process_index=self.process_index,
                                         process_count=self.process_count)
        decoders = {"image": tfds.decode.SkipDecoding()} if self.name == "imagenet2012" else None
        read_config = tfds.ReadConfig(shuffle_seed=self.seed, interleave_cycle_length=1)
        return self.builder.as_dataset(split=sub, shuffle_files=shuffle_files, decoders=decoders,
                                       read_config=read_config)

    def train_batches(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """This process's training batches from ``start_step`` on, forever."""
        tf = self._tf
        local = self.global_batch_size // self.process_count
        ds = self._read("train", shuffle_files=False).repeat()
        ds = ds.shuffle(self.shuffle_buffer, seed=self.seed, reshuffle_each_iteration=True)
        ds = ds.enumerate().skip(start_step * local)  # skip undecoded records: cheap
        ds = ds.map(self._augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        yield from self._tfds.as_numpy(ds)

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """This process's share of the test split, once; padded rows have ``mask`` 0.

        Every process yields the same number of batches (that of the whole split at the global
        eval batch size), so no process waits in a collective for one that has finished.
        """
        tf = self._tf
        local = self.eval_batch_size // self.process_count
        steps = -(-self.num_test // self.eval_batch_size)
        ds = self._read(self.test_split, shuffle_files=False)
        ds = ds.map(self._eval_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        shape = (local, *self.image_shape)
        empty = {"image": np.zeros(shape, np.float32), "label": np.zeros(local, np.int32),
                 "mask": np.zeros(local, np.float32)}
        it = iter(self._tfds.as_numpy(ds.batch(local)))
        for _ in range(steps):
            batch = next(it, None)
            if batch is None:
                yield empty
                continue
            n = len(batch["label"])
            if n < local:  # pad so every eval step has one shape (one compile)
                batch = {k: np.concatenate([v, empty[k][n:]]) for k, v in batch.items()}
            yield batch


def _mocked(tfds) -> bool:
    # tfds.testing.mock_data replaces as_dataset; the data directory then need not exist.
    module = getattr(tfds.core.DatasetBuilder.as_dataset, "__module__", "") or ""
    return module.startswith("tensorflow_datasets.testing")

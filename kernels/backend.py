"""Backend choice shared by every packed operation: xla | pallas_gpu | pallas_tpu | auto.

``xla`` (bitwise ops + ``lax.population_count``) runs on CPU, GPU and TPU and is the reference.
``pallas_gpu`` is a Triton-lowered ``pallas_call`` and ``pallas_tpu`` a Mosaic-TPU one; on a
host without that accelerator they run in Pallas interpret mode, which is how they are tested
on CPU. ``auto`` picks :data:`AUTO` for the default device's platform. It picks ``xla``
everywhere until the Pallas kernels have been timed on real GPUs and TPUs (the benchmark report,
experiments/kernels.md, records that those timings are pending).
"""

from __future__ import annotations

import jax

BACKENDS = ("xla", "pallas_gpu", "pallas_tpu", "auto")

# Platform -> backend that ``auto`` selects.
AUTO = {"cpu": "xla", "gpu": "xla", "cuda": "xla", "rocm": "xla", "tpu": "xla"}

_NATIVE = {"pallas_gpu": ("gpu", "cuda", "rocm"), "pallas_tpu": ("tpu",)}


def platform() -> str:
    """Platform of the default device ('cpu', 'gpu', 'tpu')."""
    return jax.devices()[0].platform


def resolve(backend: str) -> tuple[str, bool]:
    """(concrete backend, interpret) for a requested backend name; unknown names raise."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid choices: {list(BACKENDS)}")
    plat = platform()
    if backend == "auto":
        backend = AUTO.get(plat, "xla")
    if backend == "xla":
        return backend, False
    return backend, plat not in _NATIVE[backend]

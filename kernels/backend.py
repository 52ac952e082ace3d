"""Backend choice of every packed operation: xla | cpu_native | pallas_gpu | pallas_tpu | auto.

``xla`` (bitwise ops + ``lax.population_count``) runs on CPU, GPU and TPU and is the reference.
``cpu_native`` is the C++ library of ``native.py`` (AVX2 XNOR-popcount, all cores) called as XLA
FFI custom calls; CPU only, built with the system compiler on first use. ``pallas_gpu`` is a
Triton-lowered ``pallas_call`` and ``pallas_tpu`` a Mosaic-TPU one; on a host without that
accelerator they run in Pallas interpret mode, which is how they are tested on CPU. ``auto``
picks :data:`AUTO` for the default device's platform: ``cpu_native`` on CPU when it is built
(else ``xla``, with one warning), ``xla`` on GPU and TPU until the Pallas kernels have been timed
on real accelerators (experiments/kernels.md records that those timings are pending).
"""

from __future__ import annotations

import jax

BACKENDS = ("xla", "cpu_native", "pallas_gpu", "pallas_tpu", "auto")

# Platform -> backend that ``auto`` selects (cpu_native only when it is available).
AUTO = {"cpu": "cpu_native", "gpu": "xla", "cuda": "xla", "rocm": "xla", "tpu": "xla"}

_NATIVE = {"pallas_gpu": ("gpu", "cuda", "rocm"), "pallas_tpu": ("tpu",)}


def platform() -> str:
    """Platform of the default device ('cpu', 'gpu', 'tpu')."""
    return jax.devices()[0].platform


def resolve(backend: str) -> tuple[str, bool]:
    """(concrete backend, interpret) for a requested backend name; unknown names raise."""
    from bnn_jax.kernels import native

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid choices: {list(BACKENDS)}")
    plat = platform()
    if backend == "auto":
        backend = AUTO.get(plat, "xla")
        if backend == "cpu_native" and not native.available():
            backend = "xla"
    if backend == "cpu_native":
        if plat != "cpu":
            raise ValueError(f"backend 'cpu_native' runs on CPU only; the default device is "
                             f"{plat!r} (use 'auto' or 'xla')")
        native._lib()  # a clear error when it is not built
        return backend, False
    if backend == "xla":
        return backend, False
    return backend, plat not in _NATIVE[backend]

"""bnn_jax.kernels: packed-bit storage and XNOR-popcount ops (XLA everywhere, Pallas on GPU/TPU).

``pack(x, axis, encoding)`` stores ±1 / {0,1} / ternary tensors as uint32 bit-planes;
``packed_matmul``, ``packed_conv2d`` and ``packed_weight_matmul`` compute on them with
``backend`` in ``xla | pallas_gpu | pallas_tpu | auto`` (see ``backend.py``).
"""

if __name__ != "bnn_jax.kernels":
    # The folder is named ``kernels`` on disk; a top-level ``kernels`` would shadow the PyPI
    # package of that name, so it is only importable as ``bnn_jax.kernels``.
    raise ImportError(f"import this package as bnn_jax.kernels, not {__name__}")

from bnn_jax.kernels.backend import BACKENDS, resolve
from bnn_jax.kernels.bitops import popcount, popcount_swar
from bnn_jax.kernels.ops import packed_conv2d, packed_matmul, packed_weight_matmul
from bnn_jax.kernels.packing import (ENCODINGS, WORD_BITS, Packed, num_words, pack, pack_bits,
                                     pack_bool, pack_ternary, storage_bits, unpack)
from bnn_jax.kernels.trits import TritPacked, pack_trits, trit_matmul, unpack_trits

__all__ = [
    "BACKENDS", "ENCODINGS", "Packed", "WORD_BITS", "num_words", "pack", "pack_bits", "pack_bool",
    "pack_ternary", "pack_trits", "packed_conv2d", "packed_matmul", "packed_weight_matmul",
    "popcount", "popcount_swar", "resolve", "storage_bits", "TritPacked", "trit_matmul", "unpack",
    "unpack_trits",
]

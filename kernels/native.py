"""The native CPU backend: C++ packed kernels (``csrc/bnn_native.cc``) as XLA FFI custom calls.

The shared library is compiled with the system C++ compiler on first use (``python -m
bnn_jax.kernels.native`` builds it ahead of time) into a cache directory, keyed by a hash of the
source, the flags, the compiler version and the jax version, so an editable checkout and an
installed copy build the same way. Without a working compiler the backend is off: ``auto``
uses the XLA path and one warning says why; nothing fails at install or import time.

Environment: ``BNN_JAX_CXX`` (compiler; default ``$CXX`` or ``g++``), ``BNN_JAX_NATIVE=0`` (off),
``BNN_JAX_CACHE_DIR`` (default ``$XDG_CACHE_HOME/bnn_jax`` or ``~/.cache/bnn_jax``),
``BNN_JAX_NUM_THREADS`` (thread pool size; default: the CPUs this process may run on),
``BNN_JAX_NATIVE_ISA=avx2|scalar`` (cap the run-time dispatch: AVX-512 VPOPCNTDQ, AVX2, scalar).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

SOURCE = pathlib.Path(__file__).resolve().parent / "csrc" / "bnn_native.cc"
FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared", "-pthread", "-fno-math-errno", "-w")
TARGETS = {"bnn_gemm": "BnnGemm", "bnn_gemv": "BnnGemv", "bnn_pack": "BnnPack",
           "bnn_trit_gemv": "BnnTritGemv"}
# W1/W1.58 x float GEMV bodies of the library; GEMV_AUTO is the one packed_weight_matmul uses
# (the fastest float-exact one in experiments/kernels.md; "int8" quantizes the activations).
GEMV_METHODS = {"lut": 0, "direct": 1, "int8": 2}
GEMV_AUTO = "lut"

_lock = threading.Lock()
_state: dict | None = None


def cache_dir() -> pathlib.Path:
    """Where built libraries are kept."""
    if os.environ.get("BNN_JAX_CACHE_DIR"):
        return pathlib.Path(os.environ["BNN_JAX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "bnn_jax"


def _compiler() -> tuple[str | None, str]:
    name = os.environ.get("BNN_JAX_CXX") or os.environ.get("CXX") or "g++"
    exe = shutil.which(name)
    if exe is None:
        return None, f"no C++ compiler: {name!r} is not an executable on PATH (set BNN_JAX_CXX)"
    return exe, name


def _build() -> dict:
    """Compile (unless cached) and load the library; register its FFI targets."""
    if os.environ.get("BNN_JAX_NATIVE", "1") == "0":
        return dict(lib=None, reason="switched off (BNN_JAX_NATIVE=0)", quiet=True)
    exe, name = _compiler()
    if exe is None:
        return dict(lib=None, reason=name)
    try:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True,
                                 timeout=60).stdout.splitlines()[:1]
    except (OSError, subprocess.SubprocessError) as e:
        return dict(lib=None, reason=f"the C++ compiler {exe} does not run: {e}")
    include = jax.ffi.include_dir()
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), " ".join(FLAGS).encode(),
                                     "".join(version).encode(), jax.__version__.encode(),
                                     include.encode()])).hexdigest()[:16]
    out = cache_dir() / f"bnn_native-{key}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        # Built under a temporary name and renamed: concurrent first uses never see half a file.
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        cmd = [exe, *FLAGS, f"-I{include}", "-o", tmp, str(SOURCE)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as e:
            os.unlink(tmp)
            return dict(lib=None, reason=f"the C++ build failed to run: {e}")
        if proc.returncode != 0:
            os.unlink(tmp)
            return dict(lib=None, reason=f"the C++ build failed ({' '.join(cmd)}):\n"
                        f"{proc.stderr[-2000:]}")
        os.replace(tmp, out)
    try:
        lib = ctypes.CDLL(str(out))
    except OSError as e:
        return dict(lib=None, reason=f"cannot load {out}: {e}")
    lib.bnn_isa.restype = ctypes.c_char_p
    lib.bnn_ceiling.restype = ctypes.c_double
    lib.bnn_ceiling.argtypes = [ctypes.c_int, ctypes.c_double]
    for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                    platform="cpu")
    return dict(lib=lib, reason=None, path=str(out))


def _load() -> dict:
    global _state
    with _lock:
        if _state is None:
            _state = _build()
            if _state["lib"] is None and not _state.get("quiet"):
                warnings.warn(f"bnn_jax.kernels: the native CPU backend is unavailable, "
                              f"backend='auto' uses the XLA path ({_state['reason']})",
                              RuntimeWarning, stacklevel=3)
        return _state


def available() -> bool:
    """Whether the native CPU kernels are built and registered (builds them on first call)."""
    return _load()["lib"] is not None


def unavailable_reason() -> str | None:
    """Why the native backend is off (None when it is available)."""
    return _load()["reason"]


def _lib():
    state = _load()
    if state["lib"] is None:
        raise RuntimeError(f"backend 'cpu_native' is unavailable: {state['reason']}. Use "
                           f"backend='xla' or 'auto', or fix the build (python -m "
                           f"bnn_jax.kernels.native)")
    return state["lib"]


def num_threads() -> int:
    """Threads the native kernels use."""
    return int(_lib().bnn_num_threads())


def set_num_threads(n: int | None) -> None:
    """Use ``n`` threads (None or 0: every CPU this process may run on). Results do not change."""
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        raise ValueError(f"set_num_threads: n must be a non-negative int or None, got {n!r}")
    _lib().bnn_set_num_threads(int(n or 0))


def machine_threads() -> int:
    """CPUs this process may run on (the default pool size)."""
    return int(_lib().bnn_machine_threads())


def isa() -> str:
    """The instruction set the kernels dispatched to: 'avx512', 'avx2' or 'scalar'."""
    return _lib().bnn_isa().decode()


ISAS = ("scalar", "avx2", "avx512")


def set_isa(name: str) -> str:
    """Cap the run-time dispatch at ``name`` (one of :data:`ISAS`); returns the ISA now used
    (the CPU's best one when it supports less than ``name``)."""
    if name not in ISAS:
        raise ValueError(f"unknown ISA {name!r}; valid choices: {list(ISAS)}")
    return ISAS[_lib().bnn_set_isa(ISAS.index(name))]


def cpu_isa() -> str:
    """The best ISA of this CPU that the kernels have a body for."""
    return ISAS[_lib().bnn_cpu_isa()]


def ceiling(threads: int, seconds: float = 0.5) -> float:
    """Gbit-MAC/s of the bare AVX2 XNOR-popcount register tile (L1-resident operands) on
    ``threads`` threads: the ceiling the GEMM is judged against (0.0 without AVX2)."""
    return float(_lib().bnn_ceiling(int(threads), float(seconds)))


# ----------------------------------------------------------------------------- the custom calls

def _empty():
    return jnp.zeros((0,), jnp.uint32)


def matmul(a_sign, a_mask, b_sign, b_mask, length: int) -> jax.Array:
    """Native version of :func:`bnn_jax.kernels.xla.matmul` (same arguments and result)."""
    _lib()
    a_any = a_sign if a_sign is not None else a_mask
    b_any = b_sign if b_sign is not None else b_mask
    m, n = a_any.shape[0], b_any.shape[1]
    has = sum(bit for bit, p in zip((8, 4, 2, 1), (a_sign, a_mask, b_sign, b_mask))
              if p is not None)
    planes = [_empty() if p is None else p for p in (a_sign, a_mask, b_sign, b_mask)]
    call = jax.ffi.ffi_call("bnn_gemm", jax.ShapeDtypeStruct((m, n), jnp.int32),
                            vmap_method="sequential")
    return call(*planes, has=np.int64(has), length=np.int64(length))


def weight_matmul(x, w_sign, w_mask, method: str = GEMV_AUTO) -> jax.Array:
    """(M, K) float activations times packed ±1/ternary weights (Kw, N) -> float32 (M, N).

    ``method`` 'lut' or 'direct' (see csrc/bnn_native.cc); for 'int8' ``x`` holds integer codes
    (|x| <= 127) and the exact int32 sums come back.
    """
    _lib()
    if method not in GEMV_METHODS:
        raise ValueError(f"unknown GEMV method {method!r}; valid choices: {list(GEMV_METHODS)}")
    kw, n = w_sign.shape
    m, k = x.shape
    dtype = jnp.int32 if method == "int8" else jnp.float32
    x = x.astype(dtype)
    if k != kw * 32:  # zero activations meet the zero pad bits
        x = jnp.pad(x, [(0, 0), (0, kw * 32 - k)])
    call = jax.ffi.ffi_call("bnn_gemv", jax.ShapeDtypeStruct((m, n), dtype),
                            vmap_method="sequential")
    return call(x, w_sign, _empty() if w_mask is None else w_mask,
                ternary=np.int64(w_mask is not None), method=np.int64(GEMV_METHODS[method]))


def trit_matmul(codes, data, n: int, digits: int) -> jax.Array:
    """Native version of :func:`bnn_jax.kernels.trits.trit_matmul_xla`: int8 ``codes`` (M, Kp)
    times the packed trit chunks ``data`` (ceil(N/16), G, 64) -> exact int32 (M, N)."""
    _lib()
    call = jax.ffi.ffi_call("bnn_trit_gemv", jax.ShapeDtypeStruct((codes.shape[0], n), jnp.int32),
                            vmap_method="sequential")
    return call(codes.astype(jnp.int8), data, digits=np.int64(digits))


def pack_last(x, encoding: str):
    """(sign, mask) planes of ``x`` packed along its last axis (as :func:`packing.pack`)."""
    _lib()
    x = lax.stop_gradient(jnp.asarray(x))
    if x.dtype not in (jnp.float32, jnp.int32):
        # Exact for the sign and non-zero tests: every float type widens to float32 exactly,
        # and every other integer (or bool) type to int32 with its sign and zero kept.
        wide = jnp.float32 if jnp.issubdtype(x.dtype, jnp.floating) else jnp.int32
        if x.dtype in (jnp.uint32, jnp.uint64, jnp.int64):
            x = jnp.sign(x).astype(jnp.int32)  # would wrap around in int32
        else:
            x = x.astype(wide)
    lead, k = x.shape[:-1], x.shape[-1]
    kw = -(-k // 32)
    which = {"binary": 2, "bool": 1, "ternary": 3}[encoding]
    out = jax.ShapeDtypeStruct((int(np.prod(lead, dtype=np.int64)), kw), jnp.uint32)
    call = jax.ffi.ffi_call("bnn_pack", (out, out), vmap_method="sequential")
    sign, mask = call(x.reshape(-1, k), which=np.int64(which))
    return (sign.reshape(*lead, kw) if which & 2 else None,
            mask.reshape(*lead, kw) if which & 1 else None)


def main(argv=None) -> int:
    """Build (if needed) and describe the native backend; exit 1 when it is unavailable."""
    args = sys.argv[1:] if argv is None else argv
    state = _load()
    if state["lib"] is None:
        print(f"native CPU backend unavailable: {state['reason']}")
        return 1
    print(f"native CPU backend: {state['path']} (isa {isa()}, {num_threads()} threads)")
    if "--ceiling" in args:
        for t in sorted({1, machine_threads()}):
            print(f"XNOR-popcount ceiling, {t} thread(s): {ceiling(t):.1f} Gbit-MAC/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The Pallas kernels lower for their real targets (Triton for an H100, Mosaic for a TPU v5e)
ahead of time on a CPU host: catches unsupported ops and block shapes without the hardware.
(Lowering is not compiling: the Triton/Mosaic compilers themselves run only on the device.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export as jexport
from jax._src import mesh as mesh_lib

from bnn_jax import kernels as K
from bnn_jax.kernels import pallas

TARGETS = {"pallas_gpu": ("cuda", "NVIDIA H100", "gpu", "__gpu$xla.gpu.triton"),
           "pallas_tpu": ("tpu", "TPU v5 lite", "tpu", "tpu_custom_call")}


def _operands():
    rng = np.random.default_rng(0)
    a = K.pack(np.where(rng.random((40, 100)) < 0.5, -1, 1), -1)
    t = K.pack(rng.integers(-1, 2, (100, 130)), 0, "ternary")
    return a, t


@pytest.mark.parametrize("backend", sorted(TARGETS))
def test_kernels_lower_for_their_targets(backend):
    platform, kind, plat, target = TARGETS[backend]
    a, t = _operands()
    x = jnp.ones((3, 100), jnp.bfloat16)
    calls = {
        "xnor": (lambda p, q: pallas.matmul(p, None, q, None, 100, backend=backend,
                                            interpret=False), (a.sign, t.sign)),
        "ternary": (lambda p, q, m: pallas.matmul(p, None, q, m, 100, backend=backend,
                                                  interpret=False), (a.sign, t.sign, t.mask)),
        "w158a16": (lambda x, q, m: pallas.weight_matmul(x, q, m, backend=backend,
                                                         interpret=False), (x, t.sign, t.mask)),
    }
    device = mesh_lib.AbstractDevice(device_kind=kind, num_cores=None, platform=plat)
    mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
    checks = [jexport.DisabledSafetyCheck.custom_call(target)]
    for name, (fn, args) in calls.items():
        with jax.sharding.use_abstract_mesh(mesh):
            exported = jexport.export(jax.jit(fn), platforms=[platform],
                                      disabled_checks=checks)(*args)
        assert target in exported.mlir_module(), name

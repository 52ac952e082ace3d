"""One device mesh with axes (data, fsdp, model) and regex partition rules on parameter paths.

Batches are split over ``data`` x ``fsdp`` (FSDP is data parallelism whose parameters are also
split); parameters follow the first rule whose regex matches their path (``"conv1/kernel"``).
A rule's spec is a tuple with one entry per array dimension (a mesh axis name, a tuple of axis
names or None), or one of the words ``"replicate"`` and ``"fsdp"`` (split the largest dimension
divisible by the fsdp axis over it, as big_vision's ``fsdp`` rule does). A dimension that a mesh
axis does not divide is kept whole, so one set of rules serves every mesh size.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")


def make_mesh(sizes: Any, devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh over all (or the given) devices; one axis size may be -1 (the remaining devices).

    ``num_devices`` (0 = all) restricts the mesh to the first devices, e.g. to compare scaling.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = dict(sizes)
    n = int(sizes.pop("num_devices", 0) or 0)
    if n:
        if n > len(devices):
            raise ValueError(f"mesh.num_devices={n} but only {len(devices)} devices exist")
        devices = devices[:n]
    unknown = sorted(set(sizes) - set(AXES))
    if unknown:
        raise ValueError(f"unknown mesh axes {unknown}; valid axes: {list(AXES)}")
    shape = [int(sizes.get(a, 1)) for a in AXES]
    if shape.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(AXES, shape))}")
    if -1 in shape:
        rest = int(np.prod([s for s in shape if s != -1]))
        if len(devices) % rest:
            raise ValueError(f"mesh {dict(zip(AXES, shape))} does not divide "
                             f"{len(devices)} devices")
        shape[shape.index(-1)] = len(devices) // rest
    if int(np.prod(shape)) != len(devices) or min(shape) < 1:
        raise ValueError(f"mesh {dict(zip(AXES, shape))} needs {int(np.prod(shape))} devices, "
                         f"{len(devices)} are available")
    return Mesh(np.asarray(devices).reshape(shape), AXES)


def path_str(path) -> str:
    """A pytree key path as ``a/b/0/kernel`` (the string partition rules and param groups match)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _axis_size(mesh: Mesh, entry) -> int:
    names = entry if isinstance(entry, tuple) else (entry,)
    return int(np.prod([mesh.shape[n] for n in names if n is not None]))


def _spec_for(shape, spec, mesh: Mesh) -> P:
    if spec == "replicate":
        return P()
    if spec == "fsdp":
        n = mesh.shape["fsdp"]
        dims = [i for i in np.argsort(shape)[::-1] if shape[i] % n == 0 and shape[i] >= n]
        if n == 1 or not dims:
            return P()
        out = [None] * len(shape)
        out[int(dims[0])] = "fsdp"
        return P(*out)
    spec = tuple(tuple(s) if isinstance(s, list) else s for s in spec)
    if len(spec) > len(shape):
        return P()  # e.g. a rule for kernels meeting a bias: nothing to split
    out = []
    for dim, entry in zip(shape, spec):
        ok = entry is None or dim % _axis_size(mesh, entry) == 0
        out.append(entry if ok else None)
    return P(*out)


def validate_rules(rules: Any) -> list[tuple[str, Any]]:
    """Check ``[(regex, spec), ...]`` and compile nothing yet; errors name the bad rule."""
    out = []
    for rule in rules or ():
        if len(rule) != 2:
            raise ValueError(f"a partition rule is (regex, spec), got {rule!r}")
        pattern, spec = rule
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"partition rule regex {pattern!r} is invalid: {e}") from e
        if not isinstance(spec, (tuple, list)) and spec not in ("replicate", "fsdp"):
            raise ValueError(f"partition rule {pattern!r} has spec {spec!r}; valid specs: "
                             f"'replicate', 'fsdp' or a tuple of mesh axes from {list(AXES)} "
                             "(or None) per dimension")
        if isinstance(spec, (tuple, list)):
            for entry in spec:
                for name in (entry if isinstance(entry, (tuple, list)) else (entry,)):
                    if name is not None and name not in AXES:
                        raise ValueError(f"partition rule {pattern!r} names mesh axis {name!r}; "
                                         f"valid axes: {list(AXES)}")
        out.append((pattern, spec))
    return out


def partition_specs(tree: Any, rules: Any, mesh: Mesh) -> Any:
    """A PartitionSpec for every array of ``tree`` (first matching rule wins; default replicate)."""
    rules = [(re.compile(p), s) for p, s in validate_rules(rules)]

    def one(path, x):
        name = path_str(path)
        for pattern, spec in rules:
            if pattern.search(name):
                return _spec_for(np.shape(x), spec, mesh)
        return P()

    return jax.tree_util.tree_map_with_path(one, tree)


def shardings(tree: Any, rules: Any, mesh: Mesh) -> Any:
    """NamedShardings for ``tree`` following ``rules`` (see :func:`partition_specs`)."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), partition_specs(tree, rules, mesh))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data and fsdp axes."""
    return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble the global batch from every process's local share (no host-to-host copy)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local.items()}

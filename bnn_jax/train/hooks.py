"""Step hooks: host-side updates of a model's non-parameter state every N steps.

Some methods change a model outside the gradient step: EcoFormer re-solves its hash functions
on a schedule, a method may refresh buffers from the current batch. ``config.hooks`` lists them
as ``dict(name=..., every=N, at_start=False, **fields)``; the loop calls each one on the host
after optimizer step ``s`` when ``s % every == 0`` (and, with ``at_start``, once before the
first step of a fresh run) as ``fn(model, batch, step, **fields)``:

* ``model`` is the live NNX model in train mode, holding the current train state;
* ``batch`` is the host (numpy) training batch of that step (the first batch at the start);
* the hook may change any non-``nnx.Param`` variable of the model; the loop writes the model's
  non-parameter state back into the train state. Parameters belong to the optimizer: a hook
  that replaces one is an error.

A hook is named by a built-in name (:data:`HOOKS`), a name given to :func:`register`, or an
import path ``"pkg.module:function"``. A hook function may carry a ``validate(**fields)``
attribute; :func:`validate` calls it when the config is checked, before anything is built.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import jax
from flax import nnx

# Built-in hooks: name -> "module:function" (imported only when used).
HOOKS: dict[str, str] = {
    "ecoformer_refresh": "bnn_jax.nn.ecoformer:refresh_hook",
    "binarydm_progressive": "bnn_jax.models.unet:progressive_hook",
}
_REGISTERED: dict[str, Callable] = {}
RESERVED = ("name", "every", "at_start")


def names() -> list[str]:
    """Every hook name (built-in and registered), sorted."""
    return sorted({*HOOKS, *_REGISTERED})


def register(name: str) -> Callable[[Callable], Callable]:
    """Decorator: make ``fn`` usable as ``config.hooks = [dict(name=name, ...)]``."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"a hook name is a non-empty string without ':' (':' marks import "
                         f"paths), got {name!r}")

    def add(fn: Callable) -> Callable:
        if not callable(fn):
            raise ValueError(f"hook {name!r} must be a function, got {fn!r}")
        _REGISTERED[name] = fn
        return fn

    return add


def _resolve(path: str, name: str) -> Callable:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"hook {name!r}: an import path looks like 'pkg.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"hook {name!r}: cannot import module {module_name!r} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"hook {name!r}: module {module_name!r} has no function {attr!r}")
    return fn


def get(name: str) -> Callable:
    """The hook function of ``name`` (ValueError listing the valid names if unknown)."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in HOOKS:
        return _resolve(HOOKS[name], name)
    if isinstance(name, str) and ":" in name:
        return _resolve(name, name)
    raise ValueError(f"unknown hook {name!r}; valid hooks: {names()} (or an import path "
                     "'pkg.module:function')")


def _fields(d: Any) -> dict:
    return d.to_dict() if hasattr(d, "to_dict") else dict(d)


def parse(hooks: Any) -> list[tuple[Callable, int, bool, dict]]:
    """``[(fn, every, at_start, fields)]`` of ``config.hooks``, every error with its fix."""
    out = []
    for i, spec in enumerate(hooks or ()):
        where = f"config.hooks[{i}]"
        try:
            spec = _fields(spec)
        except (TypeError, ValueError):
            raise ValueError(f"{where} must be a dict(name=..., every=N, ...), got "
                             f"{spec!r}") from None
        if "name" not in spec:
            raise ValueError(f"{where} has no 'name'; valid hooks: {names()}")
        fn = get(spec["name"])
        every = spec.get("every")
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"{where} ({spec['name']!r}): 'every' must be a positive integer "
                             f"(steps between calls), got {every!r}")
        at_start = spec.get("at_start", False)
        if not isinstance(at_start, bool):
            raise ValueError(f"{where}.at_start must be True or False, got {at_start!r}")
        fields = {k: v for k, v in spec.items() if k not in RESERVED}
        check = getattr(fn, "validate", None)
        if check is not None:
            try:
                check(**fields)
            except TypeError as e:
                raise ValueError(f"{where} ({spec['name']!r}): {e}") from None
        out.append((fn, every, at_start, fields))
    return out


def validate(hooks: Any) -> None:
    """Reject unknown hooks, bad intervals and fields the hook's own check refuses."""
    parse(hooks)


def apply(fn: Callable, fields: dict, graph: Any, params: Any, rest: Any, batch: dict,
          step: int) -> Any:
    """Run one hook on the model merged from ``(graph, params, rest)``; the new ``rest``.

    The hook sees a live model; any parameter it replaces is reported, by path, as an error.
    """
    from bnn_jax.train.sharding import path_str

    model = nnx.merge(graph, params, rest)
    fn(model, batch, step, **fields)
    _, new_params, new_rest = nnx.split(model, nnx.Param, ...)
    before = jax.tree_util.tree_leaves_with_path(params)
    after = jax.tree.leaves(nnx.to_pure_dict(new_params))
    changed = [path_str(p) for (p, a), b in zip(before, after) if a is not b]
    if len(before) != len(after) or changed:
        raise RuntimeError(f"hook {getattr(fn, '__name__', fn)!r} changed parameters "
                           f"{changed or '(the parameter tree)'}; hooks may change only "
                           "non-Param state (parameters belong to the optimizer)")
    return nnx.to_pure_dict(new_rest)

"""Name -> quantizer registry, so configs can say ``dict(name="ste_sign", clip_value=1.0)``.

A method registers its pure function ``q(x, *, learned..., static=default...)``: keyword-only
parameters *without* a default are learned arrays (an LSQ step, an RSign shift) that the caller
passes on every call; those *with* a default are static parameters that ``get`` binds (they may
still be overridden per call, which is how schedules such as ReSTE's ``o`` are fed a traced
value). ``validate(**static)`` rejects bad values with :func:`check` and friends;
``init(x, **static)`` is the method's first-call rule for its learned arrays. Every error lists
what would have been valid.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping

KINDS = ("quantizer", "activation", "constraint")


@dataclasses.dataclass(frozen=True, eq=False)
class Quantizer:
    """A quantizer built by :func:`get`: call it as ``q(x, **learned)``.

    ``learned`` names the arrays the caller must pass (empty for most methods); ``init(x)``
    returns their initial values as a dict (the method's first-call rule). ``bits`` is the
    output precision for model summaries (None = full precision).
    """

    fn: Callable[..., Any]
    name: str = ""
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    learned: tuple[str, ...] = ()
    bits: float | None = None
    kind: str = "quantizer"
    init_fn: Callable[..., Mapping[str, Any]] | None = None

    def __call__(self, x, **kwargs):
        return self.fn(x, **{**self.params, **kwargs})

    def init(self, x) -> dict[str, Any]:
        """Initial values of the learned arrays for input ``x`` ({} if there are none)."""
        if self.init_fn is None:
            if self.learned:
                raise ValueError(f"quantizer {self.name!r} has learned parameters "
                                 f"{list(self.learned)} but no init rule")
            return {}
        return dict(self.init_fn(x, **self.params))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"Quantizer({self.name}({args}), bits={self.bits})"


@dataclasses.dataclass(frozen=True)
class Entry:
    """What the registry knows of one method: its function, checks and the README facts."""

    name: str
    fn: Callable[..., Any]
    paper: str
    formula: str
    result: str
    bits: float | Callable[..., float | None] | None
    kind: str
    aliases: tuple[str, ...]
    validate: Callable[..., None] | None
    init: Callable[..., Mapping[str, Any]] | None

    def signature(self) -> tuple[dict[str, Any], tuple[str, ...]]:
        """(static parameters with their defaults, learned parameter names) of ``fn``."""
        static, learned = {}, []
        for p in list(inspect.signature(self.fn).parameters.values())[1:]:
            if p.kind is not inspect.Parameter.KEYWORD_ONLY:
                raise TypeError(f"{self.name}: parameters after x must be keyword-only")
            if p.default is inspect.Parameter.empty:
                learned.append(p.name)
            else:
                static[p.name] = p.default
        return static, tuple(learned)


_REGISTRY: dict[str, Entry] = {}
_ALIASES: dict[str, str] = {}


def register(name: str, *, paper: str, formula: str, result: str = "", bits: Any = 1,
             kind: str = "quantizer", aliases: tuple[str, ...] = (),
             validate: Callable[..., None] | None = None,
             init: Callable[..., Mapping[str, Any]] | None = None) -> Callable:
    """Decorator registering the pure function ``fn(x, *, ...)`` under ``name`` and ``aliases``.

    ``bits`` is a number, None (full precision) or a function of the static parameters.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def deco(fn: Callable) -> Callable:
        for n in (name, *aliases):
            if n in _REGISTRY or n in _ALIASES:
                raise ValueError(f"quantizer name {n!r} is registered twice")
        e = Entry(name, fn, paper, formula, result, bits, kind, tuple(aliases), validate, init)
        e.signature()  # fail at import time on a malformed signature
        _REGISTRY[name] = e
        for a in aliases:
            _ALIASES[a] = name
        return fn

    return deco


def names(kind: str | None = None) -> list[str]:
    """Sorted registered names (canonical ones, not aliases), optionally of one kind."""
    return sorted(n for n, e in _REGISTRY.items() if kind is None or e.kind == kind)


def entry(name: str) -> Entry:
    """The registry entry of ``name`` or one of its aliases."""
    canonical = _ALIASES.get(name, name)
    if canonical not in _REGISTRY:
        valid = ", ".join(sorted([*_REGISTRY, *_ALIASES]))
        raise ValueError(f"unknown quantizer {name!r}; valid names: {valid}")
    return _REGISTRY[canonical]


def get(spec: Any, **params: Any) -> Quantizer:
    """Build a quantizer from a name (``get("ste_sign", clip_value=1.0)``), a mapping with a
    ``name`` key (a config entry), or return a :class:`Quantizer` unchanged."""
    if isinstance(spec, Quantizer):
        if params:
            raise ValueError("parameters cannot be given with an already built Quantizer")
        return spec
    if isinstance(spec, Mapping) or hasattr(spec, "to_dict"):
        spec = dict(spec.to_dict() if hasattr(spec, "to_dict") else spec)
        if "name" not in spec:
            raise ValueError(f"a quantizer spec needs a 'name' key, got keys {sorted(spec)}")
        name = spec.pop("name")
        return get(name, **{**spec, **params})
    if not isinstance(spec, str):
        raise ValueError(f"a quantizer is named by a string or a dict with 'name', got {spec!r}")
    e = entry(spec)
    static, learned = e.signature()
    unknown = sorted(set(params) - set(static))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for quantizer {e.name!r}; "
                         f"valid parameters: {sorted(static) or 'none'}"
                         + (f" (learned arrays {list(learned)} are passed per call)"
                            if learned else ""))
    resolved = {**static, **params}
    if e.validate is not None:
        e.validate(**resolved)
    bits = e.bits(**resolved) if callable(e.bits) else e.bits
    return Quantizer(fn=e.fn, name=e.name, params=resolved, learned=learned, bits=bits,
                     kind=e.kind, init_fn=e.init)


def check(ok: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok``: the one way factories reject parameters."""
    if not ok:
        raise ValueError(message)


def check_positive(name: str, value: Any, *, allow_none: bool = False) -> None:
    """Reject a non-positive (or, unless allowed, missing) numeric parameter."""
    if value is None and allow_none:
        return
    check(isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0,
          f"{name} must be a positive number{' or None' if allow_none else ''}, got {value!r}")


def check_schedule_value(name: str, value: Any, *, lo: float | None = None,
                         strict: bool = False) -> None:
    """Accept a number (checked against ``lo``, ``> lo`` if ``strict``) or an array scalar (a
    traced schedule value, checked when it is used); reject anything else."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None:
            ok = value > lo if strict else value >= lo
            check(ok, f"{name} must be a number {'>' if strict else '>='} {lo}, got {value!r}")
        return
    check(hasattr(value, "dtype") and hasattr(value, "shape"),
          f"{name} must be a number or a (traced) array scalar, got {value!r}")


def check_choice(name: str, value: Any, choices: tuple) -> None:
    """Reject a parameter outside a fixed set, listing the set."""
    check(value in choices, f"{name} must be one of {list(choices)}, got {value!r}")


def check_sign_zero(sign_zero: Any = 0) -> None:
    """Reject a ``sign_zero`` (the value a method's sign gives at 0) other than 0 or 1."""
    check(sign_zero in (0, 1) and not isinstance(sign_zero, bool),
          f"sign_zero must be one of [0, 1] (the value of sign(0)), got {sign_zero!r}")


def check_int_range(name: str, value: Any, lo: int, hi: int) -> None:
    """Reject a parameter that is not an integer in [lo, hi]."""
    check(isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi,
          f"{name} must be an integer in {lo}..{hi}, got {value!r}")


def markdown_table(kind: str | None = None) -> str:
    """The README's table of registered methods: name, paper, formula, reference result."""
    rows = ["| name | paper | formula (forward; backward) | reference result |",
            "|---|---|---|---|"]
    for n in names(kind):
        e = _REGISTRY[n]
        shown = f"`{n}`" + "".join(f" (`{a}`)" for a in e.aliases)
        cells = [shown, e.paper, e.formula, e.result or "–"]
        rows.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells)
                    + " |")
    return "\n".join(rows)

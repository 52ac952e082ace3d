"""``quantize(model, rules)``: swap an NNX model's Linear/Conv/Einsum layers for quantized ones.

A rule is a regex on the module path (``"/"``-joined attribute names and indices, e.g.
``"encoder/layers/0/attn/query"``, matched with ``re.fullmatch``) plus a weight (kernel)
quantizer, an input quantizer and optional layer arguments. The first rule whose pattern matches
a layer decides it; a rule whose quantizers are both None keeps the matched layers at full
precision (put it first to exempt a stem or a head). Unmatched layers are left untouched. The
replacement layer holds the *same* ``nnx.Param`` objects as the original, so an optimizer state
or a sharding built on them stays valid.

Layers may sit anywhere in the graph (attributes, ``nnx.List``, dicts) and may be stacked
(``nnx.vmap``/``nnx.scan`` over layers: kernels with leading layer axes). Linen models wrapped
in ``nnx.bridge.ToNNX`` are quantized by interception (:func:`bnn_jax.nn.quantize_linen`), with
rules matched against the NNX path of the wrapper followed by the Linen module path.

A rule that matches nothing is almost always a typo, so it is reported (``report.unused_rules``),
warned about, and with ``strict=True`` raises.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from typing import Any, Iterable, Mapping

from flax import nnx
from flax.nnx import graphlib
from jax import lax

from bnn_jax.nn.layers import (QuantConv, QuantConvTranspose, QuantEinsum, QuantEmbed,
                               QuantLinear, QuantLinearGeneral, _as_constraint, as_quantizer)
from bnn_jax.quant.registry import check

_RULE_KEYS = ("pattern", "weight", "input", "constraint", "params")


@dataclasses.dataclass(frozen=True)
class Rule:
    """Layers whose path fully matches ``pattern`` get these quantizers (None = full precision).

    ``weight``/``input``: quantizer specs for the kernel and the input (a registry name, a dict
    with ``name``, or a Quantizer). ``constraint``: a kernel constraint such as ``"weight_clip"``.
    ``params``: extra arguments of the quantized layer (e.g. ``pad_values`` of QuantConv).
    """

    pattern: str
    weight: Any = None
    input: Any = None
    constraint: Any = None
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        try:
            re.compile(self.pattern)
        except (re.error, TypeError) as e:
            raise ValueError(f"rule pattern {self.pattern!r} is not a valid regex: {e}") from None
        # Resolve the specs now: a bad name fails before any layer is swapped.
        as_quantizer(self.weight, role=f"weight quantizer of rule {self.pattern!r}")
        as_quantizer(self.input, role=f"input quantizer of rule {self.pattern!r}")
        _as_constraint(self.constraint)

    @property
    def full_precision(self) -> bool:
        """True when the rule keeps its layers unquantized."""
        return self.weight is None and self.input is None and self.constraint is None

    def matches(self, path: str) -> bool:
        """Whether ``path`` fully matches the rule's pattern."""
        return re.fullmatch(self.pattern, path) is not None


def as_rule(r: Any) -> Rule:
    """A :class:`Rule` from a Rule, a (pattern, weight[, input[, params]]) tuple or a mapping."""
    if isinstance(r, Rule):
        return r
    if hasattr(r, "to_dict"):
        r = r.to_dict()
    if isinstance(r, Mapping):
        unknown = sorted(set(r) - set(_RULE_KEYS))
        check(not unknown, f"unknown rule key(s) {unknown}; valid keys: {list(_RULE_KEYS)}")
        check("pattern" in r, f"a rule needs a 'pattern', got keys {sorted(r)}")
        return Rule(**{k: (dict(v) if k == "params" else v) for k, v in r.items()})
    if isinstance(r, (tuple, list)) and 1 <= len(r) <= 4:
        if len(r) == 4:
            return Rule(r[0], r[1], r[2], params=dict(r[3]))
        return Rule(*r)
    raise ValueError(f"a rule is a Rule, a mapping with keys {list(_RULE_KEYS)} or a tuple "
                     f"(pattern, weight[, input[, params]]), got {r!r}")


@dataclasses.dataclass
class Replacement:
    """One layer swapped by :func:`quantize`."""

    path: str
    old: str
    new: str
    rule: int
    weight: str
    input: str


@dataclasses.dataclass
class QuantizeReport:
    """What :func:`quantize` did: replaced layers, layers kept at full precision, unused rules."""

    replaced: list[Replacement] = dataclasses.field(default_factory=list)
    kept: list[str] = dataclasses.field(default_factory=list)
    unmatched: list[str] = dataclasses.field(default_factory=list)
    unused_rules: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    unsupported: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"quantize: {len(self.replaced)} replaced, {len(self.kept)} kept full precision "
                 f"by a rule, {len(self.unmatched)} matched no rule"]
        for r in self.replaced:
            lines.append(f"  {r.path}: {r.old} -> {r.new} (rule {r.rule}: weight={r.weight}, "
                         f"input={r.input})")
        for i, p in self.unused_rules:
            lines.append(f"  WARNING rule {i} {p!r} matched no layer")
        for p, why in self.unsupported:
            lines.append(f"  {p}: left unchanged ({why} is not supported)")
        return "\n".join(lines)


_TARGETS = (nnx.Linear, nnx.Conv, nnx.ConvTranspose, nnx.Einsum, nnx.LinearGeneral, nnx.Embed,
            QuantLinear, QuantConv, QuantConvTranspose, QuantEinsum, QuantLinearGeneral,
            QuantEmbed)


def _unsupported(m) -> str | None:
    """Why a target-typed layer cannot be swapped (None if it can)."""
    if isinstance(m, nnx.LinearGeneral) and len(m.batch_axis):
        return "nnx.LinearGeneral with batch_axis"
    if isinstance(m, nnx.ConvTranspose) and m.padding == "CIRCULAR":
        return "nnx.ConvTranspose with CIRCULAR padding"
    return None


def _common(m) -> dict[str, Any]:
    if isinstance(m, (nnx.Embed, QuantEmbed)):
        return dict(dtype=m.dtype, param_dtype=m.param_dtype, promote_dtype=m.promote_dtype,
                    embedding=m.embedding)
    kw = dict(dtype=m.dtype, param_dtype=m.param_dtype, precision=m.precision,
              promote_dtype=m.promote_dtype, kernel=m.kernel,
              preferred_element_type=getattr(m, "preferred_element_type", None))
    if m.bias is not None:
        kw["bias"] = m.bias
    return kw


def _quantized(m, rule: Rule):
    """The quantized layer for ``m`` under ``rule``, sharing m's parameter objects."""
    q = dict(input_quantizer=rule.input, kernel_quantizer=rule.weight,
             kernel_constraint=rule.constraint, **rule.params)
    if hasattr(m, "extra_init_args"):  # a QuantConv subclass such as WSConv keeps its class
        q = {**m.extra_init_args(), **q}
    if isinstance(m, (nnx.Embed, QuantEmbed)):
        return QuantEmbed(m.num_embeddings, m.features, **_common(m), **q)
    if isinstance(m, (nnx.ConvTranspose, QuantConvTranspose)):
        return QuantConvTranspose(m.in_features, m.out_features, m.kernel_size, m.strides,
                                  padding=m.padding, kernel_dilation=m.kernel_dilation,
                                  use_bias=m.bias is not None, mask=m.mask,
                                  transpose_kernel=m.transpose_kernel, **_common(m), **q)
    if isinstance(m, (nnx.LinearGeneral, QuantLinearGeneral)):
        return QuantLinearGeneral(m.in_features, m.out_features, axis=m.axis,
                                  use_bias=m.bias is not None, dot_general=m.dot_general or
                                  lax.dot_general, **_common(m), **q)
    if isinstance(m, (nnx.Linear, QuantLinear)):
        return QuantLinear(m.in_features, m.out_features, use_bias=m.bias is not None,
                           dot_general=m.dot_general, **_common(m), **q)
    if isinstance(m, (nnx.Conv, QuantConv)):
        extra = {}
        if isinstance(m, QuantConv) and "pad_values" not in rule.params:
            extra["pad_values"] = m.pad_values
        cls = type(m) if isinstance(m, QuantConv) else QuantConv
        return cls(m.in_features, m.out_features, m.kernel_size, m.strides,
                   padding=m.padding, input_dilation=m.input_dilation,
                   kernel_dilation=m.kernel_dilation, feature_group_count=m.feature_group_count,
                   use_bias=m.bias is not None, mask=m.mask,
                   conv_general_dilated=m.conv_general_dilated, **_common(m), **extra, **q)
    return QuantEinsum(m.einsum_str, m.kernel_shape, getattr(m, "bias_shape", None),
                       einsum_op=m.einsum_op, **_common(m), **q)


def _name(spec: Any) -> str:
    if spec is None:
        return "none"
    if isinstance(spec, str):
        return spec
    if isinstance(spec, Mapping) or hasattr(spec, "to_dict"):
        return str(dict(spec).get("name", "?"))
    return getattr(spec, "name", repr(spec))


def set_child(parent: Any, key: Any, value: Any) -> None:
    """Replace ``parent[key]`` / ``parent.key`` (a module attribute, list or dict entry)."""
    if isinstance(parent, nnx.Module) and not hasattr(parent, "__setitem__"):
        setattr(parent, key, value)
    else:
        parent[key] = value


def module_references(root: Any) -> list[tuple[tuple, Any, Any, Any]]:
    """(path, parent, key, child) for every reference to a graph node below ``root``.

    Unlike ``nnx.iter_graph`` (one path per node), a module shared by several parents appears
    once per reference, so a rule can match any of its paths and every reference is swapped.
    """
    out, visited, stack = [], set(), [((), None, None, root)]
    while stack:  # depth first, children in key order: the report follows the model's layout
        path, parent, key, node = stack.pop()
        if parent is not None:
            out.append((path, parent, key, node))
        if id(node) in visited:
            continue
        visited.add(id(node))
        impl = graphlib.get_node_impl(node)
        if impl is None:
            continue
        children = [(k, c) for k, c in impl.node_dict(node).items()
                    if not isinstance(c, nnx.Variable) and graphlib.is_node(c)]
        stack.extend(((*path, k), node, k, c) for k, c in reversed(children))
    return out


def _linen_paths(tree: Any, prefix: tuple = ()) -> list[tuple[str, ...]]:
    """Paths of the sub-dicts of a Linen variable tree that hold a ``kernel``/``embedding``."""
    if not isinstance(tree, Mapping):
        return []
    out = [prefix] if ("kernel" in tree or "embedding" in tree) else []
    for k, v in tree.items():
        out += _linen_paths(v, (*prefix, str(k)))
    return out


def _plan_bridge(node, path: str, rules: list[Rule], used: list[bool],
                 report: QuantizeReport) -> bool:
    """Match the Linen layers of a ``nnx.bridge.ToNNX`` wrapper (from its variables) and check
    the rules fit; returns whether the wrapper holds variables yet."""
    from flax.nnx.bridge import variables as bridge_vars

    attrs = {k: v for k, v in vars(node).items()
             if not k.startswith("to_nnx__") and not k.startswith("_pytree__")}
    params = bridge_vars.nnx_attrs_to_linen_vars(attrs).get("params") if attrs else None
    if not params:
        return False
    for lpath in _linen_paths(params):
        full = "/".join((path, *lpath))
        hit = next((i for i, r in enumerate(rules) if r.matches(full)), None)
        if hit is None:
            report.unmatched.append(full)
            continue
        used[hit] = True
        rule = rules[hit]
        if rule.full_precision:
            report.kept.append(full)
            continue
        for role, spec in (("weight", rule.weight), ("input", rule.input)):
            q = as_quantizer(spec)
            if q is not None and q.learned and f"{role.replace('weight', 'kernel')}_" \
                    f"{q.learned[0]}" not in _leaf_names(params, lpath):
                raise ValueError(
                    f"rule {hit} {rule.pattern!r}: {role} quantizer {q.name!r} has learned "
                    f"arrays {list(q.learned)}, which the already initialized nnx.bridge.ToNNX "
                    f"at {path!r} has no place for; quantize it before lazy_init")
        report.replaced.append(Replacement(full, "linen", "linen (intercepted)", hit,
                                           _name(rule.weight), _name(rule.input)))
    return True


def _leaf_names(tree: Mapping, path: tuple) -> set[str]:
    for p in path:
        tree = tree[p]
    return set(tree)


def quantize(model: nnx.Module, rules: Iterable[Any], *, strict: bool = False) -> QuantizeReport:
    """Replace matching Linear/Conv/Einsum/LinearGeneral layers of ``model`` in place; returns
    a report.

    ``rules``: :class:`Rule` objects, mappings ``dict(pattern=, weight=, input=, constraint=,
    params=)`` or tuples ``(pattern, weight[, input[, params]])``; the first match wins.
    ``strict=True`` raises ValueError when a rule matches no layer (otherwise a warning).
    Already quantized layers are re-quantized under the new rule (their learned quantizer
    arrays are dropped; kernels and biases are kept).
    """
    rules = [as_rule(r) for r in rules]
    if isinstance(model, _TARGETS):
        raise ValueError("quantize() swaps layers inside a model; wrap a bare layer in a Module")
    report = QuantizeReport()
    used = [False] * len(rules)
    refs: dict[int, list] = {}
    bridges = []
    for path, parent, key, child in module_references(model):
        if isinstance(child, nnx.bridge.ToNNX):
            name = "/".join(map(str, path))
            bridges.append((name, child, _plan_bridge(child, name, rules, used, report)))
            continue
        if isinstance(child, _TARGETS):
            if (why := _unsupported(child)) is not None:
                report.unsupported.append(("/".join(map(str, path)), why))
                continue
            refs.setdefault(id(child), []).append(("/".join(map(str, path)), parent, key, child))
    plan = []  # decide everything first, so strict=True raises before the model is touched
    for group in refs.values():
        names = [g[0] for g in group]
        hit = next(((i, n) for i, r in enumerate(rules) for n in names if r.matches(n)), None)
        if hit is None:
            report.unmatched.append(names[0])
            continue
        used[hit[0]] = True
        if rules[hit[0]].full_precision:
            report.kept.append(hit[1])
        else:
            plan.append((hit, group))
    report.unused_rules = [(i, r.pattern) for i, r in enumerate(rules) if not used[i]]
    if any(not initialized for *_, initialized in bridges):
        # The Linen layers of a ToNNX without variables are only known when it first runs.
        report.unused_rules = []
    if report.unused_rules:
        msg = "; ".join(f"rule {i} {p!r}" for i, p in report.unused_rules)
        if strict:
            paths = [*report.unmatched, *report.kept, *(h[1] for h, _ in plan)]
            raise ValueError(f"quantize rules matched no layer: {msg}; layer paths: {paths}")
        warnings.warn(f"quantize rules matched no layer (typo?): {msg}", stacklevel=2)
    # Build every replacement before swapping any, so a rule whose params do not fit one of
    # its layers leaves the model untouched.
    built = []
    for (i, name), group in plan:
        old = group[0][3]
        try:
            built.append((i, name, group, old, _quantized(old, rules[i])))
        except TypeError as e:
            raise ValueError(f"rule {i} {rules[i].pattern!r} cannot quantize {name} "
                             f"({type(old).__name__}) with params {dict(rules[i].params)}: "
                             f"{e}") from None
    from bnn_jax.nn.linen import QuantizedLinen, quantize_linen

    for name, node, _ in bridges:
        inner = node.to_nnx__module
        if isinstance(inner, QuantizedLinen):
            inner = inner.module
        node.to_nnx__module = quantize_linen(inner, rules, prefix=name)
    for i, name, group, old, new in built:
        for _, parent, key, _ in group:
            set_child(parent, key, new)
        report.replaced.append(Replacement(name, type(old).__name__, type(new).__name__, i,
                                           _name(rules[i].weight), _name(rules[i].input)))
    return report

"""Precision policy: an ml_collections config (default plus path overrides) -> quantize rules.

A policy entry is either a bit width (looked up in ``presets``) or explicit quantizers::

    policy = precision_policy(default=1, overrides=[
        ("stem/.*", 8), (r".*/se/.*", 4), ("head", 8)])   # PokeBNN: stem 8, SE 4, body 1, head 8
    report = apply_policy(model, policy)

In a config file the same is plain data, so ``--config.quant.default.bits=2`` works::

    config.quant = dict(default=dict(bits=1), overrides=[
        dict(pattern="stem/.*", bits=8), dict(pattern=r".*/se/.*", bits=4),
        dict(pattern="head", bits=8, weight=dict(name="statsq", bits=8))])

Overrides come first (the first matching one wins); the default applies to every other layer.
``bits`` of 32 or None means full precision. An entry's explicit ``weight``/``input``/
``constraint``/``params`` replace what its preset gives.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import ml_collections

from bnn_jax.nn.intercept import QuantizeReport, Rule, quantize
from bnn_jax.quant.registry import check

#: Bits -> quantizers. 1: larq's BNN sign with clipped STE; k >= 2: OFQ's StatsQ weights and
#: LSQ inputs (learned step, initialized from the first batch).
DEFAULT_PRESETS: dict[int, dict[str, Any]] = {
    1: dict(weight="ste_sign", input="ste_sign"),
    **{k: dict(weight=dict(name="statsq", bits=k), input=dict(name="lsq", bits=k))
       for k in (2, 3, 4, 5, 6, 7, 8)},
}

_ENTRY_KEYS = ("pattern", "bits", "weight", "input", "constraint", "params")


def precision_policy(default: Any = 1, overrides: Iterable[Any] = (),
                     presets: Mapping[int, Mapping[str, Any]] | None = None
                     ) -> ml_collections.ConfigDict:
    """A policy ConfigDict. ``default``/override values: bits (int or None) or an entry dict
    with ``bits``/``weight``/``input``/``constraint``/``params``; overrides are
    ``(pattern, value)`` pairs or entry dicts with a ``pattern``."""
    def entry(v):
        return dict(v) if isinstance(v, Mapping) else dict(bits=v)

    over = []
    for o in overrides:
        if isinstance(o, Mapping):
            over.append(dict(o))
        else:
            pattern, value = o
            over.append(dict(pattern=pattern, **entry(value)))
    cfg = ml_collections.ConfigDict()
    cfg.default = entry(default)
    cfg.overrides = over
    if presets is not None:
        cfg.presets = {str(k): dict(v) for k, v in presets.items()}
    return cfg


def _presets(cfg) -> dict[int, dict[str, Any]]:
    raw = cfg.get("presets", None) if hasattr(cfg, "get") else None
    table = dict(DEFAULT_PRESETS)
    if raw is not None:
        raw = raw.to_dict() if hasattr(raw, "to_dict") else raw
        table.update({int(k): dict(v) for k, v in raw.items()})
    return table


def _rule(e: Any, pattern: str, presets) -> Rule:
    e = e.to_dict() if hasattr(e, "to_dict") else dict(e)
    unknown = sorted(set(e) - set(_ENTRY_KEYS))
    check(not unknown, f"unknown policy key(s) {unknown}; valid keys: {list(_ENTRY_KEYS)}")
    bits = e.get("bits", None)
    base: dict[str, Any] = {}
    if bits is not None and bits != 32:
        check(bits in presets, f"no preset for bits={bits!r}; presets exist for "
                               f"{sorted(presets)} (add one under 'presets')")
        base = dict(presets[bits])
    for key in ("weight", "input", "constraint", "params"):
        if key in e:
            base[key] = e[key]
    params = base.pop("params", None) or {}
    return Rule(pattern, base.get("weight"), base.get("input"), base.get("constraint"),
                params=dict(params))


def policy_rules(policy: Any) -> list[Rule]:
    """The :func:`bnn_jax.nn.quantize` rules of a policy: overrides in order, then the default
    as a catch-all ``.*`` (left out when the default is full precision)."""
    presets = _presets(policy)
    rules = []
    for o in policy.get("overrides", None) or ():
        o = o.to_dict() if hasattr(o, "to_dict") else dict(o)
        check("pattern" in o, f"a policy override needs a 'pattern', got keys {sorted(o)}")
        rules.append(_rule({k: v for k, v in o.items() if k != "pattern"}, o["pattern"],
                           presets))
    default = _rule(policy.get("default", None) or {}, ".*", presets)
    if not default.full_precision:
        rules.append(default)
    return rules


def apply_policy(model, policy: Any, *, strict: bool = False) -> QuantizeReport:
    """``quantize(model, policy_rules(policy))``."""
    return quantize(model, policy_rules(policy), strict=strict)


QUANT_CONFIG_KEYS = ("rules", "default", "overrides", "presets")


def config_rules(quant: Any) -> list[Rule]:
    """The rules of a ``config.quant`` section: its ``rules`` (each a rule tuple or mapping, as
    :func:`bnn_jax.nn.quantize` takes them) first, then its precision policy (``overrides``,
    then ``default`` as a catch-all); ValueError for a bad key, quantizer or rule."""
    from bnn_jax.nn.intercept import as_rule

    if quant is None:
        return []
    quant = quant.to_dict() if hasattr(quant, "to_dict") else dict(quant)
    unknown = sorted(set(quant) - set(QUANT_CONFIG_KEYS))
    check(not unknown, f"unknown field(s) {unknown} in config.quant; valid fields: "
                       f"{list(QUANT_CONFIG_KEYS)}")
    rules = [as_rule(r) for r in quant.get("rules") or ()]
    if quant.get("default") is not None or quant.get("overrides"):
        rules += policy_rules(quant)
    return rules


def quantize_config(model, quant: Any) -> QuantizeReport | None:
    """Binarize ``model`` (any NNX model, also a user's) in place by a ``config.quant``
    section; None when it has no rules. Every rule must match a layer (strict)."""
    rules = config_rules(quant)
    if not rules:
        return None
    return quantize(model, rules, strict=True)

"""Distillation terms composed from ``config.kd``: logits and intermediate features.

``config.kd.terms`` is a list of dicts, each one loss of :mod:`bnn_jax.train.losses` with a
weight; the training loss is ``task_weight · task loss + Σ weight_i · term_i``. Logit terms
compare the outputs the task names (:meth:`bnn_jax.tasks.Task.distill_logits`, masked for
tokens); feature terms compare intermediate features that the models record with
``sow(nnx.Intermediate, ...)``, selected by a regex on their module path (``blocks/3/hidden``)
and paired student-to-teacher in path order, or by ``layer_map`` (teacher index per student
feature). Values a module sows several times per call are numbered: ``hidden_states/0``, ...
Without ``terms`` the older single-term fields apply: ``kind`` with ``weight`` and
``temperature``, task weight ``1 − weight``.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp

from bnn_jax.train import losses


def attention_matching_loss(student_volumes, teacher_volumes):
    """Real-to-Binary's attention matching (Martinez et al., ICLR 2020), as larq-zoo's
    ``AttentionMatchingLossLayer`` (``training/knowledge_distillation/knowledge_distillation.py``):
    per volume ``Q = mean_c(A^2)`` flattened per example and divided by its maximum, the loss
    ``mean((Q_s - Q_t)^2)`` over positions, then the mean over examples and volumes; the
    teacher's volumes are stop-gradient. Volumes are NHWC with equal N, H, W."""
    def q(a):
        v = jnp.mean(jnp.square(a), axis=-1).reshape(a.shape[0], -1)
        return v / jnp.max(v, axis=-1, keepdims=True)

    per = [jnp.mean(jnp.square(q(s) - q(jax.lax.stop_gradient(t))), axis=-1)
           for s, t in zip(student_volumes, teacher_volumes)]
    return jnp.mean(jnp.stack(per, axis=-1))

LOGIT_TERMS = {
    # Hinton's T²-scaled KL at `temperature`.
    "logit": (("temperature",), lambda s, t, m, temperature=1.0: losses.kd_loss(
        s, t, temperature=temperature, mask=m)),
    # ReActNet/TBT's distributional loss (cross-entropy to the teacher's softmax, or its KL).
    "distribution": (("kind",), lambda s, t, m, kind="cross_entropy": losses.distribution_loss(
        s, t, kind=kind)),
    # DeiT's hard-label distillation (cross-entropy to the teacher's argmax).
    "hard": ((), lambda s, t, m: losses.hard_label_loss(s, t, mask=m)),
    # DB-LLM's deviation-aware token distillation.
    "dad": (("beta", "temperature"), lambda s, t, m, **kw: losses.dad_loss(s, t, mask=m, **kw)),
    # BiBERT's prediction loss: soft cross-entropy, mean over every element (classification).
    "soft_ce": (("reduction",), lambda s, t, m, reduction="elementmean":
                losses.soft_cross_entropy(s, t, reduction=reduction)),
    # BiBERT's regression (STS-B) prediction loss: MSE between the outputs.
    "logit_mse": ((), lambda s, t, m: jnp.mean(jnp.square(s - jax.lax.stop_gradient(t)))),
}
FEATURE_TERMS = {
    "hidden_mse": ((), lambda s, t, k: losses.hidden_mse_loss(s, t)),       # TBT
    "hidden_state": ((), lambda s, t, k: losses.hidden_state_loss(s, t)),   # BiBERT
    "dmd": (("threshold",), lambda s, t, k, **kw: losses.dmd_loss(s, t, **kw)),  # BiBERT DMD
    "lrm": (("axis",), lambda s, t, k, **kw: losses.lrm_loss(s, t, k, **kw)),  # BinaryDM
    "attention": ((), lambda s, t, k: attention_matching_loss(s, t)),  # Real-to-Binary
}
FEATURE_FIELDS = ("student", "teacher", "layer_map")
LEGACY_KINDS = {"logit": "logit", "distributional": "distribution"}


def term_names() -> list[str]:
    """All distillation term names, sorted."""
    return sorted([*LOGIT_TERMS, *FEATURE_TERMS])


def terms(kd: Any) -> tuple[float, list[dict[str, Any]]]:
    """``(task_weight, terms)`` of ``config.kd`` (the single-term fields when no ``terms``)."""
    from bnn_jax.train.config import defaults

    kd = {**defaults().kd.to_dict(), **(kd.to_dict() if hasattr(kd, "to_dict") else dict(kd))}
    if kd.get("terms"):
        return float(kd.get("task_weight", 0.0)), [dict(t) for t in kd["terms"]]
    w = float(kd["weight"])
    term = {"name": LEGACY_KINDS[kd["kind"]], "weight": w}
    if kd["kind"] == "logit":
        term["temperature"] = kd["temperature"]
    return 1 - w, [term]


def validate(kd: Any) -> None:
    """Unknown term names or fields, and feature terms without paths (ValueError)."""
    for i, t in enumerate(terms(kd)[1]):
        name = t.get("name")
        if name not in LOGIT_TERMS and name not in FEATURE_TERMS:
            raise ValueError(f"config.kd.terms[{i}]: unknown term {name!r}; valid terms: "
                             f"{term_names()}")
        extra = LOGIT_TERMS[name][0] if name in LOGIT_TERMS else (
            FEATURE_TERMS[name][0] + FEATURE_FIELDS)
        allowed = {"name", "weight", *extra}
        unknown = sorted(set(t) - allowed)
        if unknown:
            raise ValueError(f"config.kd.terms[{i}] ({name}): unknown field(s) {unknown}; "
                             f"valid fields: {sorted(allowed)}")
        if name in FEATURE_TERMS and not t.get("student"):
            raise ValueError(f"config.kd.terms[{i}] ({name}) needs 'student' (a regex on "
                             "feature paths such as 'blocks/.*/hidden')")
        if not isinstance(t.get("weight", 1.0), (int, float)):
            raise ValueError(f"config.kd.terms[{i}].weight must be a number")


def needs_features(kd: Any) -> bool:
    """Whether any term reads intermediate features (the models then run under capture)."""
    return any(t["name"] in FEATURE_TERMS for t in terms(kd)[1])


def _path_key(path: str):
    return [int(p) if p.isdigit() else p for p in path.split("/")]


def select(names: list[str], pattern: str) -> list[str]:
    """Feature paths fully matching ``pattern``, in module order (``blocks/10`` after ``/9``)."""
    rx = re.compile(pattern)
    return sorted((n for n in names if rx.fullmatch(n)), key=_path_key)


def pairs(term: dict[str, Any], student: list[str], teacher: list[str],
          where: str) -> list[tuple[str, str]]:
    """Student and teacher feature paths compared by one term (ValueError when they cannot)."""
    s = select(student, term["student"])
    t = select(teacher, term.get("teacher") or term["student"])
    if not s:
        raise ValueError(f"{where}: no student feature matches {term['student']!r}; the "
                         f"student records {sorted(student, key=_path_key) or 'none'}")
    layer_map = term.get("layer_map")
    if layer_map is None:
        if len(s) != len(t):
            raise ValueError(f"{where}: {len(s)} student features but {len(t)} teacher "
                             "features; give layer_map (a teacher index per student feature)")
        return list(zip(s, t))
    layer_map = list(layer_map)
    if len(layer_map) != len(s) or not all(isinstance(j, int) and 0 <= j < len(t)
                                           for j in layer_map):
        raise ValueError(f"{where}: layer_map {layer_map} must give one teacher index in "
                         f"0..{len(t) - 1} for each of the {len(s)} student features")
    return [(a, t[j]) for a, j in zip(s, layer_map)]


def flat_features(captured: dict) -> dict[str, jax.Array]:
    """``{"blocks/0/hidden": array}`` from an ``nnx.capture`` pure dict; a name sown several
    times in one call (e.g. once per layer by the parent) gives ``name/0``, ``name/1``, ..."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, prefix + (str(k),))
        elif isinstance(node, (tuple, list)) and len(node) > 1:
            for i, v in enumerate(node):
                out["/".join(prefix + (str(i),))] = v
        else:
            out["/".join(prefix)] = node[0] if isinstance(node, (tuple, list)) else node

    walk(captured, ())
    return out


class Distiller:
    """The composed distillation loss for one student/teacher pair of feature names."""

    def __init__(self, kd: Any, student_features: list[str] = (),
                 teacher_features: list[str] = ()):
        self.task_weight, self.terms = terms(kd)
        self.pairs = [pairs(t, list(student_features), list(teacher_features),
                            f"config.kd.terms[{i}] ({t['name']})")
                      if t["name"] in FEATURE_TERMS else None for i, t in enumerate(self.terms)]
        self.projections: dict[int, list] = {}

    def check_shapes(self, s_out, t_out, s_feats, t_feats) -> None:
        """Student and teacher arrays each term compares have the same shapes (ValueError)."""
        def shape(x):
            return tuple(getattr(x, "shape", ()))

        for i, t in enumerate(self.terms):
            where = f"config.kd.terms[{i}] ({t['name']})"
            if t["name"] in LOGIT_TERMS and shape(s_out) != shape(t_out):
                raise ValueError(f"{where}: the student outputs {shape(s_out)} but the teacher "
                                 f"{shape(t_out)}; logit terms need the same output shape "
                                 "(same vocabulary / classes)")
            if t["name"] in ("hidden_mse", "hidden_state", "lrm"):
                for a, b in self.pairs[i]:
                    if shape(s_feats[a]) != shape(t_feats[b]):
                        raise ValueError(f"{where}: student feature {a} {shape(s_feats[a])} "
                                         f"and teacher feature {b} {shape(t_feats[b])} differ "
                                         "in shape")
            if t["name"] == "attention":  # channels may differ; batch and positions may not
                for a, b in self.pairs[i]:
                    sa, ta = shape(s_feats[a]), shape(t_feats[b])
                    if len(sa) != 4 or len(ta) != 4 or sa[:3] != ta[:3]:
                        raise ValueError(f"{where}: attention matching needs NHWC volumes with "
                                         f"the same N, H, W; student feature {a} is {sa}, "
                                         f"teacher feature {b} is {ta}")

    def setup(self, teacher_features: dict[str, jax.Array]) -> None:
        """Compute what terms fix once from the teacher (BinaryDM's PCA bases, first batch)."""
        for i, t in enumerate(self.terms):
            if t["name"] == "lrm":
                axis = t.get("axis", -1)
                self.projections[i] = [losses.lrm_projection(teacher_features[b], axis=axis)
                                       for _, b in self.pairs[i]]

    def __call__(self, task_loss, s_logits, t_logits, mask, s_feats, t_feats):
        """``task_weight · task_loss + Σ weight · term``."""
        total = self.task_weight * task_loss
        for i, t in enumerate(self.terms):
            kw = {k: v for k, v in t.items() if k not in ("name", "weight", *FEATURE_FIELDS)}
            if t["name"] in LOGIT_TERMS:
                value = LOGIT_TERMS[t["name"]][1](s_logits, t_logits, mask, **kw)
            else:
                fn: Callable = FEATURE_TERMS[t["name"]][1]
                s = [s_feats[a] for a, _ in self.pairs[i]]
                tt = [t_feats[b] for _, b in self.pairs[i]]
                value = fn(s, tt, self.projections.get(i), **kw)
            total = total + float(t.get("weight", 1.0)) * value
        return total

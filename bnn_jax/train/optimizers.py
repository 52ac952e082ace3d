"""Optax optimizers from config: schedules, parameter groups (regex on paths), clipping, Bop.

``config.optimizer`` holds the default settings; ``config.optimizer.groups`` is a list of
``(regex, overrides)`` pairs: the first regex that matches a parameter path (``conv1/kernel``)
gives its settings (``weight_decay=0.0`` for scales and BatchNorm, ``name="bop"`` for the binary
kernels Bop trains without latent weights, a different learning rate, ...). Parameters matched
by no group use the defaults. ``config.optimizer.cga`` (:func:`cga`) freezes confident StatsQ
weights over the last steps of a run (OFQ's CGA fine-tune). ``config.constraints``
(``weight_clip`` and other registry constraints) are applied to the parameters after every
update, as larq's kernel constraints.
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bnn_jax.train.sharding import path_str

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "lamb", "bop")
SCHEDULES = ("constant", "warmup_cosine", "warmup_linear", "cosine", "linear", "step",
             "exponential")
SETTINGS = ("name", "learning_rate", "schedule", "warmup_steps", "end_factor", "boundaries",
            "decay_factor", "decay_rate", "weight_decay", "momentum", "nesterov", "b1", "b2", "eps",
            "threshold", "gamma")
# PokeBNN's piecewise-linear schedule with a knee (google/aqt imagenet/train.py "piecewise").
SCHEDULES += ("piecewise",)
SETTINGS += ("knee_steps", "knee_factor")
# BitNet b1.58's two-stage learning rate and weight decay (see two_stage_schedule).
SCHEDULES += ("two_stage",)
SETTINGS += ("stage_boundary", "stage1_end_factor", "stage2_factor", "stage2_weight_decay")
TOP_FIELDS = (*SETTINGS, "grad_clip_norm", "groups", "cga")
#: ``config.optimizer.cga``: OFQ's Confidence-Guided Annealing over the last ``steps`` steps.
CGA_FIELDS = ("bits", "boundary_range", "steps", "pattern")


def schedule(cfg: dict, total_steps: int) -> Callable[[Any], Any]:
    """The learning-rate schedule ``step -> lr`` of one settings dict.

    ``warmup_*`` ramp linearly from 0 over ``warmup_steps`` (Goyal et al., 2017) and then decay
    (cosine, Loshchilov & Hutter 2017; or linear, the ReActNet recipe) to ``end_factor * lr``;
    ``step`` multiplies by ``decay_factor`` at each of ``boundaries`` (a fraction < 1 of the run
    or a step number); ``exponential`` multiplies by ``decay_rate`` per epoch-free step.
    """
    lr = float(cfg.get("learning_rate", 1e-3))
    kind = cfg.get("schedule", "constant")
    warmup = int(cfg.get("warmup_steps", 0) or 0)
    end = lr * float(cfg.get("end_factor", 0.0) or 0.0)
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; valid schedules: {list(SCHEDULES)}")
    if kind == "constant":
        return optax.constant_schedule(lr)
    if kind == "piecewise":
        return piecewise_schedule(lr, int(cfg.get("knee_steps", total_steps)),
                                  lr * float(cfg.get("knee_factor", 0.0) or 0.0), end,
                                  total_steps)
    if kind == "two_stage":
        return two_stage_schedule(lr, warmup, _boundary(cfg, total_steps),
                                  lr * float(cfg.get("stage1_end_factor", 1.0)),
                                  lr * float(cfg.get("stage2_factor", 0.5)), end, total_steps)
    if kind in ("warmup_cosine", "cosine"):
        w = warmup if kind == "warmup_cosine" else 0
        return optax.warmup_cosine_decay_schedule(0.0 if w else lr, lr, w,
                                                  max(total_steps, w + 1), end)
    if kind in ("warmup_linear", "linear"):
        w = warmup if kind == "warmup_linear" else 0
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, max(w, 1)),
             optax.linear_schedule(lr, end, max(total_steps - w, 1))], [w])
    if kind == "step":
        bounds = [int(b * total_steps) if b < 1 else int(b) for b in cfg.get("boundaries", ())]
        factor = float(cfg.get("decay_factor", 0.1))
        return optax.piecewise_constant_schedule(lr, {b: factor for b in bounds})
    return optax.exponential_decay(lr, 1, float(cfg.get("decay_rate", 0.99)))


def piecewise_schedule(lr: float, knee_steps: int, knee_lr: float, end_lr: float,
                       total_steps: int) -> Callable[[Any], Any]:
    """Linear from ``lr`` to ``knee_lr`` over ``knee_steps``, then to ``end_lr`` at
    ``total_steps`` (AQT's ``piecewise`` scheduler; PokeBNN: knee at epoch 750 of 800, knee and
    end learning rate 0). Settings: ``knee_steps``, ``knee_factor`` (knee_lr / lr),
    ``end_factor``."""
    knee = max(int(knee_steps), 1)
    rest = max(int(total_steps) - knee, 1)

    def fn(step):
        step = jnp.asarray(step, jnp.float32)
        first = lr + (knee_lr - lr) * step / knee
        second = knee_lr + (end_lr - knee_lr) * (step - knee) / rest
        return jnp.where(step >= knee, second, first)

    return fn


def _boundary(cfg: dict, total_steps: int) -> int:
    b = float(cfg.get("stage_boundary", 0.5))
    return int(b * total_steps) if b < 1 else int(b)


def two_stage_schedule(lr: float, warmup: int, boundary: int, stage1_end: float,
                       stage2_start: float, end: float, total_steps: int) -> Callable[[Any], Any]:
    """BitNet b1.58's two-stage learning rate: linear warmup to ``lr``, cosine decay to
    ``stage1_end`` at ``boundary``, then a drop to ``stage2_start`` and a cosine decay to
    ``end`` at ``total_steps``.

    The b1.58 "Training Tips, Code and FAQ" and the b1.58 2B4T report (Ma et al., 2025, sec.
    3.1: peak 1.5e-3 decaying to 8e-4, then 5e-4 decaying to 0) describe this shape; settings
    ``stage_boundary`` (fraction < 1 of the run or a step), ``stage1_end_factor`` and
    ``stage2_factor`` (fractions of ``lr``), ``end_factor``.
    """
    first = optax.warmup_cosine_decay_schedule(0.0 if warmup else lr, lr, warmup,
                                               max(boundary, warmup + 1), stage1_end)
    second = optax.cosine_decay_schedule(stage2_start, max(total_steps - boundary, 1),
                                         end / stage2_start if stage2_start else 0.0)
    return optax.join_schedules([first, second], [boundary])


def scheduled_weight_decay(rate: Callable[[Any], Any], mask: Any) -> optax.GradientTransformation:
    """``updates + rate(step)·params`` on the masked parameters (a weight decay that follows a
    schedule; BitNet b1.58 switches it off in the second stage)."""

    def init(params):
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        r = rate(state.count)
        m = mask(params) if callable(mask) else mask
        updates = jax.tree.map(lambda u, p, k: u + r * p if k else u, updates, params, m)
        return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def _default_decay_mask(params):
    # No weight decay on vectors: biases, BatchNorm scales/offsets, learned quantizer scales.
    # Per-channel scales are stored in keepdims form ((1, 1, 1, C) for a conv), so a "vector"
    # is an array with at most one dimension larger than 1, not an array with ndim <= 1.
    return jax.tree.map(lambda p: sum(d > 1 for d in jnp.shape(p)) > 1, params)


def _single(cfg: dict, total_steps: int) -> optax.GradientTransformation:
    name = cfg.get("name", "adam")
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid optimizers: {list(OPTIMIZERS)}")
    if name == "bop":
        # Bop (Helwegen et al., 2019) flips signs and keeps no latent weights.
        from bnn_jax.train.bop import bop

        return bop(threshold=float(cfg.get("threshold", 1e-8)), gamma=float(cfg.get("gamma", 1e-4)))
    lr = schedule(cfg, total_steps)
    wd = float(cfg.get("weight_decay", 0.0) or 0.0)
    b1, b2 = float(cfg.get("b1", 0.9)), float(cfg.get("b2", 0.999))
    eps = float(cfg.get("eps", 1e-8))
    two_stage_wd = None
    if cfg.get("schedule") == "two_stage":
        # The decay rate drops to stage2_weight_decay at the stage boundary.
        wd2 = float(cfg.get("stage2_weight_decay", 0.0) or 0.0)
        boundary = _boundary(cfg, total_steps)
        two_stage_wd = scheduled_weight_decay(lambda step: jnp.where(step < boundary, wd, wd2),
                                              _default_decay_mask)
        if name == "adamw":  # decoupled: the decay is scaled by the learning rate only
            return optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps), two_stage_wd,
                               optax.scale_by_learning_rate(lr))
    if name == "sgd":
        tx = optax.sgd(lr)
    elif name == "momentum":
        tx = optax.sgd(lr, momentum=float(cfg.get("momentum", 0.9)),
                       nesterov=bool(cfg.get("nesterov", False)))
    elif name == "adam":
        tx = optax.adam(lr, b1=b1, b2=b2, eps=eps)
    elif name == "lamb":
        return optax.lamb(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=_default_decay_mask)
    else:  # adamw: decoupled decay (Loshchilov & Hutter, 2019)
        return optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=_default_decay_mask)
    if two_stage_wd is not None:
        tx = optax.chain(two_stage_wd, tx)
    elif wd:  # L2-style decay added to the update for sgd/momentum/adam
        tx = optax.chain(optax.add_decayed_weights(wd, _default_decay_mask), tx)
    return tx


def group_labels(params: Any, groups: Any) -> Any:
    """Each parameter's group: ``"g<i>"`` for the first matching regex, else ``"default"``."""
    compiled = [re.compile(g[0]) for g in groups]

    def label(path, _):
        name = path_str(path)
        for i, pattern in enumerate(compiled):
            if pattern.search(name):
                return f"g{i}"
        return "default"

    return jax.tree_util.tree_map_with_path(label, params)


def validate(cfg: Any) -> None:
    """Reject unknown optimizer/schedule names and fields before anything is compiled."""
    cfg = dict(cfg)
    unknown = sorted(set(cfg) - set(TOP_FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in config.optimizer; valid fields: "
                         f"{sorted(TOP_FIELDS)}")
    if cfg.get("cga"):
        _check_cga(cfg["cga"])
    settings = [cfg]
    for g in cfg.get("groups") or ():
        if len(g) != 2 or not isinstance(g[0], str):
            raise ValueError(f"an optimizer group is (regex, overrides), got {g!r}")
        bad = sorted(set(dict(g[1])) - set(SETTINGS))
        if bad:
            raise ValueError(f"unknown setting(s) {bad} in optimizer group {g[0]!r}; valid "
                             f"settings: {sorted(SETTINGS)}")
        settings.append({**cfg, **dict(g[1])})
    for s in settings:
        if s.get("name", "adam") not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {s.get('name')!r}; valid optimizers: "
                             f"{list(OPTIMIZERS)}")
        if s.get("schedule", "constant") not in SCHEDULES:
            raise ValueError(f"unknown schedule {s.get('schedule')!r}; valid schedules: "
                             f"{list(SCHEDULES)}")


class CGAState(NamedTuple):
    count: Any
    inner: Any


def cga(inner: optax.GradientTransformation, params: Any, *, total_steps: int, steps: int,
        bits: int = 2, boundary_range: float = 0.005,
        pattern: str = r"(fc1|fc2|value|out|reduction)/kernel$") -> optax.GradientTransformation:
    """OFQ's Confidence-Guided Annealing (nbasyl/OFQ ``cga.py`` lines 953-1012) around ``inner``.

    During the last ``steps`` optimizer steps, every kernel whose path matches ``pattern``
    keeps training only where :func:`bnn_jax.quant.cga_mask` says its StatsQ code lies within
    ``boundary_range`` of a rounding boundary: the other weights get a zero gradient, and
    their update is zeroed too, which is OFQ's restore of the frozen weights after the step
    (momentum and weight decay cannot move them). Before that the wrapper changes nothing.
    ``grad_clip_norm`` clips the masked gradients, OFQ's order (mask at lines 956-980, clip at
    982-985). The query and key kernels of the reparameterized attention keep training, as in
    the reference: its loops skip ``q`` and ``k`` (lines 959, 967), and the freeze inside
    its CGA quantizer (``statsq.py`` ``StatsQuantizer_specific_4_qkreparam_cga``, lines
    181-188) detaches a value that line 191 detaches again, so it changes neither the
    forward nor the gradient.
    """
    from bnn_jax.quant.ofq import cga_mask

    regex = re.compile(pattern)
    selected = jax.tree_util.tree_map_with_path(
        lambda path, p: bool(regex.search(path_str(path))) and jnp.ndim(p) >= 2, params)
    if not any(jax.tree.leaves(selected)):
        raise ValueError(f"config.optimizer.cga.pattern={pattern!r} matches no kernel")
    start = total_steps - steps

    def masks(params, count):
        active = count >= start
        return jax.tree.map(
            lambda p, s: cga_mask(p, bits=bits, boundary_range=boundary_range, active=active)
            if s else jnp.ones((), jnp.result_type(p)), params, selected)

    def init(params):
        return CGAState(jnp.zeros((), jnp.int32), inner.init(params))

    def update(grads, state, params=None):
        m = masks(params, state.count)
        grads = jax.tree.map(lambda g, k: g * k, grads, m)
        updates, inner_state = inner.update(grads, state.inner, params)
        updates = jax.tree.map(lambda u, k: u * k, updates, m)
        return updates, CGAState(state.count + 1, inner_state)

    return optax.GradientTransformation(init, update)


def _check_cga(spec: Any, total_steps: int | None = None) -> dict:
    spec = dict(spec)
    unknown = sorted(set(spec) - set(CGA_FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in config.optimizer.cga; valid fields: "
                         f"{list(CGA_FIELDS)}")
    steps = spec.get("steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"config.optimizer.cga.steps must be a positive integer (the CGA "
                         f"fine-tune steps at the end of the run), got {steps!r}")
    if total_steps is not None and steps > total_steps:
        raise ValueError(f"config.optimizer.cga.steps={steps} exceeds total_steps={total_steps}")
    from bnn_jax.quant.registry import check_int_range, check_positive

    check_int_range("config.optimizer.cga.bits", spec.get("bits", 2), 1, 16)
    check_positive("config.optimizer.cga.boundary_range", spec.get("boundary_range", 0.005))
    return spec


def build(cfg: Any, params: Any, total_steps: int):
    """``(tx, lr_fn)``: the optax transformation for ``params`` and the default group's schedule."""
    validate(cfg)
    cfg = dict(cfg)
    groups = [(g[0], dict(g[1])) for g in (cfg.pop("groups", None) or ())]
    clip = cfg.pop("grad_clip_norm", None)
    cga_spec = cfg.pop("cga", None)
    transforms = {"default": _single(cfg, total_steps)}
    for i, (_, overrides) in enumerate(groups):
        transforms[f"g{i}"] = _single({**cfg, **overrides}, total_steps)
    tx = (optax.multi_transform(transforms, group_labels(params, groups)) if groups
          else transforms["default"])
    if cga_spec:
        if clip:  # OFQ clips the gradients CGA has masked (cga.py lines 956-985)
            tx, clip = optax.chain(optax.clip_by_global_norm(float(clip)), tx), None
        tx = cga(tx, params, total_steps=total_steps, **_check_cga(cga_spec, total_steps))
    if clip:
        tx = optax.chain(optax.clip_by_global_norm(float(clip)), tx)
    return tx, schedule(cfg, total_steps)


def build_constraints(rules: Any) -> Callable[[Any], Any]:
    """``params -> params`` applying registry constraints (e.g. ``weight_clip``) by regex."""
    from bnn_jax import quant

    compiled = []
    for rule in rules or ():
        if len(rule) != 2:
            raise ValueError(f"a constraint rule is (regex, quantizer spec), got {rule!r}")
        q = quant.get(rule[1])
        if q.kind != "constraint":
            raise ValueError(f"{q.name!r} is a {q.kind}, not a constraint; valid constraints: "
                             f"{quant.names('constraint')}")
        compiled.append((re.compile(rule[0]), q))

    def apply(params):
        def one(path, p):
            name = path_str(path)
            for pattern, q in compiled:
                if pattern.search(name):
                    return q(p)
            return p

        return jax.tree_util.tree_map_with_path(one, params) if compiled else params

    return apply


def binarize_bop_params(cfg: Any, params: Any) -> Any:
    """Params with ``sign`` applied where Bop trains them (Bop keeps weights in {-1, +1})."""
    from bnn_jax.quant import sign

    cfg = dict(cfg)
    groups = [(g[0], dict(g[1])) for g in (cfg.get("groups") or ())]
    names = {"default": cfg.get("name", "adam"),
             **{f"g{i}": {**cfg, **o}.get("name", "adam") for i, (_, o) in enumerate(groups)}}
    labels = group_labels(params, groups) if groups else jax.tree.map(lambda _: "default", params)
    return jax.tree.map(lambda p, lab: sign(p) if names[lab] == "bop" else p, params, labels)

"""The training config: defaults for every field, ``parse_arg`` for configs, and validation.

Every field is documented once, here. An experiment config (``configs/x.py``) returns a
ConfigDict built with :func:`defaults` and changes what it needs; :func:`validate` rejects unknown
fields, models, datasets, quantizers and optimizers before anything is built or compiled.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import ml_collections

SCHEDULE_KINDS = ("constant", "linear", "cosine", "exp")
LOSSES = ("softmax_xent",)
KD_KINDS = ("logit", "distributional")


def defaults() -> ml_collections.ConfigDict:
    """A config with every training field at its default value."""
    c = ml_collections.ConfigDict()
    c.seed = 0                    # model init, data order and the step RNG
    c.total_steps = 1000          # optimizer steps of the whole run
    c.log_every = 100             # console + metrics.jsonl interval (steps)
    c.eval_every = 0              # test-set evaluation interval (0: only at the end)
    c.checkpoint_every = 500      # checkpoint interval (steps); a final one is always written
    c.keep_checkpoints = 3        # orbax keeps the newest N
    c.async_checkpoint = True     # write checkpoints in the background
    c.tensorboard = True          # TensorBoard event files in <workdir>/tensorboard
    c.data = dict(name="digits", batch_size=128, eval_batch_size=360, data_dir="")
    # What is trained for (bnn_jax.tasks): name + that task's fields (tasks.get(name).fields).
    c.task = dict(name="classification")
    c.model = dict(name="mlp")    # a zoo name, a registered one, or "pkg.module:Class"
    # Quantization of whatever model.name builds, applied before training (any NNX model):
    # rules = [(regex on layer path, weight quantizer, input quantizer[, params])] or dicts,
    # first match wins; then a precision policy (bnn_jax.nn.precision_policy): overrides
    # [dict(pattern=, bits=, ...)] and a default (dict(bits=1)) for every other layer.
    c.quant = dict(rules=[], overrides=[], default=None, presets=None)
    c.loss = dict(name="softmax_xent", label_smoothing=0.0)  # the classification loss
    # Knowledge distillation: teacher = a model config + the workdir of its trained run, or a
    # Hugging Face directory (teacher_import). `terms`: [{name, weight, ...}] composed with
    # task_weight x the task loss (bnn_jax.train.distill); without terms: one `kind` term at
    # `weight` (and `temperature`), the task loss at 1 - weight.
    c.kd = dict(enabled=False, teacher_model=ml_collections.ConfigDict(dict(name="mlp")),
                teacher_workdir="", teacher_import="", kind="distributional", weight=1.0,
                temperature=1.0, terms=[], task_weight=0.0)
    c.optimizer = dict(name="adam", learning_rate=1e-3, schedule="constant")
    c.constraints = []            # [(regex on param path, constraint spec)], after each update
    # Method schedules fed to the quantizers every step: {"kernel": {"o": {kind, start, end}}}.
    c.schedules = dict(input={}, kernel={})
    c.init_from = ""              # workdir whose newest checkpoint initializes the params
    # Regex on parameter paths that init_from's run may lack (e.g. a new head, "classifier/.*"):
    # those keep their fresh initialization; any other missing parameter is an error.
    c.init_fresh = ""
    # Weight EMA: ema = decay*ema + (1-decay)*params after every step (0: off); with `eval`,
    # evaluation and the final model use the EMA weights (diffusion models sample from them).
    c.ema = dict(decay=0.0, eval=True)
    # Host-side updates of non-parameter model state (bnn_jax.train.hooks):
    # [dict(name=..., every=N, at_start=False, **fields)].
    c.hooks = []
    # Resume a workdir whose run had another config (e.g. a longer total_steps): without it a
    # different model/optimizer/data/seed/... is refused (bnn_jax.train.workdir).
    c.allow_config_change = False
    c.mesh = dict(data=-1, fsdp=1, model=1, num_devices=0)  # num_devices 0: all devices
    c.partition_rules = [(".*", "replicate")]
    c.distributed = dict(enabled=False, coordinator_address="", num_processes=1, process_id=0)
    return c


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
MAX_STEPS_ENV = "BNN_JAX_MAX_STEPS"


def cap_steps_from_env(config: ml_collections.ConfigDict) -> str | None:
    """Lower ``total_steps`` to ``$BNN_JAX_MAX_STEPS`` when set (smoke runs of any command).

    Returns the console note, or None when the variable is unset. The cap is recorded in the
    run's config.json like any other field.
    """
    raw = os.environ.get(MAX_STEPS_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{MAX_STEPS_ENV}={raw!r} must be a positive integer (or unset)")
    before = config.total_steps
    config.total_steps = min(int(before), int(raw))
    return f"{MAX_STEPS_ENV}={raw}: total_steps {before} -> {config.total_steps}"


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
    """``"quick,width=32"`` -> ConfigDict over ``spec`` defaults (big_vision's convention).

    A bare name sets a boolean field to True; values are converted to the default's type.
    """
    out = ml_collections.ConfigDict(spec)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in spec:
            raise ValueError(f"unknown config argument {key!r}; valid arguments: {sorted(spec)}")
        default = spec[key]
        if not _:
            if not isinstance(default, bool):
                raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
            out[key] = True
        elif isinstance(default, bool):
            if value.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise ValueError(f"config argument {item!r}: {key} is a switch, give true or "
                                 f"false (or just {key!r})")
            out[key] = value.lower() in ("1", "true", "yes")
        elif default is None:
            out[key] = value
        else:
            try:
                out[key] = type(default)(value)
            except ValueError:
                raise ValueError(f"config argument {item!r}: {key} takes "
                                 f"{_TYPE_WORDS.get(type(default), type(default).__name__)} "
                                 f"(default {default!r}), got {value!r}") from None
    return out


def _fields(d: Any) -> dict:
    return d.to_dict() if hasattr(d, "to_dict") else dict(d)


def _check_fields(where: str, got: Any, allowed: Any) -> None:
    unknown = sorted(set(_fields(got)) - set(_fields(allowed)))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in {where}; valid fields: "
                         f"{sorted(_fields(allowed))}")


def _check_quantizers(where: str, spec: Any) -> None:
    from bnn_jax import quant

    if spec is None:
        return
    q = quant.get(spec)  # ValueError listing the valid names/parameters
    # A constraint in a quantizer slot would leave the layer unquantized (and the reverse
    # fails only inside the first compiled step).
    want_constraint = where.endswith("constraint")
    if (q.kind == "constraint") != want_constraint:
        valid = quant.names("constraint") if want_constraint else \
            [n for n in quant.names() if n not in quant.names("constraint")]
        what = "a constraint" if want_constraint else "a quantizer"
        raise ValueError(f"{where}={q.name!r} is a {q.kind}, but this field takes {what}; "
                         f"valid: {valid}")


def _number(where: str, value: Any, *, least: float = 0.0, below: float | None = None,
            strict: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > least if strict else value >= least)
    ok = ok and (below is None or value < below)
    if not ok:
        bound = f"> {least:g}" if strict else f">= {least:g}"
        bound += f" and < {below:g}" if below is not None else ""
        raise ValueError(f"{where} must be a finite number {bound}, got {value!r}")


# Ranges of the optimizer's numbers: (least, below, strict).
_OPTIMIZER_NUMBERS = {"learning_rate": (0, None, False), "end_factor": (0, None, False),
                      "weight_decay": (0, None, False), "momentum": (0, 1, False),
                      "b1": (0, 1, False), "b2": (0, 1, False), "eps": (0, None, True),
                      "decay_factor": (0, None, True), "decay_rate": (0, None, True),
                      "threshold": (0, None, False), "gamma": (0, None, False)}


def _check_optimizer_values(cfg: Any) -> None:
    cfg = _fields(cfg)
    groups = cfg.get("groups") or ()
    for where, settings in [("config.optimizer", cfg)] + [
            (f"optimizer group {g[0]!r}", _fields(g[1])) for g in groups]:
        for key, (least, below, strict) in _OPTIMIZER_NUMBERS.items():
            if settings.get(key) is not None:
                _number(f"{where}.{key}", settings[key], least=least, below=below,
                        strict=strict)
        w = settings.get("warmup_steps")
        if w is not None and (not isinstance(w, int) or isinstance(w, bool) or w < 0):
            raise ValueError(f"{where}.warmup_steps must be a non-negative integer, got {w!r}")
        for b in settings.get("boundaries") or ():
            _number(f"{where}.boundaries", b)
    clip = cfg.get("grad_clip_norm")
    if clip:  # None or 0: no clipping
        _number("config.optimizer.grad_clip_norm", clip, strict=True)


def schedule_value(spec: Any, progress: Any) -> Any:
    """A method schedule at ``progress`` in [0, 1] (traced or not).

    ``linear``: start -> end; ``cosine``: ReSTE's rise ``start + (end-start)(1 - cos(pi/2 p))``
    (Wu et al., ICCV 2023, main.py); ``exp``: BiPer's ramp ``A e^p + B`` through start and end
    (Vargas et al., CVPR 2024); ``constant``: start.
    """
    import jax.numpy as jnp

    spec = _fields(spec)
    kind, start = spec.get("kind", "linear"), spec["start"]
    end = spec.get("end", start)
    if kind == "constant":
        return start + 0 * progress
    if kind == "linear":
        return start + (end - start) * progress
    if kind == "cosine":
        return start + (end - start) * (1 - jnp.cos(math.pi / 2 * progress))
    a = (end - start) / (math.e - 1)
    return a * jnp.exp(progress) + (start - a)


def validate(config: ml_collections.ConfigDict) -> None:
    """Every config error we can find without building anything, each listing valid choices."""
    from bnn_jax import data, models, quant, tasks
    from bnn_jax.train import distill
    from bnn_jax.train import optimizers, sharding

    base = defaults()
    _check_fields("the config", config, base)
    for section in ("loss", "mesh", "distributed", "kd", "schedules", "quant", "ema"):
        if section in config:
            _check_fields(f"config.{section}", config[section], base[section])
    # Intervals are used as `step % every` in the loop: a zero would fail only after compiling.
    for field, least in (("total_steps", 1), ("log_every", 1), ("checkpoint_every", 1),
                         ("keep_checkpoints", 1), ("eval_every", 0), ("seed", 0)):
        value = config[field]
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            kind = "a positive" if least else "a non-negative"
            raise ValueError(f"config.{field} must be {kind} integer, got {value!r}")
    for field in ("allow_config_change", "async_checkpoint", "tensorboard"):
        if not isinstance(config.get(field, False), bool):
            raise ValueError(f"config.{field} must be True or False, got {config[field]!r}")
    _number("config.loss.label_smoothing", config.loss.label_smoothing, below=1)
    ema = {**_fields(base.ema), **_fields(config.get("ema", {}))}
    _number("config.ema.decay", ema["decay"], below=1)
    if not isinstance(ema["eval"], bool):
        raise ValueError(f"config.ema.eval must be True or False, got {ema['eval']!r}")
    fresh = config.get("init_fresh", "")
    try:
        re.compile(fresh)
    except (re.error, TypeError) as e:
        raise ValueError(f"config.init_fresh must be a regex on parameter paths (e.g. "
                         f"'classifier/.*'), got {fresh!r}: {e}") from e
    from bnn_jax.train import hooks

    hooks.validate(config.get("hooks", []))
    data.validate(config.data)
    tasks.validate(config.get("task", {"name": "classification"}))
    models.validate(config.model)
    from bnn_jax.nn.policy import config_rules

    config_rules(config.get("quant"))  # bad quantizer names and rule shapes list valid ones
    for key, value in _fields(config.model).items():
        if key.endswith("quantizer") or key.endswith("constraint"):
            _check_quantizers(f"config.model.{key}", value)
    optimizers.validate(config.optimizer)
    _check_optimizer_values(config.optimizer)
    optimizers.build_constraints(config.constraints)  # unknown names list the valid ones
    sharding.validate_rules(config.partition_rules)
    for role, params in _fields(config.get("schedules", {})).items():
        if role not in ("input", "kernel"):
            raise ValueError(f"config.schedules has role {role!r}; "
                             "valid roles: ['input', 'kernel']")
        for pname, spec in _fields(params).items():
            kind = _fields(spec).get("kind", "linear")
            if kind not in SCHEDULE_KINDS:
                raise ValueError(f"schedule kind {kind!r} for {role}.{pname}; valid kinds: "
                                 f"{list(SCHEDULE_KINDS)}")
            if "start" not in _fields(spec):
                raise ValueError(f"schedule {role}.{pname} needs a 'start' value")
            # Models that name their quantizers <role>_quantizer are checked here; values
            # reach only quantizers that have the parameter (bnn_jax.nn.quant_params).
            qspec = _fields(config.model).get(f"{role}_quantizer")
            if qspec is None:
                continue
            q = quant.get(qspec)
            if pname not in q.params:
                raise ValueError(f"schedule {role}.{pname}: quantizer {q.name!r} has no static "
                                 f"parameter {pname!r}; valid: {sorted(q.params)}")
    kd = {**_fields(base.kd), **_fields(config.kd)}  # a replaced kd dict keeps the defaults
    if kd["enabled"]:
        if not kd["teacher_import"]:
            models.validate(kd["teacher_model"])
        if bool(kd["teacher_workdir"]) == bool(kd["teacher_import"]):
            raise ValueError("config.kd.enabled needs exactly one teacher: config.kd."
                             "teacher_workdir (a trained bnn_jax run) or config.kd."
                             "teacher_import (a Hugging Face model directory)")
        distill.validate(kd)
        if kd["kind"] not in KD_KINDS:
            raise ValueError(f"unknown kd kind {kd['kind']!r}; valid kinds: {list(KD_KINDS)}")
        if not kd["temperature"] > 0:
            raise ValueError(f"config.kd.temperature must be positive, got "
                             f"{kd['temperature']!r}")
    if config.loss.name not in LOSSES:
        raise ValueError(f"unknown loss {config.loss.name!r}; valid losses: {list(LOSSES)}")


def check_field_path(config: ml_collections.ConfigDict, dotted: str,
                     value: str | None = None) -> None:
    """Reject ``a.b.c`` unless it names an existing field (for ``--config.a.b.c=`` overrides),
    and a ``value`` (the override's text) that the field's number or switch type cannot take."""
    node, walked = config, []
    for part in dotted.split("."):
        keys = sorted(node.keys()) if hasattr(node, "keys") else []
        if part not in keys:
            where = "config" + "".join(f".{w}" for w in walked)
            raise ValueError(f"unknown config field {dotted!r}: {where} has no field {part!r}; "
                             f"valid fields there: {keys}")
        node, walked = node[part], walked + [part]
    kind = type(node)
    if value is None or kind not in (int, float, bool):
        return
    try:
        if kind is bool:
            ok = value.lower() in ("true", "false", "1", "0")
        else:
            kind(value) if kind is int else float(value)
            ok = True
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"--config.{dotted}={value}: {dotted} takes {_TYPE_WORDS[kind]} "
                         f"(now {node!r})")

"""The training loop, top to bottom: ``run(config, workdir)``.

One flat function with section banners (big_vision's train.py is the model): config checks,
processes and mesh, data, task, model, optimizer, sharded state, jitted steps, resume, loop,
final evaluation and summary. What is trained for comes from the task (``bnn_jax.tasks``): how
the model is called on a batch, the loss, the eval metrics; the loop names no task or model.
The state is a dict of plain arrays (``params``, ``rest`` = BatchNorm statistics and other
model state, ``opt_state``, ``step``, ``rng``, and ``ema`` when ``config.ema.decay`` > 0); the
NNX model is rebuilt inside the jitted step with ``nnx.merge``, so checkpoints and shardings see
ordinary pytrees. Step hooks (``config.hooks``, :mod:`bnn_jax.train.hooks`) update non-parameter
state on the host between steps.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from bnn_jax import data as data_lib
from bnn_jax import models
from bnn_jax import tasks as tasks_lib
from bnn_jax.analysis import health
from bnn_jax.nn import apply_constraints, initialize, pending_learned, quant_params
from bnn_jax.nn.layers import (input_learned_paths, kernel_learned_paths,
                               reinit_kernel_learned)
from bnn_jax.nn.policy import quantize_config
from bnn_jax.train import checkpoint as ckpt_lib
from bnn_jax.train import config as config_lib
from bnn_jax.train import distill as distill_lib
from bnn_jax.train import hooks as hooks_lib
from bnn_jax.train import metrics as metrics_lib
from bnn_jax.train import optimizers
from bnn_jax.train import sharding as sharding_lib
from bnn_jax.train import workdir as workdir_lib


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss or gradient; the run stopped, checkpoints are intact."""


class ConfigError(ValueError):
    """The config asks for something that does not exist or cannot work (message lists choices)."""


def _split(model: nnx.Module):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def _forward(graph, params, rest, args, kwargs, capture: bool):
    """``(outputs, updated rest, features)`` of the merged model; ``features`` (the values sown
    as ``nnx.Intermediate``, by module path) only under ``capture``, else empty."""
    m = nnx.merge(graph, params, rest)
    if capture:
        out, inter = nnx.capture(m, nnx.Intermediate)(*args, **kwargs)
        feats = distill_lib.flat_features(nnx.to_pure_dict(inter))
    else:
        out, feats = m(*args, **kwargs), {}
    return out, nnx.to_pure_dict(nnx.split(m, nnx.Param, ...)[2]), feats


def _initialize_distributed(config) -> None:
    d = config.distributed
    if not d.enabled or jax.distributed.is_initialized():
        return  # (asking jax.process_count() here would start the backend too early)
    kwargs = {}
    if d.coordinator_address:  # else jax finds them from the cluster (SLURM, TPU pods, ...)
        kwargs = dict(coordinator_address=d.coordinator_address,
                      num_processes=int(d.num_processes), process_id=int(d.process_id))
    jax.distributed.initialize(**kwargs)


def _sample_inputs(task, ds, seed: int):
    """The model's ``(args, kwargs)`` on the first training batch (host arrays)."""
    batch = task.prepare(jax.tree.map(jnp.asarray, next(iter(ds.train_batches(0)))),
                         jax.random.key(seed))
    return task.inputs(batch)


def load_teacher(kd, ds, sharding, task) -> tuple[Any, dict[str, Any]]:
    """The distillation teacher in eval mode: its graph and trained ``{"params", "rest"}``.

    ``kd.teacher_workdir`` is a bnn_jax run (its newest checkpoint); ``kd.teacher_import`` a
    Hugging Face model directory read by :mod:`bnn_jax.models.hub`.
    """
    if kd.get("teacher_import"):
        from bnn_jax.models import hub

        t_model = hub.load(kd.teacher_import)
        task.check_batch(next(iter(ds.train_batches(0))), t_model)  # e.g. fewer positions
        t_model.eval()
        t_graph, t_params, t_rest = _split(t_model)
        return t_graph, jax.device_put({"params": t_params, "rest": t_rest}, sharding)
    t_model = models.build(kd.teacher_model, rngs=nnx.Rngs(0), **ds.spec)
    # Learned arrays with a data-dependent first-call rule (LSQ steps) exist only after a call;
    # without them the restore would skip the trained values and the teacher would
    # re-initialize them from every student batch inside the step.
    if pending_learned(t_model):
        args, kwargs = _sample_inputs(task, ds, 0)
        initialize(t_model, *args, **kwargs)
    t_model.eval()
    t_graph, t_params, t_rest = _split(t_model)
    saved = ckpt_lib.restore_params(kd.teacher_workdir, {"params": t_params, "rest": t_rest})
    return t_graph, jax.device_put(saved, sharding)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train (or resume) the run described by ``config`` in ``workdir``; returns final metrics."""
    # ---------------------------------------------------------------- config and processes --
    config = ml_collections.ConfigDict(config.to_dict())
    try:
        capped = config_lib.cap_steps_from_env(config)  # None unless $BNN_JAX_MAX_STEPS is set
        config_lib.validate(config)  # every config error before anything is built or compiled
        workdir_lib.check_usable(workdir)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    _initialize_distributed(config)
    # One run per workdir, and only the run the workdir holds (see bnn_jax.train.workdir).
    with workdir_lib.claim(workdir, config) as claim:
        if claim.finished is not None:
            if jax.process_index() == 0:
                print(f"The run in {workdir} is finished (step {config.total_steps}); its results "
                      "are in result.json and summary.md", flush=True)
            return claim.finished
        return _run(config, workdir, claim, capped)


def _run(config: ml_collections.ConfigDict, workdir: str, claim: workdir_lib.Claim,
         capped: str | None = None) -> dict[str, Any]:
    pid, nproc = jax.process_index(), jax.process_count()
    say = print if pid == 0 else (lambda *a, **k: None)
    if pid == 0:
        print(metrics_lib.describe_outputs(workdir, tensorboard=config.tensorboard, note=capped))
    total = config.total_steps

    # ------------------------------------------------------------------------------ mesh --
    try:
        mesh = sharding_lib.make_mesh(config.mesh)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.data.batch_size % batch_devices or config.data.eval_batch_size % batch_devices:
        raise ConfigError(f"data.batch_size={config.data.batch_size} and data.eval_batch_size="
                         f"{config.data.eval_batch_size} must be divisible by the "
                         f"{batch_devices} devices of the mesh's data x fsdp axes")
    replicated = NamedSharding(mesh, P())

    # ------------------------------------------------------------------------------ data --
    try:  # e.g. a tfds dataset that is not prepared: say how to prepare it, no traceback
        ds = data_lib.build(config.data, seed=config.seed, process_index=pid,
                            process_count=nproc)
    except ValueError as e:
        raise ConfigError(str(e)) from e

    # ------------------------------------------------------------------------------ task --
    try:  # the task and model must fit what the data says, and the batches the task reads
        task = tasks_lib.build(config.task, spec=ds.spec, config=config)
        models.check_spec(config.model.name, ds.spec)
    except ValueError as e:
        raise ConfigError(str(e)) from e

    # ----------------------------------------------------------------------------- model --
    try:  # the model's own checks of its field values (a width of 0, ...)
        model = models.build(config.model, rngs=nnx.Rngs(config.seed), **ds.spec)
    except ValueError as e:
        raise ConfigError(f"config.model: {e}") from e
    try:  # config.quant binarizes any model, the user's too; a rule matching nothing stops here
        quantized = quantize_config(model, config.quant)
    except ValueError as e:
        raise ConfigError(f"config.quant: {e}") from e
    if quantized is not None:
        say(str(quantized))
    try:
        task.check_batch(next(iter(ds.train_batches(0))), model)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    # Learned quantizer arrays with a data-dependent first-call rule (LSQ steps, elastic scales)
    # are created from the first training batch *before* the split: created inside the jitted
    # step they would be re-initialized every step and never trained.
    if pending_learned(model):
        args, kwargs = _sample_inputs(task, ds, config.seed)
        created = initialize(model, *args, **kwargs)
        if nproc > 1:  # each process saw its own shard: start all of them from process 0's
            from jax.experimental import multihost_utils

            nnx.update(model, multihost_utils.broadcast_one_to_all(nnx.state(model, nnx.Param)))
        say(f"Initialized learned quantizer arrays from the first batch: {', '.join(created)}")
    h_args, h_kwargs = _sample_inputs(task, ds, config.seed)
    say(health.format_report(health.check(model, *h_args, **h_kwargs)))
    flip_paths = health.binary_kernel_paths(model)
    graph_train, params, rest = _split(model)
    model.eval()
    graph_eval = nnx.split(model, nnx.Param, ...)[0]
    model.train()

    # ------------------------------------------------------------------------- optimizer --
    params = optimizers.binarize_bop_params(config.optimizer, params)
    tx, lr_fn = optimizers.build(config.optimizer, params, total)
    constrain = optimizers.build_constraints(config.constraints)

    # ---------------------------------------------------------------------- sharded state --
    ema_decay = float(config.ema.decay)
    # Evaluation (and the final model) read these params: the EMA when one is kept for eval.
    eval_key = "ema" if ema_decay > 0 and config.ema.eval else "params"

    def init_state():
        state = {"params": params, "rest": rest, "opt_state": tx.init(params),
                 "step": jnp.zeros((), jnp.int32),
                 "rng": jax.random.key_data(jax.random.key(config.seed))}
        if ema_decay > 0:
            state["ema"] = jax.tree.map(jnp.array, params)
        return state

    abstract = jax.eval_shape(init_state)
    state_sh = sharding_lib.shardings(abstract, config.partition_rules, mesh)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, state_sh)

    # --------------------------------------------------------------------------- teacher --
    teacher, distiller, features = None, None, False
    if config.kd.enabled:
        try:
            teacher = load_teacher(config.kd, ds, replicated, task)
        except (ValueError, ckpt_lib.CorruptCheckpoint) as e:
            raise ConfigError(f"config.kd (teacher): {e}") from e
        # Both models on a sample batch, as shapes only: a teacher whose outputs do not match,
        # a feature regex or layer map that selects nothing fails before anything is compiled.
        # Feature terms run both models under nnx.capture.
        features = distill_lib.needs_features(config.kd)
        args, kwargs = _sample_inputs(task, ds, config.seed)

        def t_forward(p, r):
            return _forward(teacher[0], p, r, args, kwargs, features)

        s_out, _, s_feats = jax.eval_shape(
            lambda p, r: _forward(graph_train, p, r, args, kwargs, features), params, rest)
        t_in = (teacher[1]["params"], teacher[1]["rest"])
        # Feature terms need the teacher's concrete features once (BinaryDM's PCA bases).
        t_out, _, t_feats = t_forward(*t_in) if features else jax.eval_shape(t_forward, *t_in)
        try:
            distiller = distill_lib.Distiller(config.kd, list(s_feats), list(t_feats))
            distiller.check_shapes(s_out, t_out, s_feats, t_feats)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        if features:
            distiller.setup(t_feats)

    # ----------------------------------------------------------------------------- steps --
    schedules = {role: dict(specs) for role, specs in config.schedules.to_dict().items()}

    def apply_model(graph, params, rest, batch, step, capture=False):
        """The model's outputs, its updated state and (``capture``) its sown features; method
        schedules reach every quantized layer through bnn_jax.nn.quant_params as traced
        functions of the step."""
        progress = step.astype(jnp.float32) / total
        values = {role: {k: config_lib.schedule_value(v, progress) for k, v in specs.items()}
                  for role, specs in schedules.items()}
        args, kwargs = task.inputs(batch)
        with quant_params(**values):
            return _forward(graph, params, rest, args, kwargs, capture)

    def step_rng(state):
        return jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])

    def train_step(state, batch):
        batch = task.prepare(batch, step_rng(state))

        def loss_fn(params):
            out, new_rest, feats = apply_model(graph_train, params, state["rest"], batch,
                                               state["step"], features)
            loss, aux = task.loss(out, batch)
            if teacher is not None:
                args, kwargs = task.inputs(batch)
                t_out, _, t_feats = jax.lax.stop_gradient(_forward(
                    teacher[0], teacher[1]["params"], teacher[1]["rest"], args, kwargs,
                    features))
                s_logits, mask = task.distill_logits(out, batch)
                t_logits, _ = task.distill_logits(t_out, batch)
                # weight 1 with no terms is ReActNet's recipe: the distributional loss alone.
                loss = distiller(loss, s_logits, t_logits, mask, feats, t_feats)
            return loss, (aux, new_rest)

        (loss, (aux, new_rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        # Kernel constraints act on the updated latent weights (larq/Keras order): the layers'
        # own kernel_constraint, then config.constraints.
        m = nnx.merge(graph_train, params, new_rest)
        apply_constraints(m)
        params = constrain(nnx.to_pure_dict(nnx.split(m, nnx.Param, ...)[1]))
        out = {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads),
               "param_norm": optax.tree.norm(params), "learning_rate": lr_fn(state["step"]),
               **health.flip_ratios(flip_paths, state["params"], params)}
        new_state = {"params": params, "rest": new_rest, "opt_state": opt_state,
                     "step": state["step"] + 1, "rng": state["rng"]}
        if ema_decay > 0:
            new_state["ema"] = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p,
                                            state["ema"], params)
        return new_state, out

    def eval_step(state, batch, index):
        # A fixed key per eval batch: tasks that sample (denoising) give reproducible metrics.
        batch = task.prepare(batch, jax.random.fold_in(jax.random.key(config.seed + 1), index))
        out, _, _ = apply_model(graph_eval, state[eval_key], state["rest"], batch,
                                state["step"])
        return metrics_lib.average(task.eval_metrics(out, batch), mask=batch["mask"])

    batch_sh = sharding_lib.batch_sharding(mesh)
    p_train = jax.jit(train_step, in_shardings=(state_sh, batch_sh),
                      out_shardings=(state_sh, replicated), donate_argnums=0)
    p_eval = jax.jit(eval_step, in_shardings=(state_sh, batch_sh, replicated),
                     out_shardings=replicated)

    def evaluate(state) -> dict[str, float]:
        acc = None
        for i, local in enumerate(ds.eval_batches()):
            acc = metrics_lib.merge(acc, p_eval(state, sharding_lib.global_batch(local, mesh),
                                                np.int32(i)))
        sums = {k: float(v.total) for k, v in acc.items()}
        return task.final(metrics_lib.compute(acc), sums, ds)

    # ---------------------------------------------------------------------------- resume --
    ckpt = ckpt_lib.Checkpointer(workdir, keep=config.keep_checkpoints,
                                 async_save=config.async_checkpoint)
    try:
        restored = ckpt.restore_latest(abstract)
    except ckpt_lib.CheckpointMismatch as e:  # another config's state: nothing was moved
        ckpt.close()
        raise ConfigError(str(e)) from e
    except ckpt_lib.CorruptCheckpoint:
        ckpt.close()
        raise
    seconds_before = 0.0  # training time of the sessions before this one
    if restored is not None:
        state, record = restored
        start = int(record["data_position"])
        seconds_before = float(record.get("seconds", 0.0))
        say(f"Resuming from checkpoint at step {int(record['step'])} in {ckpt.directory}")
    else:
        state = jax.jit(init_state, out_shardings=state_sh)()
        start = 0
        if config.init_from:
            try:
                fresh: list[str] = []  # state the earlier stage did not have
                # A float checkpoint lacks the kernel quantizers' scales (BinaryDM's σ's):
                # they are derived from its kernels by their first-call rule; activation
                # quantizers' arrays keep their values from this run's first batch.
                learned = [p for ps in kernel_learned_paths(model).values() for p in ps]
                saved = ckpt_lib.restore_params(config.init_from,
                                                {"params": params, "rest": rest}, kept=fresh,
                                                derived=learned + input_learned_paths(model),
                                                fresh_params=config.get("init_fresh", ""))
                if set(fresh) & set(learned):
                    m = nnx.merge(graph_train, saved["params"], saved["rest"])
                    redone = reinit_kernel_learned(m, fresh)
                    # host copies, as restored: params and ema must not share device buffers
                    saved = jax.tree.map(np.asarray, dict(zip(("params", "rest"), map(
                        nnx.to_pure_dict, nnx.split(m, nnx.Param, ...)[1:]))))
                    say(f"Derived kernel quantizer arrays from {config.init_from}'s kernels: "
                        + ", ".join(redone))
                    fresh = [f for f in fresh if f not in learned]
            except (ValueError, ckpt_lib.CorruptCheckpoint) as e:
                ckpt.close()
                raise ConfigError(f"config.init_from={config.init_from}: {e}") from e
            # A Bop stage 2 starts from the signs of the stage-1 latent weights.
            loaded = optimizers.binarize_bop_params(config.optimizer, saved["params"])
            state["params"] = jax.device_put(loaded, state_sh["params"])
            if "ema" in state:  # the average starts from the loaded weights too
                state["ema"] = jax.device_put(loaded, state_sh["ema"])
            state["rest"] = jax.device_put(saved["rest"], state_sh["rest"])
            say(f"Initialized parameters from {config.init_from}")
            if fresh:
                say(f"  state not in {config.init_from}, kept at its initial value: "
                    + ", ".join(fresh))
    claim.write_config(config)  # only now: everything above has been checked
    step_hooks = hooks_lib.parse(config.hooks)

    def run_hooks(state, batch, step, starting=False):
        """The hooks due after ``step`` (or, ``starting``, those with at_start); new state."""
        for fn, every, at_start, fields in step_hooks:
            if (at_start if starting else step % every == 0):
                rest = hooks_lib.apply(fn, fields, graph_train, state["params"], state["rest"],
                                       batch, step)
                state = {**state, "rest": jax.device_put(rest, state_sh["rest"])}
        return state

    if start == 0 and any(h[2] for h in step_hooks):
        state = run_hooks(state, next(iter(ds.train_batches(0))), 0, starting=True)

    from bnn_jax.analysis import summary as summary_lib

    model_summary = summary_lib.summarize(model)
    say(summary_lib.format_table(model_summary))
    say(f"Training {config.model.name} on {ds.name} for {total} steps "
        f"(batch {config.data.batch_size}, mesh {dict(mesh.shape)}, {nproc} process(es))")

    # ------------------------------------------------------------------------------ loop --
    writers = metrics_lib.Writers(workdir, tensorboard=config.tensorboard, start_step=start)
    writers.write_run_info(summary_lib.format_table(model_summary), ds, start)
    progress = metrics_lib.Progress(total, config.data.batch_size, start)
    batches = ds.train_batches(start)
    pending: list[tuple[int, dict]] = []  # per-step metrics not yet fetched from the device
    last_saved = ckpt.all_steps()[-1] if ckpt.all_steps() else None
    train_metrics: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}

    def drain() -> dict[str, float]:
        """Fetch pending step metrics; stop at the first non-finite loss or gradient."""
        fetched = jax.device_get([m for _, m in pending])
        for (s, _), m in zip(pending, fetched):
            names = {"loss": "loss", "grad_norm": "gradient norm", "param_norm": "parameter norm"}
            bad = [n for k, n in names.items() if not np.isfinite(m[k])]
            if bad:
                ckpt.wait()
                good = ckpt.all_steps()
                raise NonFiniteLossError(
                    f"non-finite {' and '.join(bad)} at step {s} ("
                    + ", ".join(f"{n} {float(m[k])}" for k, n in names.items())
                    + "); training stopped. "
                    "The last good checkpoint is "
                    f"{'step ' + str(good[-1]) if good else 'none'} in {ckpt.directory}")
        pending.clear()
        if not fetched:
            return {}
        # Host-side numpy mean: clu's Average would compile small jnp ops on the first report.
        avg = {k: float(np.mean([m[k] for m in fetched]))
               for k in fetched[0] if k != "learning_rate"}
        return {**avg, "learning_rate": float(fetched[-1]["learning_rate"])}

    try:
        for step in range(start + 1, total + 1):
            local = next(batches)
            state, m = p_train(state, sharding_lib.global_batch(local, mesh))
            pending.append((step, m))
            if step_hooks:
                state = run_hooks(state, local, step)
            if step == start + 1 and step < total:
                jax.block_until_ready(m)  # the first step includes compilation: time from here
                progress.restart(step)
            if step % config.log_every == 0 or step == total:
                train_metrics = {**drain(), **progress.tick(step)}
                writers.write(step, "train", train_metrics)
                say(metrics_lib.console_line(step, total, train_metrics), flush=True)
            if config.eval_every and step % config.eval_every == 0 and step != total:
                eval_metrics = evaluate(state)
                writers.write(step, "test", eval_metrics)
                say(f"step {step}/{total} | test {task.describe(eval_metrics)}", flush=True)
            if step % config.checkpoint_every == 0 or step == total:
                drain()  # never checkpoint a state that followed a non-finite step
                ckpt.save(step, state, {"data_position": step,
                                        "seconds": seconds_before + progress.elapsed()})
                last_saved = step
        # ----------------------------------------------------------------- final eval --
        eval_metrics = evaluate(state)
        # e.g. decoding the eval set: the task gets the final model once, in eval mode
        eval_metrics.update(task.model_metrics(
            nnx.merge(graph_eval, state[eval_key], state["rest"]), ds))
        if start < total or not workdir_lib.has_line(workdir, total, "test"):
            writers.write(total, "test", eval_metrics)
        say(f"final | test {task.describe(eval_metrics)} | {progress.elapsed():.1f}s",
            flush=True)
    finally:
        ckpt.close()
        writers.close()

    # ---------------------------------------------------------------------------- summary --
    if start == total:  # resumed at the end: the train metrics are those the run logged
        train_metrics = workdir_lib.finished_train_metrics(workdir, total)
    result = {"step": total, **{f"test_{k}": v for k, v in eval_metrics.items()},
              **{f"train_{k}": train_metrics.get(k) for k in task.train_metrics},
              "seconds": seconds_before + progress.elapsed(), "last_checkpoint": last_saved}
    if pid == 0:
        with open(os.path.join(workdir, "summary.md"), "w", encoding="utf-8") as f:
            f.write(summary_lib.run_summary_markdown(config, result, model_summary))
        with open(os.path.join(workdir, "result.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return result


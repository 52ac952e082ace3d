"""Orbax checkpoints: periodic, atomic, keep the last N, resume from the newest *good* one.

A checkpoint holds the whole train state (params, other model state such as BatchNorm
statistics, optimizer state, step, RNG) and a JSON record with the step and the data-iterator
position. Orbax writes into a temporary directory and renames it when complete, so a run killed
mid-save leaves no half checkpoint under a step name; old checkpoints are removed only after a
newer one is finalized.

Orbax checks only the index of its array files, not the data (its zarr3 spec puts a ``crc32c``
codec in ``index_codecs`` alone: orbax/checkpoint/_src/serialization/tensorstore_utils.py,
``_build_zarr3_metadata``, orbax-checkpoint 0.12.8, with no option to add one), so every save
also records two checksums per array (:func:`digest`, computed on the devices, identical on any
mesh) and a restore recomputes them, checks that every float is finite and that
the record's step and data position agree with the arrays. A checkpoint that fails any of this
(or cannot be read at all) is provably damaged: it is moved aside to ``<step>.corrupt`` (never
deleted), the message names both paths, and the previous one is used; when none is left the
restore raises :class:`NoGoodCheckpoint` instead of letting the run start over. A checkpoint whose
arrays have other shapes or names than the model (another config) is not damaged: that raises
:class:`CheckpointMismatch` and nothing is moved. Reading another run's checkpoints (a teacher, a
first stage) opens them read-only: that run's directory is not touched.
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
import re
import shutil
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


# What orbax appends to a step directory while the step is being written.
TMP_MARKER = ".orbax-checkpoint-tmp"


class _ReadOnlyNotices(logging.Filter):
    """Drops orbax's two warnings that a manager opened read-only is read-only.

    Reading another run's checkpoints read-only is deliberate here (its directory is never
    altered), so "Given directory is read only" and "read_only=True, setting
    save_interval_steps=0" describe the intended mode, not a problem.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("Given directory is read only" in msg or "read_only=True, setting" in msg)


class CorruptCheckpoint(RuntimeError):
    """A finalized checkpoint whose contents cannot be restored or fail the consistency check."""


class NoGoodCheckpoint(CorruptCheckpoint, ValueError):
    """Every checkpoint of the run is damaged: resuming would silently start over (also a
    ValueError, as "no checkpoint" is for readers of another run)."""


class CheckpointMismatch(ValueError):
    """A readable checkpoint whose arrays do not fit this run's state (another config)."""


def _as_uint32(x):
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = x.dtype.itemsize
    if size == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if size < 4:
        return jax.lax.bitcast_convert_type(x, {2: jnp.uint16, 1: jnp.uint8}[size]).astype(
            jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.uint32)  # 8 bytes: a trailing axis of 2 words


def _leaf_sums(x):
    u = _as_uint32(x)
    # The flat position of every word, built from iotas: no reshape, so sharded arrays stay
    # sharded; uint32 arithmetic wraps, and wrapping sums do not depend on the reduction order.
    pos = jnp.zeros(u.shape, jnp.uint32)
    for d in range(u.ndim):
        pos = pos * jnp.uint32(u.shape[d]) + jax.lax.broadcasted_iota(jnp.uint32, u.shape, d)
    # Odd multipliers are invertible mod 2^32: any change of one word changes both sums.
    a = jnp.sum(u * (2 * pos + 1), dtype=jnp.uint32)
    m = pos * jnp.uint32(0x9E3779B1)
    m = (m ^ (m >> 16)) * jnp.uint32(0x85EBCA6B) | jnp.uint32(1)
    b = jnp.sum((u ^ (m >> 7)) * m, dtype=jnp.uint32)
    return jnp.stack([a, b])


def _leaf_finite(x):
    return jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)


_digest = jax.jit(lambda tree: (jax.tree.map(_leaf_sums, tree),
                                jax.tree.map(_leaf_finite, tree)))


def digest(state: Any) -> tuple[dict[str, list[int]], list[str]]:
    """``({path: [sum1, sum2]}, [paths with non-finite values])`` of every array of ``state``."""
    from bnn_jax.train.sharding import path_str

    sums, finite = _digest(state)
    # Full reductions are replicated: every process holds the whole value.
    local = lambda x: np.asarray(x.addressable_data(0))  # noqa: E731
    return ({path_str(p): [int(v) for v in local(s)]
             for p, s in jax.tree_util.tree_leaves_with_path(sums)},
            [path_str(p) for p, f in jax.tree_util.tree_leaves_with_path(finite)
             if not bool(local(f))])


def _abandoned_read(unraisable) -> bool:
    obj, exc = unraisable.object, unraisable.exc_value
    if inspect.iscoroutine(obj) and "orbax" in getattr(obj.cr_code, "co_filename", ""):
        return True
    return isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc)


class _AbandonedReadLogs(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" for orbax's abandoned reads."""

    def filter(self, record: logging.LogRecord) -> bool:
        tb = record.exc_info[2] if record.exc_info else None
        while tb is not None:
            if "orbax" in tb.tb_frame.f_code.co_filename:
                return False
            tb = tb.tb_next
        return "orbax" not in record.getMessage()


def _collect_abandoned_reads() -> None:
    # Orbax reads the arrays with concurrent coroutines; when one fails, the others are left
    # suspended, and whenever the garbage collector finds them (now or at exit) each prints an
    # "Exception ignored in: <coroutine ...>" traceback or "Event loop is closed". The failure
    # is reported once, by the caller: from the first damaged read on, those are dropped.
    previous = sys.unraisablehook
    if not getattr(previous, "_bnn_jax_quiet", False):
        def hook(unraisable):
            if not _abandoned_read(unraisable):
                previous(unraisable)

        hook._bnn_jax_quiet = True
        sys.unraisablehook = hook
    asyncio_log = logging.getLogger("asyncio")  # the same reads, reported as "never retrieved"
    if not any(isinstance(f, _AbandonedReadLogs) for f in asyncio_log.filters):
        asyncio_log.addFilter(_AbandonedReadLogs())
    gc.collect()


def _more(items: list, shown: int) -> str:
    return f" (and {len(items) - shown} more)" if len(items) > shown else ""


def _reason(e: BaseException) -> str:
    # Orbax wraps TensorStore's error and prints the whole TensorStore spec: the innermost
    # error says what is wrong ("Requested byte range ... is not valid"), without the spec.
    while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
        e = e.__cause__ or e.__context__
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    text = re.sub(r"\s+", " ", re.sub(r"[{(]'.*", "...", text)).strip()
    return text[:240] + ("..." if len(text) > 240 else "")


class Checkpointer:
    """Save/restore the train state under ``<workdir>/checkpoints/<step>``."""

    def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.keep, self.async_save, self.read_only = keep, async_save, read_only
        self._open()

    def _open(self):
        if not self.read_only:  # another run's temporaries may be a save still in progress
            self._remove_unfinished()
        elif not any(isinstance(f, _ReadOnlyNotices) for f in logging.getLogger("absl").filters):
            logging.getLogger("absl").addFilter(_ReadOnlyNotices())
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if self.read_only else self.keep, create=not self.read_only,
            read_only=self.read_only, enable_async_checkpointing=self.async_save,
            cleanup_tmp_directories=False)  # done synchronously by _remove_unfinished
        # Handlers named up front so that item_metadata can read a checkpoint's shapes.
        handlers = {"state": ocp.StandardCheckpointHandler(),
                    "record": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_handlers=handlers)

    def _remove_unfinished(self) -> None:
        # Orbax can delete unfinished temporaries itself, but in a background thread; a manager
        # re-opened after a quarantine would then race the first one's thread on the same
        # directory. Deleting them here, before any manager exists, is deterministic. Only
        # orbax's temporary names are touched: never a finalized step.
        if jax.process_index() == 0 and os.path.isdir(self.directory):
            for name in os.listdir(self.directory):
                if TMP_MARKER in name:
                    shutil.rmtree(os.path.join(self.directory, name))
        _barrier("remove_unfinished_checkpoints")

    def all_steps(self) -> list[int]:
        """Finalized checkpoint steps, oldest first."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, record: dict[str, Any]) -> None:
        """Start saving ``state`` at ``step`` (asynchronously); ``record`` is JSON metadata."""
        checksums, _ = digest(state)
        record = {**record, "step": int(step), "checksums": checksums}
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        record=ocp.args.JsonSave(record)),
                          force=True)

    def wait(self) -> None:
        """Block until pending saves are finalized on disk."""
        self.manager.wait_until_finished()

    def _saved_shapes(self, step: int) -> Any:
        # The saved shapes on one local device. Restoring with the saved shardings would fail
        # for a run written on another mesh (a teacher trained on 8 devices, read on 1).
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            self._metadata(step))

    def _metadata(self, step: int) -> Any:
        where = os.path.join(self.directory, str(step), "state")
        if not os.path.exists(os.path.join(where, "_METADATA")):
            what = "its arrays (state/) are missing" if not os.path.isdir(where) else \
                "its array index state/_METADATA is missing"
            raise CorruptCheckpoint(f"checkpoint {step} cannot be read: {what}")
        try:
            meta = self.manager.item_metadata(step)["state"]
        except Exception as e:  # noqa: BLE001 - any failure to parse the index is damage
            raise CorruptCheckpoint(f"checkpoint {step} cannot be read: the metadata of its "
                                    f"arrays is damaged ({_reason(e)})") from e
        return getattr(meta, "tree", meta)

    def _check_fits(self, step: int, abstract_state: Any) -> None:
        from bnn_jax.train.sharding import path_str

        saved = {path_str(p): tuple(m.shape) for p, m in
                 jax.tree_util.tree_leaves_with_path(self._metadata(step))}
        want = {path_str(p): tuple(a.shape) for p, a in
                jax.tree_util.tree_leaves_with_path(abstract_state)}
        order = lambda k: (not k.startswith("params/"), k)  # noqa: E731 - the model's first
        problems = [f"{k} is missing" for k in sorted(set(want) - set(saved), key=order)]
        problems += [f"{k} is not in this run's state"
                     for k in sorted(set(saved) - set(want), key=order)]
        problems += [f"{k} has shape {saved[k]}, this run's is {want[k]}"
                     for k in sorted(set(want) & set(saved), key=order) if saved[k] != want[k]]
        if problems:
            raise CheckpointMismatch(
                f"checkpoint {step} in {self.directory} was written by a run with another model "
                f"or optimizer: {'; '.join(problems[:5])}{_more(problems, 5)}. "
                "It is kept as it is; use a new --workdir (init_from can start from its "
                "parameters) or restore the config that wrote it")

    def _restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        if abstract_state is None:
            abstract_state = self._saved_shapes(step)
        else:
            self._check_fits(step, abstract_state)
        reason = None
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()))
        except Exception as e:  # orbax/tensorstore raise many types for damaged files
            reason = _reason(e)
        if reason is not None:  # (outside the except block: the error and its frames are gone)
            _collect_abandoned_reads()
            raise CorruptCheckpoint(f"checkpoint {step} cannot be read: {reason}")
        state, record = out["state"], dict(out["record"])
        saved_step = int(np.asarray(jax.device_get(state["step"])))
        position = record.get("data_position", saved_step)
        if record.get("step") != step or saved_step != step or position != step:
            raise CorruptCheckpoint(f"checkpoint {step} is inconsistent: its record says step "
                                    f"{record.get('step')} and data position {position}, its "
                                    f"arrays say step {saved_step}")
        sums, non_finite = digest(state)
        expected = record.get("checksums")  # absent in checkpoints written before checksums
        if expected is not None:
            wrong = sorted(k for k in set(sums) | set(expected) if sums.get(k) != expected.get(k))
            if wrong:
                raise CorruptCheckpoint(f"checkpoint {step} is damaged: the data of "
                                        f"{', '.join(wrong[:5])}{_more(wrong, 5)}"
                                        " does not match the checksums written with it")
        if non_finite:
            raise CorruptCheckpoint(f"checkpoint {step} is damaged: non-finite values in "
                                    f"{', '.join(non_finite[:5])}")
        return state, record

    def _quarantine(self, step: int) -> str:
        # Move aside, never delete: the files may still help a post-mortem.
        src = os.path.join(self.directory, str(step))
        dst = src + ".corrupt"
        n = 1
        while os.path.exists(dst):
            dst, n = f"{src}.corrupt{n}", n + 1
        if jax.process_index() == 0:
            os.rename(src, dst)
        _barrier(f"quarantine_{step}")
        self.manager.close()
        self._open()
        return dst

    def _set_aside(self) -> list[str]:
        return sorted(n for n in (os.listdir(self.directory) if os.path.isdir(self.directory)
                                  else ()) if ".corrupt" in n)

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
        """The newest checkpoint that restores cleanly, or None if the run has none yet.

        Raises :class:`NoGoodCheckpoint` when checkpoints exist (or were set aside earlier) but
        none is good, and :class:`CheckpointMismatch` when the newest one is another run's.
        """
        damaged = []
        for step in reversed(self.all_steps()):
            try:
                state, record = self._restore(step, abstract_state)
            except CorruptCheckpoint as e:
                src = os.path.join(self.directory, str(step))
                if self.read_only:
                    msg = f"{e}; left in place at {src} (read-only)"
                else:
                    msg = f"{e}; moved aside from {src} to {self._quarantine(step)}"
                print(f"WARNING: {msg}; trying the previous checkpoint", flush=True)
                damaged.append(msg)
                continue
            return state, record
        aside = self._set_aside()
        if damaged or aside:
            raise NoGoodCheckpoint(
                f"no good checkpoint left in {self.directory} (damaged, kept for inspection: "
                f"{', '.join(aside) or '; '.join(damaged)}); stopping rather than starting the "
                f"run over. To start from step 0 anyway, move {self.directory} away or use a new "
                "--workdir")
        return None

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """The checkpoint at ``step`` (raises :class:`CorruptCheckpoint` if unreadable).

        ``abstract_state`` None restores every array whole on this process's first device.
        """
        return self._restore(step, abstract_state)

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def restore_params(workdir: str, like: dict[str, Any], *, ema: bool = False,
                   kept: list[str] | None = None, derived: Any = (),
                   fresh_params: str = "") -> dict[str, Any]:
    """``{"params", "rest"}`` of the newest good checkpoint of another run (teacher, stage 2).

    The other run's optimizer may differ, so only the model arrays are taken, matched by path
    to ``like`` (this run's ``{"params": ..., "rest": ...}``); a missing or reshaped array is an
    error naming it. ``ema=True`` takes the run's weight EMA (``config.ema``) as the params.
    With a ``kept`` list, non-parameter state the other run lacks (e.g. hash functions of a
    layer the earlier stage did not have) keeps this run's fresh value and its path is
    appended to ``kept``; missing parameters are an error, except those named (without the
    ``params/`` prefix) in ``derived``, which the caller recomputes from the loaded arrays (a
    quantizer's scales of a float checkpoint's kernels), and those whose path fully matches the
    regex ``fresh_params`` (a new head), which keep their fresh value; both are appended to
    ``kept`` too.
    """
    from bnn_jax.train.sharding import path_str

    ckpt = Checkpointer(workdir, async_save=False, read_only=True)
    try:
        got = ckpt.restore_latest(None)
    finally:
        ckpt.close()
    if got is None:
        raise ValueError(f"no checkpoint found under {os.path.join(workdir, 'checkpoints')}")
    if ema and "ema" not in got[0]:
        raise ValueError(f"the run in {workdir} kept no weight EMA (its config.ema.decay was 0); "
                         "restore its params without ema=True")
    arrays = {"params": got[0]["ema" if ema else "params"], "rest": got[0]["rest"]}
    saved = {path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(arrays)}

    def pick(path, target):
        name = path_str(path)
        if name not in saved and kept is not None and name.startswith("rest/"):
            kept.append(name[len("rest/"):])
            return np.asarray(target)
        if name not in saved and kept is not None and name[len("params/"):] in derived:
            kept.append(name[len("params/"):])
            return np.asarray(target)
        if (name not in saved and fresh_params and name.startswith("params/")
                and re.fullmatch(fresh_params, name[len("params/"):])):
            if kept is not None:
                kept.append(name[len("params/"):])
            return np.asarray(target)
        if name not in saved:
            raise ValueError(f"checkpoint in {workdir} has no array {name!r}")
        value = np.asarray(saved[name])
        if value.shape != np.shape(target):
            raise ValueError(f"checkpoint array {name!r} has shape {value.shape}, the model "
                             f"expects {np.shape(target)}")
        return value

    return jax.tree_util.tree_map_with_path(pick, like)

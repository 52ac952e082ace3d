"""Orbax checkpoints: periodic, atomic, keep the last N, resume from the newest *good* one.

A checkpoint holds the whole train state (params, other model state such as BatchNorm
statistics, optimizer state, step, RNG) and a JSON record with the step and the data-iterator
position. Orbax writes into a temporary directory and renames it when complete, so a run killed
mid-save leaves no half checkpoint under a step name; old checkpoints are removed only after a
newer one is finalized. A finalized checkpoint that cannot be read back (truncated or damaged
files) or whose record disagrees with its arrays is reported, moved aside to
``<step>.corrupt`` (never deleted) and the previous one is used. Reading another run's
checkpoints (a teacher, a first stage) opens them read-only: that run's directory is not touched.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


# What orbax appends to a step directory while the step is being written.
TMP_MARKER = ".orbax-checkpoint-tmp"


class CorruptCheckpoint(RuntimeError):
    """A finalized checkpoint whose contents cannot be restored or fail the consistency check."""


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
        record = {**record, "step": int(step)}
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        record=ocp.args.JsonSave(record)),
                          force=True)

    def wait(self) -> None:
        """Block until pending saves are finalized on disk."""
        self.manager.wait_until_finished()

    def _saved_shapes(self, step: int) -> Any:
        # The saved shapes on one local device. Restoring with the saved shardings would fail
        # for a run written on another mesh (a teacher trained on 8 devices, read on 1).
        meta = self.manager.item_metadata(step)["state"]
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            getattr(meta, "tree", meta))

    def check_shapes(self, abstract_state: Any) -> None:
        """The newest checkpoint's arrays have the paths and shapes of ``abstract_state``
        (ValueError naming the differences: the config no longer builds the saved model)."""
        from bnn_jax.train.sharding import path_str

        steps = self.all_steps()
        if not steps:
            return
        try:
            saved = self._saved_shapes(steps[-1])
        except Exception:  # unreadable metadata: restore_latest reports and sets it aside
            return

        def shapes(tree):
            return {path_str(p): tuple(np.shape(v))
                    for p, v in jax.tree_util.tree_leaves_with_path(tree)}

        got, want = shapes(saved), shapes(abstract_state)
        diff = [f"{k}: saved {got.get(k, 'missing')}, config builds {want.get(k, 'nothing')}"
                for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k)]
        if diff:
            more = f" (and {len(diff) - 8} more)" if len(diff) > 8 else ""
            raise ValueError(
                f"checkpoint {steps[-1]} in {self.directory} does not match the model this "
                f"config builds: {'; '.join(diff[:8])}{more}. Resume with the config the run "
                "was started with (its config.json), or use a new workdir")

    def _restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        try:
            if abstract_state is None:
                abstract_state = self._saved_shapes(step)
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()))
        except Exception as e:  # orbax/tensorstore raise many types for damaged files
            raise CorruptCheckpoint(f"checkpoint {step} cannot be read: {type(e).__name__}: "
                                    f"{str(e)[:300]}") from e
        state, record = out["state"], dict(out["record"])
        saved_step = int(np.asarray(jax.device_get(state["step"])))
        if record.get("step") != step or saved_step != step:
            raise CorruptCheckpoint(f"checkpoint {step} is inconsistent: record says step "
                                    f"{record.get('step')}, arrays say {saved_step}")
        return state, record

    def _quarantine(self, step: int) -> None:
        # Move aside, never delete: the files may still help a post-mortem.
        if jax.process_index() == 0:
            src = os.path.join(self.directory, str(step))
            dst = src + ".corrupt"
            n = 1
            while os.path.exists(dst):
                dst, n = f"{src}.corrupt{n}", n + 1
            os.rename(src, dst)
        _barrier(f"quarantine_{step}")
        self.manager.close()
        self._open()

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
        """The newest checkpoint that restores cleanly, or None if there is none."""
        for step in reversed(self.all_steps()):
            try:
                state, record = self._restore(step, abstract_state)
            except CorruptCheckpoint as e:
                log.error("%s; trying the previous checkpoint", e)
                print(f"WARNING: {e}; using the previous checkpoint", flush=True)
                if not self.read_only:
                    self._quarantine(step)
                continue
            return state, record
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


def restore_params(workdir: str, like: dict[str, Any]) -> dict[str, Any]:
    """``{"params", "rest"}`` of the newest good checkpoint of another run (teacher, stage 2).

    The other run's optimizer may differ, so only the model arrays are taken, matched by path
    to ``like`` (this run's ``{"params": ..., "rest": ...}``); a missing or reshaped array is an
    error naming it.
    """
    from bnn_jax.train.sharding import path_str

    ckpt = Checkpointer(workdir, async_save=False, read_only=True)
    try:
        got = ckpt.restore_latest(None)
    finally:
        ckpt.close()
    if got is None:
        raise ValueError(f"no checkpoint found under {os.path.join(workdir, 'checkpoints')}")
    saved = {path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(
        {k: got[0][k] for k in ("params", "rest")})}

    def pick(path, target):
        name = path_str(path)
        if name not in saved:
            raise ValueError(f"checkpoint in {workdir} has no array {name!r}")
        value = np.asarray(saved[name])
        if value.shape != np.shape(target):
            raise ValueError(f"checkpoint array {name!r} has shape {value.shape}, the model "
                             f"expects {np.shape(target)}")
        return value

    return jax.tree_util.tree_map_with_path(pick, like)

"""A run's workdir: one run at a time, the config that made it, and results kept across re-runs.

``claim(workdir, config)`` is entered before anything is written. It checks that the directory is
usable, takes an exclusive ``fcntl`` lock (``.lock``, one file per process of a multi-host run,
holding host and pid), and compares the state-defining part of the config with the run already
in the directory (its ``config.json``): a resume with another model, optimizer, data, seed, ... is
refused with the difference, and so is a ``total_steps`` below the newest checkpoint. A lock
left by a process that died is free again (the kernel drops ``flock`` locks with their process),
so it is taken over without ceremony. If the start fails later, a workdir the claim created is
removed again when it holds nothing but the lock files.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import shutil
import socket
from typing import Any, Iterator

import numpy as np

# Fields that say how a run is executed or reported, not what its state means: changing them
# between a run and its resume is always fine. Everything else (model, quantizers, optimizer,
# data, seed, total_steps, schedules, ...) is compared, including fields added later.
RUNTIME_FIELDS = ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
                  "async_checkpoint", "tensorboard", "mesh", "partition_rules", "distributed",
                  "init_from", "init_fresh", "allow_config_change", "data.eval_batch_size",
                  "data.data_dir")
OUTPUTS = ("config.json", "result.json", "summary.md")


class WorkdirError(ValueError):
    """The workdir cannot host this run as asked (in use, another run's, not writable, ...)."""


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def state_fields(config_json: dict[str, Any]) -> dict[str, Any]:
    """The dotted fields of a config (as JSON) that define what a checkpoint's state means."""
    flat = _flat(config_json)
    return {k: v for k, v in flat.items()
            if not any(k == f or k.startswith(f + ".") for f in RUNTIME_FIELDS)}


def config_json(config) -> dict[str, Any]:
    """A ConfigDict as the JSON that ``config.json`` holds (tuples become lists)."""
    return json.loads(config.to_json_best_effort())


def config_diff(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``field: old -> new`` for every state-defining field that differs."""
    a, b = state_fields(before), state_fields(now)
    missing = "(not set)"
    return [f"{k}: {json.dumps(a[k]) if k in a else missing} -> "
            f"{json.dumps(b[k]) if k in b else missing}"
            for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)]


def checkpoint_steps(workdir: str) -> list[int]:
    """The finalized checkpoint steps on disk, oldest first (read-only, no orbax)."""
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in (os.listdir(d) if os.path.isdir(d) else ()) if n.isdigit())


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def check_usable(workdir: str) -> None:
    """A clear error when ``workdir`` is a file or cannot be written (nothing is created)."""
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise WorkdirError(f"--workdir {workdir} is a file, not a directory; give a directory "
                           "(it is created if missing)")
    existing = path
    while not os.path.exists(existing):  # the first ancestor that exists must let us create
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise WorkdirError(f"--workdir {workdir}: {existing} is a file, so the directory cannot "
                           "be created; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be created ({existing} is " \
                                                          "not writable)"
        raise WorkdirError(f"--workdir {workdir} {what}; fix its permissions or choose another "
                           "directory")


class RunLock:
    """An exclusive ``flock`` on ``<workdir>/.lock`` (``.lock.<i>`` for process i > 0)."""

    def __init__(self, workdir: str, process_index: int = 0):
        name = ".lock" if process_index == 0 else f".lock.{process_index}"
        self.path = os.path.join(workdir, name)
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`WorkdirError` naming the run that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                # A filesystem without locks (some network and object-store mounts): run, but
                # say that nothing keeps a second run out.
                print(f"WARNING: {self.path}: the filesystem cannot lock files ({e.strerror}); "
                      "make sure no other run uses this workdir", flush=True)
                self.fd = fd
                return
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = _read_json(self.path) or {}
            who = (f"process {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
                   f"started {holder.get('started', '?')}")
            raise WorkdirError(f"workdir {os.path.dirname(self.path)} is in use by another run "
                               f"({who}; lock file {self.path}). Wait for it to finish or stop "
                               "it, or use another --workdir") from None
        # The lock is ours (a dead holder's flock is gone with its process): say who holds it.
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "started": datetime.datetime.now().isoformat(
                                     timespec="seconds")}).encode())
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        """Drop the lock (the file stays: deleting it could race a run that just opened it)."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _all_agree(ok: bool) -> bool:
    """True when every process says ok (one process's error must stop all, not hang them)."""
    import jax

    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


class Claim:
    """What :func:`claim` found: the finished result to return, if the run is already done."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.finished: dict[str, Any] | None = None
        self.previous: dict[str, Any] | None = None  # the workdir's config.json, if any
        self.last_step: int | None = None

    def write_config(self, config) -> None:
        """Write ``config.json`` (process 0), keeping a replaced config under ``history/``."""
        import jax

        if jax.process_index() != 0:
            return
        if self.previous is not None and config_diff(self.previous, config_json(config)):
            # An allowed change: the files of the run so far are kept beside the new ones.
            keep = os.path.join(self.workdir, "history", f"step{self.last_step or 0}")
            os.makedirs(keep, exist_ok=True)
            for name in OUTPUTS:
                src = os.path.join(self.workdir, name)
                if os.path.exists(src):
                    shutil.copy2(src, os.path.join(keep, name))
        with open(os.path.join(self.workdir, "config.json"), "w", encoding="utf-8") as f:
            f.write(config.to_json_best_effort(indent=2))


def _check_run(workdir: str, config, c: Claim) -> None:
    steps = checkpoint_steps(workdir)
    c.last_step = steps[-1] if steps else None
    c.previous = _read_json(os.path.join(workdir, "config.json"))
    has_run = bool(steps) or any(os.path.exists(os.path.join(workdir, n))
                                 for n in ("result.json", "metrics.jsonl"))
    if steps and steps[-1] > config.total_steps:
        raise WorkdirError(
            f"workdir {workdir} has a checkpoint at step {steps[-1]}, past total_steps="
            f"{config.total_steps}; a run cannot be shortened after the fact. Use a new --workdir "
            f"with --config.init_from={workdir}, or total_steps >= {steps[-1]}")
    if c.previous is not None and has_run:
        diff = config_diff(c.previous, config_json(config))
        if diff and not config.get("allow_config_change", False):
            at = f"checkpoint at step {steps[-1]}" if steps else "no checkpoint yet"
            raise WorkdirError(
                f"workdir {workdir} holds a run with a different config ({at}): "
                f"{'; '.join(diff[:8])}{f' (and {len(diff) - 8} more)' if len(diff) > 8 else ''}"
                ". Nothing was changed. "
                "To keep both, use a new --workdir (with --config.init_from="
                f"{workdir} to start from this run's parameters); if the change is intended "
                "(e.g. a longer total_steps), add --config.allow_config_change=True")
    result = _read_json(os.path.join(workdir, "result.json"))
    if (steps and steps[-1] == config.total_steps and isinstance(result, dict)
            and result.get("step") == config.total_steps
            and result.get("train_loss") is not None):
        c.finished = result


@contextlib.contextmanager
def claim(workdir: str, config) -> Iterator[Claim]:
    """Lock ``workdir`` for this run and check that it may continue the run there."""
    import jax

    check_usable(workdir)
    created = not os.path.exists(workdir)
    os.makedirs(workdir, exist_ok=True)
    lock = RunLock(workdir, jax.process_index())
    c, error = Claim(workdir), None
    try:
        lock.acquire()
    except WorkdirError as e:
        error = e
    if not _all_agree(error is None):
        lock.release()
        raise error or WorkdirError(f"workdir {workdir} is in use by another run (another "
                                    "process of this run could not lock it)")
    try:
        try:
            _check_run(workdir, config, c)
        except WorkdirError as e:
            error = e
        if not _all_agree(error is None):
            raise error or WorkdirError(f"workdir {workdir}: another process of this run "
                                        "refused to continue the run there")
        yield c
    except BaseException:
        lock.release()
        if created:
            _remove_if_only_locks(workdir)
        raise
    lock.release()


def _remove_if_only_locks(workdir: str) -> None:
    # A start that failed leaves no trace in a directory it created.
    try:
        names = os.listdir(workdir)
        if all(n == ".lock" or n.startswith(".lock.") for n in names):
            for n in names:
                os.remove(os.path.join(workdir, n))
            os.rmdir(workdir)
    except OSError:
        pass  # another process of the run removes it, or something else was written


def finished_train_metrics(workdir: str, step: int) -> dict[str, float]:
    """The last ``train`` line at or before ``step`` in ``metrics.jsonl`` (for a run at its end)."""
    last: dict[str, float] = {}
    for line in _lines(workdir):
        if line.get("split") == "train" and line.get("step", 0) <= step:
            last = {k: v for k, v in line.items() if k not in ("step", "split")}
    return last


def has_line(workdir: str, step: int, split: str) -> bool:
    """Whether ``metrics.jsonl`` already holds a ``split`` line for ``step``."""
    return any(x.get("step") == step and x.get("split") == split for x in _lines(workdir))


def _lines(workdir: str) -> list[dict[str, Any]]:
    path = os.path.join(workdir, "metrics.jsonl")
    out = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for x in f:
                with contextlib.suppress(ValueError):
                    out.append(json.loads(x))
    return out

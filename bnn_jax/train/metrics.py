"""Metric writers and progress: console lines, ``metrics.jsonl``, TensorBoard when available.

The core install has no TensorFlow, and clu's ``metric_writers``/``periodic_actions`` import it,
so the console and JSONL writers here are self-contained; with TensorFlow and tensorboard
installed (extra ``bnn_jax[tf]``) clu's summary writer adds TensorBoard event files. Aggregation
of per-step values uses ``clu.metrics.Average``, which needs no TensorFlow.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import numpy as np
from clu import metrics as clu_metrics


def _scalar(v: Any) -> float:
    return float(np.asarray(v))


class JsonlWriter:
    """One JSON object per line: ``{"step": s, "split": "train", "loss": ..., ...}``."""

    def __init__(self, path: str, *, start_step: int = 0):
        if os.path.exists(path):
            # A resumed run repeats the steps after its checkpoint: drop their earlier lines so
            # that every step is in the file once.
            with open(path, encoding="utf-8") as f:
                keep = [x for x in f if x.strip() and json.loads(x)["step"] <= start_step]
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(keep)
        self._f = open(path, "a", encoding="utf-8")

    def write(self, step: int, split: str, scalars: dict[str, float]) -> None:
        self._f.write(json.dumps({"step": int(step), "split": split,
                                  **{k: _scalar(v) for k, v in scalars.items()}}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class TensorBoardWriter:
    """clu's TensorFlow summary writer (event files under ``<workdir>/tensorboard``)."""

    def __init__(self, logdir: str):
        from clu.metric_writers import SummaryWriter  # imports TensorFlow

        self._w = SummaryWriter(logdir)

    def write(self, step: int, split: str, scalars: dict[str, float]) -> None:
        self._w.write_scalars(int(step), {f"{split}/{k}": _scalar(v) for k, v in scalars.items()})
        self._w.flush()

    def close(self) -> None:
        self._w.close()


def tensorboard_available() -> bool:
    """True when TensorFlow and tensorboard are importable (clu's writers need both)."""
    try:
        import tensorboard  # noqa: F401
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


class Writers:
    """Fan-out to the JSONL file and, if possible and wanted, TensorBoard; only process 0 writes."""

    def __init__(self, workdir: str, *, tensorboard: bool = True, start_step: int = 0):
        self.writers = []
        if jax.process_index() != 0:
            return
        self.writers.append(JsonlWriter(os.path.join(workdir, "metrics.jsonl"),
                                        start_step=start_step))
        if tensorboard and tensorboard_available():
            self.writers.append(TensorBoardWriter(os.path.join(workdir, "tensorboard")))

    def write(self, step: int, split: str, scalars: dict[str, Any]) -> None:
        for w in self.writers:
            w.write(step, split, scalars)

    def close(self) -> None:
        for w in self.writers:
            w.close()


def average(values: dict[str, Any], mask: Any = None) -> dict[str, clu_metrics.Average]:
    """clu Averages of per-example (or per-step) arrays, honouring a padding mask."""
    return {k: clu_metrics.Average.from_model_output(v, mask=mask) for k, v in values.items()}


def merge(acc: dict | None, new: dict) -> dict:
    """Accumulate two dicts of clu metrics."""
    return new if acc is None else {k: acc[k].merge(new[k]) for k in acc}


def compute(acc: dict) -> dict[str, float]:
    """Final values of accumulated clu metrics."""
    return {k: float(v.compute()) for k, v in acc.items()}


class Progress:
    """Steps/s, examples/s and ETA between console reports.

    Call :meth:`restart` once the first step has finished, so that compilation does not count
    as training time in the first rate and ETA.
    """

    def __init__(self, total_steps: int, global_batch: int, start_step: int):
        self.total, self.batch = total_steps, global_batch
        self.t0, self.s0 = time.perf_counter(), start_step
        self.start_time, self.start_step = self.t0, start_step

    def restart(self, step: int) -> None:
        """Measure rates from now and ``step`` on (elapsed() still counts from the start)."""
        self.t0, self.s0 = time.perf_counter(), step

    def tick(self, step: int) -> dict[str, float]:
        """Rates since the previous tick and the estimated time to the end of the run."""
        now = time.perf_counter()
        dt, ds = max(now - self.t0, 1e-9), step - self.s0
        self.t0, self.s0 = now, step
        rate = ds / dt
        eta = (self.total - step) / rate if rate > 0 else math.inf
        return {"steps_per_sec": rate, "examples_per_sec": rate * self.batch, "eta_sec": eta}

    def elapsed(self) -> float:
        """Seconds since the loop started."""
        return time.perf_counter() - self.start_time


def format_eta(seconds: float) -> str:
    """``1h02m03s`` style."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def console_line(step: int, total: int, scalars: dict[str, float]) -> str:
    """One progress line: step, train metrics, learning rate, throughput and ETA."""
    parts = [f"step {step}/{total}"]
    for k in ("loss", "accuracy", "learning_rate"):
        if k in scalars:
            parts.append(f"{k} {scalars[k]:.4g}")
    if "steps_per_sec" in scalars:
        parts.append(f"{scalars['steps_per_sec']:.1f} steps/s "
                     f"{scalars['examples_per_sec']:.0f} ex/s ETA {format_eta(scalars['eta_sec'])}")
    return " | ".join(parts)

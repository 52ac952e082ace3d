"""Metric writers and progress: console lines, ``metrics.jsonl`` and TensorBoard event files.

TensorBoard files come from ``tensorboardX`` (a core dependency: numpy + protobuf, no
TensorFlow), so ``tensorboard --logdir WORKDIR`` works on the default install. clu's
``metric_writers`` would import TensorFlow, so the writers here are self-contained; aggregation
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
    """Event files under ``<workdir>/tensorboard``: scalars, the model summary, sample images."""

    def __init__(self, logdir: str, *, start_step: int = 0):
        from tensorboardX import SummaryWriter

        # A resumed run repeats the steps after its checkpoint: purge_step hides the earlier
        # events of those steps in TensorBoard, as JsonlWriter drops their lines.
        # Event file names hold the time in whole seconds: a run resumed within the same second
        # would reuse (and overwrite) the previous file without a finer, ordered suffix.
        self._w = SummaryWriter(logdir, flush_secs=30, filename_suffix=f".{time.time_ns():020d}",
                                purge_step=start_step + 1 if start_step else None)

    def write(self, step: int, split: str, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            self._w.add_scalar(f"{split}/{k}", _scalar(v), int(step))
        self._w.flush()

    def write_text(self, tag: str, text: str, step: int = 0) -> None:
        # TensorBoard renders text as Markdown: indent it so the table stays monospaced.
        self._w.add_text(tag, "\n".join("    " + line for line in text.splitlines()), step)

    def write_images(self, tag: str, images: Any, step: int = 0) -> None:
        """NHWC images of any range, each rescaled to [0, 1] for display."""
        x = np.asarray(images, np.float32)
        lo = x.min(axis=(1, 2, 3), keepdims=True)
        hi = x.max(axis=(1, 2, 3), keepdims=True)
        self._w.add_images(tag, (x - lo) / np.maximum(hi - lo, 1e-12), step,
                           dataformats="NHWC")

    def close(self) -> None:
        self._w.close()


def tensorboard_available() -> bool:
    """True when the event-file writer (``tensorboardX``) is importable."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return False
    return True


def output_paths(workdir: str) -> dict[str, str]:
    """Where a run writes each of its outputs (absolute paths)."""
    w = os.path.abspath(workdir)
    return {"config": os.path.join(w, "config.json"), "metrics": os.path.join(w, "metrics.jsonl"),
            "checkpoints": os.path.join(w, "checkpoints"),
            "tensorboard": os.path.join(w, "tensorboard"),
            "summary": os.path.join(w, "summary.md"), "result": os.path.join(w, "result.json")}


def describe_outputs(workdir: str, *, tensorboard: bool = True, note: str | None = None) -> str:
    """The console's first lines: where config, metrics, checkpoints, TensorBoard, summary go."""
    p = output_paths(workdir)
    if not tensorboard:
        tb = "off (config.tensorboard=False)"
    elif tensorboard_available():
        tb = f"{p['tensorboard']}/  (view: tensorboard --logdir {os.path.abspath(workdir)})"
    else:
        tb = "not written: tensorboardX is not installed (pip install tensorboardX)"
    return "\n".join(([note] if note else []) + [
        f"Outputs of this run in {os.path.abspath(workdir)}:",
        f"  config       {p['config']}",
        f"  metrics      {p['metrics']}",
        f"  checkpoints  {p['checkpoints']}/",
        f"  tensorboard  {tb}",
        f"  summary      {p['summary']} and {p['result']} (at the end)"])


class Writers:
    """Fan-out to the JSONL file and, if wanted, TensorBoard; only process 0 writes."""

    def __init__(self, workdir: str, *, tensorboard: bool = True, start_step: int = 0):
        self.writers = []
        self.tensorboard = None
        if jax.process_index() != 0:
            return
        paths = output_paths(workdir)
        self.writers.append(JsonlWriter(paths["metrics"], start_step=start_step))
        if tensorboard and tensorboard_available():
            self.tensorboard = TensorBoardWriter(paths["tensorboard"], start_step=start_step)
            self.writers.append(self.tensorboard)

    def write(self, step: int, split: str, scalars: dict[str, Any]) -> None:
        for w in self.writers:
            w.write(step, split, scalars)

    def write_run_info(self, summary_text: str, ds: Any, step: int = 0) -> None:
        """The model summary as TensorBoard text and, for image data, a few test images."""
        if self.tensorboard is None:
            return
        self.tensorboard.write_text("model_summary", summary_text, step)
        batch = next(iter(ds.eval_batches()), None) if hasattr(ds, "eval_batches") else None
        if batch is not None and np.ndim(batch.get("image")) == 4:
            self.tensorboard.write_images("test_images", batch["image"][:16], step)

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

"""Model summary: parameters, bits and memory per layer (larq's ``summary`` for NNX models).

A layer's kernel counts at its kernel quantizer's bit width (``Quantizer.bits``; full precision
is 32); every other parameter and state array (biases, BatchNorm, learned scales) counts at 32.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from flax import nnx

FLOAT_BITS = 32


@dataclasses.dataclass
class LayerRow:
    """One module owning arrays: its path, type, precisions and array counts."""

    path: str
    kind: str
    input_bits: float | None
    kernel_bits: float | None
    quantized_params: int
    float_params: int
    non_trainable: int

    @property
    def memory_bits(self) -> float:
        return (self.quantized_params * (self.kernel_bits or FLOAT_BITS)
                + (self.float_params + self.non_trainable) * FLOAT_BITS)


def _bits(q: Any) -> float | None:
    return None if q is None else getattr(q, "bits", None)


class Rows(list):
    """The rows of :func:`summarize`, with the model's cost analysis (``cost``) when the model
    records its ``input_shape``."""

    cost: Any = None


def summarize(model: nnx.Module) -> list[LayerRow]:
    """A row for every module that holds parameters or state directly."""
    rows = Rows()
    for path, node in nnx.iter_graph(model):
        if not isinstance(node, nnx.Module):
            continue
        own = {k: v for k, v in vars(node).items() if isinstance(v, nnx.Variable)}
        if not own:
            continue
        kq = getattr(node, "kernel_quantizer", None)
        kbits = _bits(kq)
        quantized = floats = frozen = 0
        for name, var in own.items():
            n = int(np.prod(var.shape))  # also for an abstract (eval_shape) model
            if not isinstance(var, nnx.Param):
                frozen += n
            elif name == "kernel" and kbits is not None and kbits < FLOAT_BITS:
                quantized += n
            else:
                floats += n
        rows.append(LayerRow("/".join(str(p) for p in path) or "(root)", type(node).__name__,
                             _bits(getattr(node, "input_quantizer", None)),
                             kbits if quantized else None, quantized, floats, frozen))
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, tuple):
        from bnn_jax.analysis import cost

        rows.cost = cost.analyze(model, shape)
    return rows


def totals(rows: list[LayerRow]) -> dict[str, float]:
    """Whole-model counts: parameters, quantized share, memory and compression vs float32."""
    q = sum(r.quantized_params for r in rows)
    f = sum(r.float_params for r in rows)
    s = sum(r.non_trainable for r in rows)
    mem = sum(r.memory_bits for r in rows) / 8
    float_mem = (q + f + s) * FLOAT_BITS / 8
    return {"params": q + f, "quantized_params": q, "float_params": f, "non_trainable": s,
            "memory_bytes": mem, "float32_bytes": float_mem,
            "compression": float_mem / mem if mem else 1.0}


def _fmt_bits(b):
    return "-" if b is None else f"{b:g}"


def format_table(rows: list[LayerRow]) -> str:
    """A markdown table of the layers and a totals line."""
    lines = ["| layer | type | input bits | kernel bits | quantized params | float params | "
             "non-trainable | memory (kB) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.path} | {r.kind} | {_fmt_bits(r.input_bits)} | "
                     f"{_fmt_bits(r.kernel_bits)} | {r.quantized_params} | {r.float_params} | "
                     f"{r.non_trainable} | {r.memory_bits / 8 / 1000:.2f} |")
    t = totals(rows)
    lines.append(f"\nTotal parameters {t['params']:,} ({t['quantized_params']:,} quantized, "
                 f"{t['float_params']:,} float) + {t['non_trainable']:,} non-trainable; memory "
                 f"{t['memory_bytes'] / 1000:.2f} kB vs {t['float32_bytes'] / 1000:.2f} kB in "
                 f"float32 ({t['compression']:.1f}x smaller)")
    return "\n".join(lines)


def run_summary_markdown(config: Any, result: dict[str, Any], rows: list[LayerRow]) -> str:
    """``summary.md`` of a finished run: final metrics, model summary, cost, the config."""
    from bnn_jax.analysis import cost as cost_lib

    fmt = {k: (f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in result.items()}
    metric_lines = "\n".join(f"| {k} | {v} |" for k, v in fmt.items())
    return (f"# Run summary: {config.model.name} on {config.data.name}\n\n"
            f"## Final metrics\n\n| metric | value |\n|---|---|\n{metric_lines}\n\n"
            f"## Model\n\n{format_table(rows)}\n\n"
            + (f"## Cost (per example, larq summary accounting)\n\n"
               f"{cost_lib.format_table(rows.cost)}\n\n"
               if getattr(rows, "cost", None) is not None else "") +
            f"## Config\n\n```json\n{config.to_json_best_effort(indent=2)}\n```\n")

"""Binarization health: what every quantizer of a model outputs on a real batch.

``check(model, *args)`` runs the model once (on a copy: BatchNorm statistics, learned arrays and
RNG counters of ``model`` are untouched; ``check_linen`` for ``quantize_linen`` models) while
each quantizer reports its operand, and gives per quantized layer and role (``input``/
``weight``) the fractions of positive, negative and zero outputs (+1/-1/0 for a sign), the
share of operands inside the estimator's gradient window (where the surrogate derivative is not
0), and a warning when a binary quantizer is constant or nearly so: a sign after a ReLU sees
only values >= 0 and gives +1 everywhere, so the layer passes no information and gets no useful
gradient. ``format_report`` prints it.

``flip_ratios`` is the per-layer sign-flip share of the binary weights between two parameter
trees (larq's FlipRatio metric, see :mod:`bnn_jax.analysis.flip_ratio`), for training metrics.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bnn_jax.analysis.flip_ratio import fraction_flipped

#: A binary quantizer whose most frequent output sign exceeds this share is "nearly constant".
NEARLY_CONSTANT = 0.99


@dataclasses.dataclass
class QuantizerHealth:
    """One quantizer of one layer on one batch (fractions of all operand entries)."""

    path: str
    role: str            # "input" or "weight"
    quantizer: str
    bits: float | None
    positive: float
    negative: float
    zero: float
    in_window: float     # operand entries where the estimator's gradient is not 0
    minimum: float
    maximum: float
    count: int = 0       # operand entries seen

    @property
    def warning(self) -> str | None:
        """Why this quantizer's output carries (almost) no information, or None."""
        if self.bits is None or self.bits > 1:
            return None
        what = "inputs" if self.role == "input" else "weights"
        top, value = max((self.positive, "+1"), (self.negative, "-1"), (self.zero, "0"))
        if top < NEARLY_CONSTANT:
            return None
        where = "everywhere" if top == 1.0 else f"on {top:.1%} of them"
        if self.role == "input" and self.minimum >= 0 and value == "+1":
            return (f"inputs of {self.path} are all >= 0: {self.quantizer} gives +1 {where}; "
                    "use a ReLU-free block, a learnable shift (rsign), or ste_heaviside")
        if self.role == "input" and self.maximum <= 0 and value == "-1":
            return (f"inputs of {self.path} are all <= 0: {self.quantizer} gives -1 {where}; "
                    "use a learnable shift (rsign) or move the activation after the sign")
        return (f"{what} of {self.path}: {self.quantizer} gives {value} {where} (range "
                f"[{self.minimum:.3g}, {self.maximum:.3g}]); the layer passes almost no "
                "information")


def _window(fn, x):
    # The surrogate derivative of an elementwise estimator, all at once: d sum(q(x)) / dx.
    _, vjp = jax.vjp(fn, x)
    return vjp(jnp.ones(jnp.shape(fn(x)), jnp.result_type(fn(x))))[0]


def check(model: nnx.Module, *args, **kwargs) -> list[QuantizerHealth]:
    """Per quantized layer and role, the output statistics of its quantizer on
    ``model(*args, **kwargs)`` (run on a copy of ``model``, in its current mode)."""
    from bnn_jax.nn.intercept import module_references

    copy = nnx.clone(model)
    for path, _, _, child in module_references(copy):
        if isinstance(child, nnx.Module) and hasattr(child, "kernel_quantizer") \
                and not hasattr(child, "health_path"):
            # A static attribute of the copy: it survives the split/merge of nnx.scan/vmap,
            # whose steps see new module objects.
            child.health_path = "/".join(map(str, path))
    # One compiled call (the arguments are closed over, so Python flags stay static).
    return _observe(lambda: jax.block_until_ready(
        nnx.jit(lambda m: m(*args, **kwargs))(copy)))


def check_linen(qmodel, variables, *args, **kwargs) -> list[QuantizerHealth]:
    """:func:`check` for a Linen model made by ``bnn_jax.nn.quantize_linen``:
    ``qmodel.apply(variables, *args, **kwargs)`` (every collection mutable, result dropped)."""
    return _observe(lambda: jax.block_until_ready(jax.jit(
        lambda v: qmodel.apply(v, *args, mutable=True, **kwargs))(variables)))


def _observe(run) -> list[QuantizerHealth]:
    """The statistics every quantizer reports while ``run()`` runs."""
    from bnn_jax.nn.layers import observe_quantizers

    stats: dict[tuple[str, str], dict[str, Any]] = {}

    def record(path, role, q, x, out, grad):
        x, out, grad = (np.asarray(a, np.float64) for a in (x, out, grad))
        s = stats.setdefault((path, role), dict(quantizer=q.name, bits=q.bits, n=0, pos=0.0,
                                                neg=0.0, zero=0.0, win=0.0, lo=np.inf,
                                                hi=-np.inf))
        s["n"] += out.size
        s["pos"] += float(np.sum(out > 0))
        s["neg"] += float(np.sum(out < 0))
        s["zero"] += float(np.sum(out == 0))
        s["win"] += float(np.sum(grad != 0)) if grad.shape == x.shape else float("nan")
        s["lo"], s["hi"] = min(s["lo"], float(x.min())), max(s["hi"], float(x.max()))

    def probe(key, role, q, fn, x):
        path = key if isinstance(key, str) else getattr(key, "health_path",
                                                          type(key).__name__)
        # A callback, so operands inside jit/scan (stacked layers) are reported too.
        jax.debug.callback(lambda x, o, g, path=path: record(path, role, q, x, o, g),
                           x, fn(x), _window(fn, x))

    with observe_quantizers(probe):
        run()
    jax.effects_barrier()
    rows = []
    for (path, role), s in stats.items():
        n = max(s["n"], 1)
        rows.append(QuantizerHealth(path, role, s["quantizer"], s["bits"], s["pos"] / n,
                                    s["neg"] / n, s["zero"] / n, s["win"] / n, s["lo"], s["hi"],
                                    s["n"]))
    return sorted(rows, key=lambda r: (r.path, r.role != "input"))


def warnings_of(rows: list[QuantizerHealth]) -> list[str]:
    """The warnings of a :func:`check` result."""
    return [w for r in rows if (w := r.warning) is not None]


def format_report(rows: list[QuantizerHealth]) -> str:
    """A plain-text table of :func:`check` rows followed by its warnings."""
    lines = [f"{'layer':<32} {'role':<6} {'quantizer':<14} {'+':>6} {'-':>6} {'0':>6} "
             f"{'in grad window':>14}"]
    for r in rows:
        lines.append(f"{r.path:<32} {r.role:<6} {r.quantizer:<14} {r.positive:>6.1%} "
                     f"{r.negative:>6.1%} {r.zero:>6.1%} {r.in_window:>14.1%}")
    if not rows:
        return "binarization health: no quantizer ran"
    warns = warnings_of(rows)
    lines += [f"WARNING {w}" for w in warns]
    if rows and not warns:
        lines.append("no binary quantizer is constant on this batch")
    return "\n".join(lines)


# --------------------------------------------------------------------------- flip ratios --

def binary_kernel_paths(model: nnx.Module) -> dict[str, tuple]:
    """{layer path: key path of its latent kernel in ``nnx.to_pure_dict`` of the params} for
    every quantized layer whose kernel quantizer is binary (1 bit)."""
    from bnn_jax.nn.intercept import module_references
    from bnn_jax.nn.layers import QUANT_LAYERS

    out: dict[str, tuple] = {}
    seen = set()
    for path, _, _, child in module_references(model):
        q = getattr(child, "kernel_quantizer", None)
        if isinstance(child, QUANT_LAYERS) and q is not None and q.bits == 1 \
                and id(child) not in seen:
            seen.add(id(child))
            out["/".join(map(str, path))] = (*path, child.KERNEL)
    return out


def _at(tree, path):
    for p in path:
        tree = tree[p] if p in tree else tree[str(p)]
    return tree


def flip_ratios(paths: dict[str, tuple], before, after) -> dict[str, jax.Array]:
    """``{"flip_ratio/<layer>": share of its binary weights whose sign changed}`` between two
    pure-dict parameter trees, plus ``"flip_ratio"`` over all of them (jit-friendly)."""
    out = {f"flip_ratio/{name}": fraction_flipped(_at(before, p), _at(after, p))
           for name, p in paths.items()}
    if paths:
        out["flip_ratio"] = fraction_flipped([_at(before, p) for p in paths.values()],
                                             [_at(after, p) for p in paths.values()])
    return out

"""``freeze_linen``: the packed-kernel version of a model made by ``bnn_jax.nn.quantize_linen``.

Each quantized Linen ``Dense``/``DenseGeneral``/``Conv``/``Embed`` is rebuilt as the matching NNX
quantized layer on the layer's trained variables (learned quantizer arrays included) and frozen
by :func:`bnn_jax.export.freeze`'s rules; the frozen Linen model calls those packed layers in
place of the Linen ones (by the same interception) and runs everything else, including layers
kept float or fake-quant (``Einsum``, ``ConvTranspose``, unsupported forms: the record says why),
from the Linen variables. The packed layers live in an NNX container (``FrozenLinen.layers``),
which :func:`bnn_jax.export.save` writes and :func:`load_linen` reads back.
"""

from __future__ import annotations

from typing import Any

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bnn_jax.export.freeze import LayerRecord, _frozen_layer
from bnn_jax.nn.layers import QuantConv, QuantEmbed, QuantLinear, QuantLinearGeneral
from bnn_jax.nn.linen import LINEN_LAYERS, QuantizedLinen, _first_rule, _interceptor


class LinenLayers(nnx.Module):
    """The NNX stand-ins of a Linen model's quantized layers, by Linen path."""

    def __init__(self, layers: dict[str, nnx.Module]):
        self.layers = nnx.Dict({_key(p): m for p, m in layers.items()})


def _key(path: str) -> str:
    return path.replace("/", ".")  # one flat level: the file's paths stay unambiguous


def _at(tree, path: str):
    for p in (path.split("/") if path else ()):
        tree = tree[p]
    return tree


def _layer_calls(qmodel: QuantizedLinen, variables, args, kwargs) -> dict[str, Any]:
    """{path: Linen module} of the layers a rule quantizes, seen on an abstract run."""
    seen: dict[str, Any] = {}

    def spy(next_fun, a, k, context):
        m = context.module
        if context.method_name in ("__call__", "attend") and isinstance(m, LINEN_LAYERS):
            path = "/".join(p for p in (qmodel.prefix, *m.scope.path) if p)
            _, rule = _first_rule(qmodel.rules, path)
            if rule is not None and not rule.full_precision:
                seen.setdefault(path, m)
        return next_fun(*a, **k)

    def run(v):
        with linen.intercept_methods(spy):
            return qmodel.apply(v, *args, mutable=True, **kwargs)

    jax.eval_shape(run, variables)
    return seen


def _nnx_layer(m, v: dict, rule) -> tuple[nnx.Module | None, str]:
    """(the NNX quantized layer of Linen layer ``m`` with variables ``v``, or None, why not)."""
    q = dict(input_quantizer=rule.input, kernel_quantizer=rule.weight)
    bias = nnx.Param(jnp.asarray(v["bias"])) if "bias" in v else None
    kw = dict(use_bias=bias is not None, bias=bias, dtype=m.dtype)
    if type(m) is linen.Dense:
        k = jnp.asarray(v["kernel"])
        layer = QuantLinear(k.shape[0], k.shape[1], kernel=nnx.Param(k), **kw, **q)
    elif type(m) is linen.DenseGeneral:
        if m.batch_dims:
            return None, "DenseGeneral with batch_dims"
        k = jnp.asarray(v["kernel"])
        feats = m.features if isinstance(m.features, tuple) else (m.features,)
        n_in = len(k.shape) - len(feats)
        layer = QuantLinearGeneral(k.shape[:n_in], feats, axis=m.axis, kernel=nnx.Param(k),
                                   **kw, **q)
    elif type(m) is linen.Conv:
        if m.mask is not None:
            return None, "Conv with a mask"
        k = jnp.asarray(v["kernel"])
        layer = QuantConv(k.shape[-2] * m.feature_group_count, k.shape[-1], k.shape[:-2],
                          m.strides if m.strides is not None else 1, padding=m.padding,
                          input_dilation=m.input_dilation or 1,
                          kernel_dilation=m.kernel_dilation or 1,
                          feature_group_count=m.feature_group_count, kernel=nnx.Param(k),
                          **kw, **q)
    elif type(m) is linen.Embed:
        t = jnp.asarray(v["embedding"])
        layer = QuantEmbed(t.shape[0], t.shape[1], embedding=nnx.Param(t), dtype=m.dtype, **q)
    else:
        return None, f"linen {type(m).__name__} is not packed"
    for role, qq in (("input", layer.input_quantizer), ("kernel", layer.kernel_quantizer)):
        for n in (qq.learned if qq is not None else ()):
            setattr(layer, f"{role}_{n}", nnx.Param(jnp.asarray(v[f"{role}_{n}"])))
    return layer, ""


class _Held:
    """Keeps an NNX container out of Linen's view of its fields (not a pytree, no copies)."""

    def __init__(self, value):
        self.value = value


class FrozenLinen(linen.Module):
    """A :class:`QuantizedLinen` whose frozen layers run on packed kernels."""

    module: linen.Module
    rules: tuple = ()
    prefix: str = ""
    held: Any = None

    @property
    def layers(self) -> LinenLayers:
        """The packed layers (an NNX module: :func:`bnn_jax.export.save` writes it)."""
        return self.held.value

    def setup(self):
        linen.share_scope(self, self.module)

    def __call__(self, *args, **kwargs):
        """Call the model; frozen layers replace their Linen counterparts."""
        fake = _interceptor(self.rules, self.prefix, None)
        frozen = dict(self.layers.layers.items())

        def intercept(next_fun, a, k, context):
            m = context.module
            if context.method_name in ("__call__", "attend") and isinstance(m, LINEN_LAYERS):
                path = "/".join(p for p in (self.prefix, *m.scope.path) if p)
                layer = frozen.get(_key(path))
                if layer is not None and not isinstance(layer, tuple(_UNFROZEN)):
                    return getattr(layer, context.method_name)(*a, **k)
            return fake(next_fun, a, k, context)

        with linen.intercept_methods(intercept):
            return self.module(*args, **kwargs)


_UNFROZEN = (QuantLinear, QuantLinearGeneral, QuantConv, QuantEmbed)


def _stand_ins(qmodel, variables, args, kwargs):
    calls = _layer_calls(qmodel, variables, args, kwargs)
    params = variables["params"]
    out, kept = {}, {}
    for path, m in calls.items():
        _, rule = _first_rule(qmodel.rules, path)
        local = path[len(qmodel.prefix) + 1:] if qmodel.prefix else path
        layer, why = _nnx_layer(m, _at(params, local), rule)
        if layer is None:
            kept[path] = (type(m).__name__, why)
        else:
            out[path] = layer
    return out, kept


def freeze_linen(qmodel: QuantizedLinen, variables, *args, backend: str = "auto",
                 **kwargs) -> tuple[FrozenLinen, dict, list[LayerRecord]]:
    """(frozen model, its Linen variables without the frozen layers' kernels, one record per
    quantized layer) for ``qmodel`` with trained ``variables``; ``args``/``kwargs`` are a sample
    call (shapes only: it finds the layers the rules quantize)."""
    if not isinstance(qmodel, QuantizedLinen):
        raise ValueError(f"freeze_linen expects a model made by bnn_jax.nn.quantize_linen, got "
                         f"{type(qmodel).__name__}")
    layers, kept = _stand_ins(qmodel, variables, args, kwargs)
    frozen, records = {}, []
    for path, layer in layers.items():
        new, fields = _frozen_layer(layer, backend)
        records.append(LayerRecord(path=path, **{"frozen": False, **fields}))
        if new is not None:
            new.eval()
            frozen[path] = new
    for path, (kind, why) in kept.items():
        records.append(LayerRecord(path, kind, False, 0, 0, 0, reason=why))
    params = jax.tree.map(lambda a: a, dict(variables["params"]))
    for path in frozen:
        if isinstance(frozen[path], tuple(_frozen_embed())):
            continue  # an Embed reads its table in setup(): keep it there
        local = path[len(qmodel.prefix) + 1:] if qmodel.prefix else path
        *parents, leaf = local.split("/")
        node = params
        for p in parents:
            node[p] = dict(node[p])
            node = node[p]
        node.pop(leaf)
    model = FrozenLinen(qmodel.module, qmodel.rules, qmodel.prefix, _Held(LinenLayers(frozen)))
    return model, {**variables, "params": params}, sorted(records, key=lambda r: r.path)


def _frozen_embed():
    from bnn_jax.export.frozen import FrozenEmbed

    return (FrozenEmbed,)


def load_linen(path: str, qmodel: QuantizedLinen, variables, *args, backend: str = "auto",
               **kwargs) -> FrozenLinen:
    """The :class:`FrozenLinen` whose packed layers :func:`bnn_jax.export.save` wrote to
    ``path`` (from ``FrozenLinen.layers``); ``variables``/``args`` as for :func:`freeze_linen`
    (the trained variables of the same model, and a sample call)."""
    from bnn_jax.export.io import load

    layers, _ = _stand_ins(qmodel, variables, args, kwargs)
    container = load(path, LinenLayers(layers), backend=backend)
    return FrozenLinen(qmodel.module, qmodel.rules, qmodel.prefix, _Held(container))


def linen_state_bytes(frozen: FrozenLinen, variables) -> int:
    """Bytes of the packed layers plus the Linen variables the frozen model reads."""
    from bnn_jax.export.freeze import state_bytes

    return state_bytes(frozen.layers) + sum(int(np.asarray(a).nbytes)
                                            for a in jax.tree.leaves(variables))

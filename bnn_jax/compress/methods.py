"""The compression methods: block-by-block PTQ (RTN, GPTQ, GPTQ-PB), PB-LLM QAT, DB-LLM."""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from bnn_jax.nn import QuantLinear
from bnn_jax.quant.pbllm import asym_fake_quant, gptq_pb

METHODS = ("rtn", "gptq", "pbllm_gptq", "pbllm_qat", "dbllm")
PTQ = ("rtn", "gptq", "pbllm_gptq")


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown compression method {method!r}; valid methods: "
                         f"{list(METHODS)}")


def quantizer_spec(method: str, *, bits: int = 2, salient: float = 0.1) -> dict:
    """The kernel quantizer a method leaves on every block linear."""
    check_method(method)
    if method in ("rtn", "gptq"):
        if not 2 <= bits <= 8:
            raise ValueError(f"--bits must be in [2, 8] for {method}, got {bits}")
        return dict(name="int_weight", bits=bits)
    if not 0 <= salient <= 1:
        raise ValueError(f"--salient must be a fraction in [0, 1], got {salient}")
    if method == "pbllm_gptq":
        return dict(name="pbllm_ptq_weight", salient_fraction=salient)
    if method == "pbllm_qat":
        return dict(name="pbllm_weight", salient_fraction=salient)
    return dict(name="dbllm_fdb")


def requantized(fp_model: nnx.Module, make: Callable[..., nnx.Module], spec: Any) -> nnx.Module:
    """``make(kernel_quantizer=spec)`` with the float model's weights and the quantizer's
    learned arrays initialized from them."""
    q = make(kernel_quantizer=spec)
    src = {tuple(p): v for p, v in nnx.to_flat_state(nnx.state(fp_model, nnx.Param))}
    for path, var in nnx.to_flat_state(nnx.state(q, nnx.Param)):
        if tuple(path) in src:
            var.set_value(src[tuple(path)].get_value())
    for _, node in nnx.iter_graph(q):
        if isinstance(node, QuantLinear) and node.kernel_quantizer is not None \
                and node.kernel_quantizer.learned:
            node._create_learned("kernel", node.kernel_quantizer, node.latent_kernel())
    return q


def linears(module: nnx.Module) -> dict[str, QuantLinear]:
    """The quantized linears under ``module`` by path (``self_attn/q_proj``)."""
    return {"/".join(map(str, p)): n for p, n in nnx.iter_graph(module)
            if isinstance(n, QuantLinear)}


@contextlib.contextmanager
def recording(store: dict):
    """Record every :class:`QuantLinear` input (eager calls only) as ``store[id(layer)]``."""
    original = QuantLinear.__call__

    def call(self, x, **kw):
        store[id(self)] = np.asarray(x)
        return original(self, x, **kw)

    QuantLinear.__call__ = call
    try:
        yield
    finally:
        QuantLinear.__call__ = original


def relative_error(x: np.ndarray, w: np.ndarray, w_hat: np.ndarray) -> float:
    """``‖X(Ŵ − W)‖² / ‖XW‖²`` over the calibration tokens (a layer's reconstruction error)."""
    x2 = x.reshape(-1, x.shape[-1]).astype(np.float64)
    return float(np.sum((x2 @ (w_hat - w)) ** 2) / max(np.sum((x2 @ w) ** 2), 1e-30))


def _ptq_linear(layer: QuantLinear, x: np.ndarray, method: str, opts: dict) -> dict:
    w = np.asarray(layer.kernel[...], np.float64)
    common = dict(blocksize=opts["blocksize"], percdamp=opts["percdamp"])
    if method in ("rtn", "gptq"):
        # Every weight on the b-bit grid: GPTQ-PB with salient fraction 1 is plain GPTQ.
        w_hat, _, loss = gptq_pb(w, x, salient_fraction=1.0, high_bits=opts["bits"],
                                 use_gptq=method == "gptq", **common)
    else:
        w_hat, mask, loss = gptq_pb(w, x, salient_fraction=opts["salient"],
                                    saliency=opts["saliency"], **common)
        # The binarizer statistics gptq_pb used ("code": over the whole row, salient entries
        # as zeros), from the kernel with dead input features zeroed, as gptq_pb does.
        dead = np.all(x.reshape(-1, x.shape[-1]) == 0, axis=0)
        wz = np.where(dead[:, None], 0.0, w) * ~mask
        mu = wz.mean(axis=0, keepdims=True)
        alpha = np.abs(wz - mu).mean(axis=0, keepdims=True)
        layer.kernel_salient_mask.set_value(jnp.asarray(mask, layer.kernel.dtype))
        layer.kernel_alpha.set_value(jnp.asarray(alpha, layer.kernel.dtype))
        layer.kernel_mu.set_value(jnp.asarray(mu, layer.kernel.dtype))
    layer.kernel.set_value(jnp.asarray(w_hat, layer.kernel.dtype))
    applied = np.asarray(layer.quantized_kernel(), np.float64)
    return {"gptq_loss": loss, "relative_error": relative_error(x, w, applied),
            # the stored grid reproduces the compressed kernel (0 up to rounding)
            "grid_mismatch": float(np.max(np.abs(applied - w_hat)))}


def sequential_ptq(q: nnx.Module, calib: np.ndarray, method: str, opts: dict,
                   log: Callable[[str], None] = print) -> list[dict]:
    """Compress ``q``'s blocks in order (PB-LLM ``run.py``'s ``quant_sequential``)."""
    ids = jnp.asarray(calib)
    b, t = ids.shape
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    mask = jnp.tril(jnp.ones((t, t), bool))[None]
    x = q._embed(ids, positions)
    report = []
    for i, block in enumerate(q.layers):
        lins = linears(block)
        saved = {n: lin.kernel_quantizer for n, lin in lins.items()}
        for lin in lins.values():
            lin.kernel_quantizer = None  # the float block collects its inputs
        store: dict = {}
        try:
            with recording(store):
                block(x, positions, mask)
        finally:
            for n, lin in lins.items():
                lin.kernel_quantizer = saved[n]
        for n, lin in lins.items():
            row = {"layer": f"layers/{i}/{n}", **_ptq_linear(lin, store[id(lin)], method, opts)}
            log(f"  {row['layer']}: relative error {row['relative_error']:.4g}")
            report.append(row)
        x, _ = block(x, positions, mask)  # the compressed block feeds the next one
    return report


def _finetune(model: nnx.Module, wrt, batches: np.ndarray, loss_fn, *, steps: int, lr: float,
              batch_size: int, seed: int, extra: np.ndarray | None = None) -> list[float]:
    """Adam with a cosine-decayed rate on the ``wrt`` parameters over random batches."""
    graph, params, rest = nnx.split(model, wrt, ...)
    tx = optax.adam(optax.cosine_decay_schedule(lr, max(steps, 1)))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, rest, batch, aux):
        def loss(p):
            return loss_fn(nnx.merge(graph, p, rest)(batch[:, :-1]), batch, aux)

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(steps):
        idx = rng.choice(len(batches), min(batch_size, len(batches)), replace=False)
        aux = None if extra is None else jnp.asarray(extra[idx])
        params, opt_state, value = step(params, opt_state, rest, jnp.asarray(batches[idx]), aux)
        losses.append(float(value))
    nnx.update(model, params)
    return losses


def _lm_loss(logits, batch, _):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), batch[:, 1:]))


def pbllm_qat(q: nnx.Module, calib: np.ndarray, opts: dict) -> list[float]:
    """PB-LLM QAT: salient entries pre-quantized to 8 bits once, masks frozen, the latent
    weights trained with the LM loss (reference ``qat/run_qat.py``: lr 1e-4, cosine)."""
    for lin in linears(q).values():
        lin.kernel.set_value(asym_fake_quant(lin.kernel[...], channel_axis=-1))
    trainable = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("kernel_salient_mask")))
    return _finetune(q, trainable, calib, _lm_loss, steps=opts["steps"], lr=opts["lr"],
                     batch_size=opts["batch_size"], seed=opts["seed"])


def sample_from(model: nnx.Module, prompts: np.ndarray, length: int, seed: int) -> np.ndarray:
    """Sequences of ``length`` tokens the model samples (temperature 1) after ``prompts``."""
    from bnn_jax.generate import generate

    out = generate(model, prompts, max_new_tokens=length - prompts.shape[1], strategy="sample",
                   rng=jax.random.key(seed))
    return np.concatenate([prompts, np.asarray(out["tokens"])], axis=1).astype(np.int32)


def dbllm(q: nnx.Module, fp: nnx.Module, calib: np.ndarray, opts: dict) -> list[float]:
    """DB-LLM: learn FDB's per-channel scales α₁, α₂ by Deviation-Aware Distillation from the
    float model, on sequences the float model samples after the calibration windows' first
    tokens."""
    from bnn_jax.train.losses import dad_loss

    data = sample_from(fp, calib[:, :1], calib.shape[1], opts["seed"])
    teacher = np.asarray(jax.jit(lambda ids: nnx.merge(*nnx.split(fp))(ids))(
        jnp.asarray(data[:, :-1])))

    def loss(logits, batch, teacher_logits):
        return dad_loss(logits.astype(jnp.float32), teacher_logits, beta=opts["dad_beta"])

    scales = nnx.All(nnx.Param, nnx.Any(nnx.PathContains("kernel_alpha1"),
                                        nnx.PathContains("kernel_alpha2")))
    return _finetune(q, scales, data, loss, steps=opts["steps"], lr=opts["lr"],
                     batch_size=opts["batch_size"], seed=opts["seed"], extra=teacher)


DEFAULTS = dict(bits=2, salient=0.1, saliency="magnitude", blocksize=128, percdamp=0.01,
                steps=100, lr=None, batch_size=4, seed=0, dad_beta=1.0)


def compress(fp_model: nnx.Module, make: Callable[..., nnx.Module], calib: np.ndarray, *,
             method: str, log: Callable[[str], None] = print, **opts) -> tuple[nnx.Module, dict]:
    """``(compressed model, report)`` of ``fp_model`` by ``method`` on ``calib [n, seq]``.

    ``make(kernel_quantizer=spec)`` builds a model of the same shape (e.g.
    ``functools.partial(hub.load, DIR)``). The report holds the quantizer spec, per-linear
    ``relative_error`` ``‖X(Ŵ − W)‖²/‖XW‖²`` on the layer's calibration inputs (PTQ: the
    inputs of the block-by-block pass; QAT/DB-LLM: the float model's inputs) and training
    losses where the method trains.
    """
    check_method(method)
    unknown = sorted(set(opts) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown compression option(s) {unknown}; valid: {sorted(DEFAULTS)}")
    o = {**DEFAULTS, **opts}
    if o["lr"] is None:
        o["lr"] = 1e-4 if method == "pbllm_qat" else 1e-3
    spec = quantizer_spec(method, bits=o["bits"], salient=o["salient"])
    calib = np.asarray(calib, np.int32)
    if calib.ndim != 2:
        raise ValueError(f"calibration ids must be [samples, seq], got shape {calib.shape}")
    q = requantized(fp_model, make, spec)
    report: dict[str, Any] = {"method": method, "quantizer": spec,
                              "options": {k: o[k] for k in sorted(o)},
                              "calibration_shape": list(calib.shape)}
    if method in PTQ:
        report["layers"] = sequential_ptq(q, calib, method, o, log)
        return q, report
    report["train_loss"] = (pbllm_qat(q, calib, o) if method == "pbllm_qat"
                            else dbllm(q, fp_model, calib, o))
    report["layers"] = layer_errors(fp_model, q, calib)
    for row in report["layers"]:
        log(f"  {row['layer']}: relative error {row['relative_error']:.4g}")
    return q, report


def layer_errors(fp: nnx.Module, q: nnx.Module, calib: np.ndarray) -> list[dict]:
    """Per-linear ``relative_error`` of ``q``'s quantized kernels vs ``fp``'s float kernels on
    the inputs the float model gives each linear."""
    store: dict = {}
    with recording(store):
        fp(jnp.asarray(calib))
    fl, ql = linears(fp), linears(q)
    return [{"layer": n, "relative_error": relative_error(
        store[id(fl[n])], np.asarray(fl[n].kernel[...], np.float64),
        np.asarray(ql[n].quantized_kernel(), np.float64))} for n in fl]

"""Memory per device of a BitNet b1.58 3B training step on a mesh, from the compiler.

Compiles (never runs) one AdamW step of ``configs/bitnet.py:size=3b`` (vocab 32000, sequence
2048) on 8 simulated CPU devices for a few fsdp x model meshes, with the parameters, the
optimizer state and the batch given as abstract arrays sharded by
:data:`bnn_jax.models.llama.PARTITION_RULES` (nothing is allocated), and records
``compiled.memory_analysis()`` (bytes per device: arguments, outputs, temporaries) in
``experiments/results/bitnet_memory.json``; the table in ``experiments/bitnet_memory.md`` is
rendered from that file. Usage:

  python experiments/bitnet_memory.py                # compile, write json, render md
  python experiments/bitnet_memory.py --render-only  # re-render the md from the json
  python experiments/bitnet_memory.py --layers 2 --out /tmp/m.json   # a quick look
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's bnn_jax, not an installed one
RESULTS = ROOT / "experiments" / "results" / "bitnet_memory.json"
REPORT = ROOT / "experiments" / "bitnet_memory.md"
MESHES = ({"data": 1, "fsdp": 8, "model": 1}, {"data": 1, "fsdp": 4, "model": 2},
          {"data": 1, "fsdp": 2, "model": 4})
VOCAB, SEQ, BATCH = 32000, 2048, 8
GIB = 2 ** 30


def load_config(arg):
    spec = importlib.util.spec_from_file_location("bitnet", ROOT / "configs" / "bitnet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def measure(mesh_sizes: dict, layers: int | None) -> dict:
    """Compile one sharded training step; the compiler's memory figures per device."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from bnn_jax.models import llama
    from bnn_jax.train import optimizers, sharding

    c = load_config("size=3b")
    fields = {k: v for k, v in c.model.to_dict().items() if k != "name"}
    if layers:
        fields["num_layers"] = layers
    model = nnx.eval_shape(lambda: llama.Model(vocab_size=VOCAB, max_len=SEQ,
                                               rngs=nnx.Rngs(0), **fields))
    graph, params = nnx.split(model, nnx.Param)
    tx, _ = optimizers.build(c.optimizer, params, 10000)
    opt_state = jax.eval_shape(tx.init, params)
    mesh = sharding.make_mesh(mesh_sizes)
    state = (params, opt_state)
    state_sh = sharding.shardings(state, llama.PARTITION_RULES, mesh)
    batch_sh = sharding.batch_sharding(mesh)

    def step(state, ids):
        params, opt_state = state

        def loss(p):
            logits = nnx.merge(graph, p)(ids[:, :-1])
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
                logits.astype(jnp.float32), ids[:, 1:]))

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    ids = jax.ShapeDtypeStruct((BATCH, SEQ + 1), jnp.int32, sharding=batch_sh)
    t0 = time.perf_counter()
    compiled = jax.jit(step, in_shardings=(state_sh, batch_sh),
                       out_shardings=(state_sh, None), donate_argnums=0).lower(
        state, ids).compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    return {"mesh": mesh_sizes, "num_layers": fields["num_layers"], "params": n_params,
            "argument_bytes": int(mem.argument_size_in_bytes),
            "output_bytes": int(mem.output_size_in_bytes),
            "alias_bytes": int(mem.alias_size_in_bytes),
            "temp_bytes": int(mem.temp_size_in_bytes),
            "compile_seconds": round(seconds, 1)}


def table(data: dict) -> str:
    """The markdown table of the json's rows."""
    lines = ["| mesh (data x fsdp x model) | layers | params | arguments / device (GiB) | "
             "temporaries / device (GiB) | outputs not aliased (GiB) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in data["rows"]:
        m = r["mesh"]
        lines.append(f"| {m['data']} x {m['fsdp']} x {m['model']} | {r['num_layers']} | "
                     f"{r['params'] / 1e9:.3f} B | {r['argument_bytes'] / GIB:.2f} | "
                     f"{r['temp_bytes'] / GIB:.2f} | "
                     f"{(r['output_bytes'] - r['alias_bytes']) / GIB:.2f} |")
    return "\n".join(lines)


def render(data: dict) -> str:
    return f"""# BitNet b1.58 3B: memory per device of one training step

Written by `python experiments/bitnet_memory.py` from `experiments/results/bitnet_memory.json`.
One AdamW step of `configs/bitnet.py:size=3b` (vocab {data['vocab']}, global batch
{data['batch']} x {data['seq']} tokens, float32 latent weights and moments, ternary weights and
8-bit activations fake-quantized in the step), compiled but never run for 8 simulated CPU
devices; the parameters and optimizer state are sharded by `llama.PARTITION_RULES`. Figures
are the XLA CPU compiler's `memory_analysis()` per device; a GPU/TPU compiler schedules
differently, so read them as the shape of the split (arguments = params + Adam moments +
batch), not as a GPU budget. The step keeps every layer's activations for the backward pass
(no rematerialization), which is what the temporaries are: at 2048 tokens per device they,
not the weights, bound the model's size per device.

{table(data)}

jax {data['jax']}, {data['platform']}.
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--layers", type=int, default=0, help="override num_layers (a quick look)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    if not args.render_only:
        import jax

        rows = [measure(m, args.layers or None) for m in MESHES]
        data = {"rows": rows, "vocab": VOCAB, "seq": SEQ, "batch": BATCH,
                "jax": jax.__version__, "platform": platform.platform()}
        out.write_text(json.dumps(data, indent=1) + "\n")
    data = json.loads(out.read_text())
    if out == RESULTS:
        REPORT.write_text(render(data))
    print(table(data))


if __name__ == "__main__":
    main()

"""``python -m bnn_jax.analysis --model NAME [--config FILE] --input-shape 224,224,3
--num-classes 1000 [--json]``: a model's cost (larq summary, ACE, BOPs, FLOPs) per example.

The model is built abstractly (``nnx.eval_shape``): no weights are allocated and nothing is run.
``--config`` takes a config file (``path[:arg]``) whose ``model`` section gives the fields;
``--model`` then overrides its name, or names the model alone.
"""

from __future__ import annotations

import argparse
import json
import sys

from flax import nnx

from bnn_jax import models
from bnn_jax.analysis import cost

JSON_KEYS = ("total_params", "trainable_params", "non_trainable_params", "memory_bytes",
             "macs", "binarized_mac_ratio", "ace", "bops", "flops")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"--input-shape must be positive integers separated "
                                         f"by commas (e.g. 224,224,3), got {text!r}")
    return shape


def model_config(name: str | None, config: str | None) -> dict:
    """The model section: from ``config`` (a config file spec) with ``name`` overriding."""
    cfg: dict = {}
    if config:
        from bnn_jax.sweep import load_config_module

        module, arg = load_config_module(config)
        m = module.get_config(arg).model
        cfg = dict(m.to_dict() if hasattr(m, "to_dict") else m)
    if name:
        cfg["name"] = name
    if "name" not in cfg:
        raise ValueError("give --model NAME or a --config whose model section has a name; "
                         f"valid models: {', '.join(models.names())}")
    return cfg


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bnn_jax.analysis", description=__doc__)
    p.add_argument("--model", help=f"model name ({', '.join(models.names())})")
    p.add_argument("--config", help="config file (path[:arg]); its model section is used")
    p.add_argument("--input-shape", type=_shape, required=True, help="H,W,C of one example")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--float-bits", type=float, default=16,
                   help="bits of a float operand in ACE (AQT counts bfloat16: 16)")
    p.add_argument("--json", action="store_true", help="print the totals as JSON")
    a = p.parse_args(argv)
    try:
        cfg = model_config(a.model, a.config)
        models.validate(cfg)
        model = nnx.eval_shape(lambda: models.build(cfg, num_classes=a.num_classes,
                                                    input_shape=a.input_shape,
                                                    rngs=nnx.Rngs(0)))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    c = cost.analyze(model, a.input_shape, float_bits=a.float_bits)
    t = c.totals()
    if a.json:
        print(json.dumps({**{k: t[k] for k in JSON_KEYS}, **t}, indent=2))
    else:
        print(f"# {cfg['name']} at {a.input_shape}, {a.num_classes} classes\n")
        print(cost.format_table(c))
    return 0


if __name__ == "__main__":
    sys.exit(main())

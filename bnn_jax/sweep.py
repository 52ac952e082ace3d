"""Sweeps: ``python -m bnn_jax.sweep --config configs/x.py[:arg] --workdir DIR``.

The config file declares its sweep next to its config: ``get_sweep(arg)`` returns a list of
trials, each a dict of dotted field overrides (``{"optimizer.learning_rate": 1e-3}``). Trials
run one after another, each in ``DIR/<index>_<overrides>`` (a finished trial is not rerun, an
interrupted one resumes from its checkpoint); ``DIR/results.csv`` and ``DIR/results.md`` hold
one row per trial at the end.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import sys
from typing import Any

import ml_collections

RESULT_COLUMNS = ("test_top1", "test_top5", "test_loss", "train_loss", "seconds")


def load_config_module(spec: str):
    """The module of ``path[:arg]`` and the argument string."""
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise ValueError(f"config file {path!r} does not exist")
    mod_spec = importlib.util.spec_from_file_location("bnn_jax_sweep_config", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module, arg or None


def set_dotted(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """``config.a.b = value`` for ``key = "a.b"``; unknown intermediate fields are an error."""
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        if p not in node or node[p] is None:
            raise ValueError(f"sweep override {key!r}: config has no field {p!r} "
                             f"(fields there: {sorted(node.keys())})")
        node = node[p]
    node[leaf] = value


def _short(key: str) -> str:
    # The last field names the value, except "name": "model.input_quantizer.name" reads as
    # "input_quantizer".
    parts = key.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


def trial_name(index: int, overrides: dict[str, Any]) -> str:
    """A readable, filesystem-safe directory name for a trial."""
    parts = [f"{_short(k)}={v}" for k, v in overrides.items()]
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", f"{index:03d}_" + ",".join(parts))[:120]


def run_sweep(config_spec: str, workdir: str, overrides: dict[str, Any] | None = None
              ) -> list[dict[str, Any]]:
    """Run every trial of the config's sweep sequentially; returns the result rows."""
    from bnn_jax.train import run
    from bnn_jax.train.loop import NonFiniteLossError

    module, arg = load_config_module(config_spec)
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"{config_spec.partition(':')[0]} declares no get_sweep(arg)")
    trials = list(module.get_sweep(arg))
    os.makedirs(workdir, exist_ok=True)
    rows = []
    for i, trial in enumerate(trials):
        config = module.get_config(arg)
        for k, v in {**(overrides or {}), **trial}.items():
            set_dotted(config, k, v)
        tdir = os.path.join(workdir, trial_name(i, trial))
        done = os.path.join(tdir, "result.json")
        print(f"=== trial {i + 1}/{len(trials)}: {trial} -> {tdir}", flush=True)
        if os.path.exists(done):
            with open(done, encoding="utf-8") as f:
                result, status = json.load(f), "ok (earlier)"
        else:
            try:
                result, status = run(config, tdir), "ok"
            except NonFiniteLossError as e:  # a diverged trial is a result, not a crash
                result, status = {}, f"diverged: {e}".split(";")[0]
        rows.append({"trial": i, **{k: trial[k] for k in trial}, "status": status,
                     **{c: result.get(c) for c in RESULT_COLUMNS},
                     # the other tasks' final metrics (perplexity, bits per byte, ROUGE, ...)
                     **{k: v for k, v in result.items()
                        if k.startswith("test_") and k not in RESULT_COLUMNS},
                     "workdir": tdir})
    write_tables(rows, workdir)
    return rows


def _cell(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))


def write_tables(rows: list[dict[str, Any]], workdir: str) -> None:
    """``results.csv`` and ``results.md`` with one row per trial."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(os.path.join(workdir, "results.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> int:
    """CLI: --config path[:arg] --workdir DIR [--config.field=value ...] applied to every trial."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    args, rest = parser.parse_known_args(argv)
    overrides = {}
    for item in rest:
        m = re.fullmatch(r"--config\.([\w.]+)=(.*)", item)
        if not m:
            parser.error(f"unrecognized argument {item!r} (expected --config.<field>=<value>)")
        overrides[m.group(1)] = _parse_value(m.group(2))
    from bnn_jax.train.checkpoint import CorruptCheckpoint

    try:
        run_sweep(args.config, args.workdir, overrides)
    except (ValueError, CorruptCheckpoint) as e:
        # Config errors (ConfigError), a busy or foreign trial workdir (WorkdirError), a trial
        # without a good checkpoint left, and a bad sweep declaration.
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _parse_value(text: str) -> Any:
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``python -m bnn_jax.main --config configs/x.py[:arg] --workdir DIR``.

Any config field can be overridden with ``--config.<field>=<value>`` (ml_collections
config_flags). A workdir that holds a checkpoint is resumed.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and summary.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from bnn_jax.train import run
    from bnn_jax.train.loop import NonFiniteLossError

    try:
        run(_CONFIG.value, _WORKDIR.value)
    except (ValueError, NonFiniteLossError) as e:
        # Config mistakes and diverged runs: one clear message, no traceback, exit status 1.
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)

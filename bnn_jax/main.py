"""Command line: ``python -m bnn_jax.main --config configs/x.py[:arg] --workdir DIR``.

Any config field can be overridden with ``--config.<field>=<value>`` (ml_collections
config_flags). A workdir that holds a checkpoint is resumed.
"""

from __future__ import annotations

import os
import sys

# TensorFlow (tfds, TensorBoard) logs its CPU features at start-up; keep warnings and errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and summary.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
    """Train the configured run; config errors and diverged runs exit 1 with one message."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv):
        # orbax logs every save at INFO; keep the console for progress lines.
        logging.set_verbosity(logging.WARNING)
    from bnn_jax.train import run
    from bnn_jax.train.checkpoint import CorruptCheckpoint
    from bnn_jax.train.loop import ConfigError, NonFiniteLossError
    from bnn_jax.train.workdir import WorkdirError

    try:
        run(_CONFIG.value, _WORKDIR.value)
    except (ConfigError, NonFiniteLossError, WorkdirError, CorruptCheckpoint) as e:
        # Config mistakes, a busy or foreign workdir, damaged checkpoints and diverged runs:
        # one clear message, no traceback, exit status 1.
        _fail(str(e))
    except OSError as e:  # the disk: full, read-only, permissions changed during the run
        _fail(f"{e.strerror or e} ({e.filename or 'while writing the run'}); free or fix the "
              "disk, then run the same command again to resume")


def _fail(message: str) -> None:
    sys.stdout.flush()
    print(f"error: {message}", file=sys.stderr, flush=True)
    # Leave without interpreter teardown: orbax's asyncio helpers would otherwise print
    # "Event loop is closed" from their finalizers after the message.
    os._exit(1)


def _check_overrides(argv: list[str]) -> None:
    """Load the config once ourselves: a bad config argument or an unknown ``--config.<field>``
    then reads as one clear line (config_flags raises bare AttributeErrors and tracebacks)."""
    spec = None
    for i, a in enumerate(argv):  # --config=path or --config path
        if a.startswith("--config="):
            spec = a.split("=", 1)[1]
        elif a == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
    fields = [a[len("--config."):].partition("=") for a in argv if a.startswith("--config.")]
    if spec is None:  # absl reports the missing flag
        return
    from bnn_jax.sweep import load_config_module
    from bnn_jax.train.config import check_field_path

    try:
        module, arg = load_config_module(spec)
        config = module.get_config(arg)
        for f, eq, value in fields:
            check_field_path(config, f, value if eq else None)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    _check_overrides(sys.argv[1:])
    app.run(main)

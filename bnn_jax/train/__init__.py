"""Training: the loop, sharding, optimizers (incl. Bop), losses, checkpoints and metrics.

``run(config, workdir)`` is imported lazily so that ``import bnn_jax.train.losses`` stays light
(no orbax, models or data).
"""


def run(config, workdir):
    """Train (or resume) the run described by ``config`` in ``workdir``; see bnn_jax.train.loop."""
    from bnn_jax.train.loop import run as _run

    return _run(config, workdir)

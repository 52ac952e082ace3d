"""Multilayer perceptrons on the digits: a float baseline and a BinaryNet-style binary MLP.

  python -m bnn_jax.main --config configs/digits_mlp.py --workdir /tmp/digits_mlp          # binary
  python -m bnn_jax.main --config configs/digits_mlp.py:float --workdir /tmp/digits_mlp_fp
"""

from bnn_jax.train.config import defaults, parse_arg


def get_config(arg=None):
    """Binary (sign activations and weights, clipped STE) or ``float`` MLP; ``quick`` shrinks it."""
    arg = parse_arg(arg, quick=False, float=False)
    c = defaults()
    c.total_steps = 60 if arg.quick else 1500
    c.log_every = 20 if arg.quick else 250
    c.checkpoint_every = 500
    c.data = dict(name="digits", batch_size=64, eval_batch_size=120, data_dir="")
    binary = None if arg.float else "ste_sign"
    c.model = dict(name="mlp", hidden=(64, 64) if arg.quick else (512, 512),
                   input_quantizer=binary, kernel_quantizer=binary,
                   kernel_constraint=None if arg.float else "weight_clip")
    c.optimizer = dict(name="adam", learning_rate=1e-2 if arg.quick else 1e-3,
                       schedule="warmup_cosine", warmup_steps=c.total_steps // 20)
    return c


def get_sweep(arg=None):
    """Width of the hidden layers."""
    return [{"model.hidden": (w, w)} for w in (128, 512)]

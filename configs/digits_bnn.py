"""The main job: a small binary CNN on scikit-learn's handwritten digits (offline, CPU, minutes).

Binary weights and activations inside (Bi-Real blocks of ``bnn_jax.models.digits_cnn``),
full-precision stem and head. ``estimator`` picks the activation gradient: ``ste_sign`` (clipped
STE, Hubara et al. 2016) or ``approx_sign`` (Bi-Real Net). Usage:

  python -m bnn_jax.main --config configs/digits_bnn.py --workdir /tmp/digits_bnn
  python -m bnn_jax.main --config configs/digits_bnn.py:quick,estimator=approx_sign --workdir ...
  python -m bnn_jax.sweep --config configs/digits_bnn.py:quick --workdir /tmp/digits_sweep
"""

from bnn_jax.train.config import defaults, parse_arg


def get_config(arg=None):
    """The digits BNN config; arguments: quick, estimator, float (no quantizers), steps."""
    arg = parse_arg(arg, quick=False, estimator="ste_sign", float=False, steps=0)
    c = defaults()
    c.seed = 0
    c.total_steps = arg.steps or (60 if arg.quick else 1500)
    c.log_every = 20 if arg.quick else 100
    c.eval_every = 0 if arg.quick else 500
    c.checkpoint_every = 500
    # normalize=False keeps [0, 1] pixels (a FID classifier for diffusion runs on digits).
    c.data = dict(name="digits", batch_size=64, eval_batch_size=120, data_dir="", normalize=True)
    binary = None if arg.float else dict(name=arg.estimator)
    c.model = dict(name="digits_cnn", width=16 if arg.quick else 64, depth=2 if arg.quick else 3,
                   pool_after=(0,), input_quantizer=binary,
                   kernel_quantizer=None if arg.float else dict(name="ste_sign"),
                   # Latent weights stay in [-1, 1] where the clipped STE passes gradients.
                   kernel_constraint=None if arg.float else dict(name="weight_clip"))
    c.optimizer = dict(name="adam", learning_rate=3e-2 if arg.quick else 3e-3,
                       schedule="warmup_cosine",
                       warmup_steps=c.total_steps // 20, end_factor=0.0, grad_clip_norm=5.0,
                       # No decay anywhere by default; the group shows per-parameter settings.
                       weight_decay=0.0, groups=[(r"(bn|norms)/.*", dict(weight_decay=0.0))])
    return c


def get_sweep(arg=None):
    """Activation estimator (x learning rate at full size); each trial gets its own workdir."""
    quick = parse_arg(arg, quick=False, estimator="ste_sign", float=False, steps=0).quick
    estimators = [{"model.input_quantizer.name": e} for e in ("ste_sign", "approx_sign")]
    if quick:
        return estimators
    return [{"optimizer.learning_rate": lr, **e} for lr in (1e-3, 3e-3) for e in estimators]

"""Bi-Real Net ResNet-18/34 (Liu et al., ECCV 2018) with the two-step Adam recipe of the
ReActNet code base (github.com/liuzechun/ReActNet ``resnet/``): step 1 binary activations and
float weights, step 2 both binary from step 1's run; Adam lr 5e-4, linear decay, weight decay
5e-6 then 0, batch 256, 256 epochs each. ``model=bireal_resnet18|bireal_resnet34``,
``stage=1|2``, ``step1=DIR``.
"""

import math

from bnn_jax.train.config import defaults, parse_arg


def get_config(arg=None):
    """Arguments: model, stage (1 or 2), step1 (run dir, stage 2), quick."""
    arg = parse_arg(arg, model="bireal_resnet18", stage=1, step1="runs/bireal_step1",
                    quick=False)
    if arg.model not in ("bireal_resnet18", "bireal_resnet34") or arg.stage not in (1, 2):
        raise ValueError(f"model must be bireal_resnet18 or bireal_resnet34 and stage 1 or 2, "
                         f"got {arg.model!r}, {arg.stage}")
    c = defaults()
    c.model = dict(name=arg.model, kernel_quantizer=None if arg.stage == 1 else "bireal_weight")
    if arg.quick:
        c.model["filters"] = (8, 16, 32, 64)
        c.data = dict(name="digits", batch_size=8, eval_batch_size=8, data_dir="")
        c.total_steps = 2
    else:
        c.data = dict(name="imagenet2012", batch_size=256, eval_batch_size=500, data_dir="")
        c.total_steps = 256 * math.ceil(1_281_167 / 256)
    c.log_every = 1 if arg.quick else 100
    c.optimizer = dict(name="adam", learning_rate=5e-4, schedule="linear",
                       weight_decay=5e-6 if arg.stage == 1 else 0.0)
    if arg.stage == 2:
        c.init_from = arg.step1
    return c

"""ReActNet-A (Liu et al., ECCV 2020; github.com/liuzechun/ReActNet): two-step training with
distributional distillation from a float ResNet-34 teacher (the code's ``KD_loss``).

Step 1: binary activations, float weights; step 2: both binary, initialised from step 1's run.
Adam lr 5e-4 with linear decay to 0, weight decay 5e-6 in step 1 and 0 in step 2, batch 256,
256 epochs each. ``stage=1|2``; ``teacher=DIR`` is the trained teacher's run (see
``configs/teachers.py``), ``step1=DIR`` step 1's run (step 2 starts from it).

  python -m bnn_jax.main --config configs/reactnet.py:stage=1,teacher=runs/r34 --workdir runs/ra1
  python -m bnn_jax.main --config configs/reactnet.py:stage=2,teacher=runs/r34,step1=runs/ra1 ...
"""

import math

from bnn_jax.train.config import defaults, parse_arg


def get_config(arg=None):
    """Arguments: stage (1 or 2), teacher (run dir), step1 (run dir, stage 2), quick."""
    arg = parse_arg(arg, stage=1, teacher="runs/resnet34_float", step1="runs/reactnet_step1",
                    quick=False)
    if arg.stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {arg.stage}")
    c = defaults()
    c.model = dict(name="reactnet_a",
                   kernel_quantizer=None if arg.stage == 1 else "bireal_weight")
    teacher = dict(name="resnet_imagenet", depth=34, style="float")
    if arg.quick:
        c.model["widths"] = (8, 16, 32)
        teacher = dict(name="resnet_cifar", arch="resnet20", width=4)
        c.data = dict(name="digits", batch_size=8, eval_batch_size=8, data_dir="")
        c.total_steps = 2
    else:
        c.data = dict(name="imagenet2012", batch_size=256, eval_batch_size=500, data_dir="")
        c.total_steps = 256 * math.ceil(1_281_167 / 256)
    c.log_every = 1 if arg.quick else 100
    c.optimizer = dict(name="adam", learning_rate=5e-4, schedule="linear",
                       weight_decay=5e-6 if arg.stage == 1 else 0.0)
    c.kd = dict(enabled=True, teacher_model=teacher, teacher_workdir=arg.teacher,
                kind="distributional", weight=1.0, temperature=1.0)
    if arg.stage == 2:
        c.init_from = arg.step1
    return c

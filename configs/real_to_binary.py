"""Real-to-Binary Net (Martinez et al., ICLR 2020): multi-stage distillation on ImageNet.
Stage 1: binary activations, float weights, distilled from a float teacher (its logits,
distributional KD); stage 2: binary weights too, initialised from stage 1 and distilled from
stage 1's run. Adam lr 1e-3, cosine, batch 256, 75 epochs per stage. The paper's attention
matching between intermediate features is not in the training loop's losses and is left out.
"""

import math

from bnn_jax.train.config import defaults, parse_arg


def get_config(arg=None):
    """Arguments: stage (1 or 2), teacher (run dir), stage1 (run dir), quick."""
    arg = parse_arg(arg, stage=1, teacher="runs/resnet18_float", stage1="runs/r2b_stage1",
                    quick=False)
    if arg.stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {arg.stage}")
    c = defaults()
    c.model = dict(name="real_to_binary_net",
                   kernel_quantizer=None if arg.stage == 1 else "ste_sign",
                   kernel_constraint=None if arg.stage == 1 else "weight_clip")
    teacher = dict(name="resnet18") if arg.stage == 1 else dict(c.model, kernel_quantizer=None,
                                                                kernel_constraint=None)
    workdir = arg.teacher if arg.stage == 1 else arg.stage1
    if arg.quick:
        c.model["filters"] = 8
        teacher = dict(name="resnet_cifar", arch="resnet20", width=4)
        c.data = dict(name="digits", batch_size=8, eval_batch_size=8, data_dir="")
        c.total_steps = 2
    else:
        c.data = dict(name="imagenet2012", batch_size=256, eval_batch_size=500, data_dir="")
        c.total_steps = 75 * math.ceil(1_281_167 / 256)
    c.log_every = 1 if arg.quick else 100
    c.optimizer = dict(name="adam", learning_rate=1e-3, schedule="cosine", weight_decay=0.0)
    c.kd = dict(enabled=True, teacher_model=teacher, teacher_workdir=workdir,
                kind="distributional", weight=1.0, temperature=1.0)
    if arg.stage == 2:
        c.init_from = arg.stage1
    return c

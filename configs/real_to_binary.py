"""Real-to-Binary Net (Martinez et al., ICLR 2020): multi-stage distillation on ImageNet, as
larq-zoo's ``training/multi_stage_experiments.py`` (``TrainR2B``) runs it after a float
ResNet-18 (``configs/teachers.py:model=resnet18``):

* stage 1 (``TrainR2BBFP``): the Real-to-Binary structure in float, taught by the ResNet-18;
* stage 2 (``TrainR2BBAN``): binary activations, float weights, taught by stage 1;
* stage 3 (``TrainR2BBNNAlternative``): binary weights too, taught by stage 2 and initialised
  from it.

Losses: classification 1, output matching 3 (stage 3: 0.8; the cross-entropy to the teacher's
softmax at temperature 1) and, in stages 1 and 2, attention matching 30 on the outputs of blocks
2..9 (``attention_matching_volume_names``; :func:`bnn_jax.train.distill.attention_matching_loss`).
Adam, 75 epochs at batch 256; stages 1-2 lr 1e-3 x 0.3 at epochs 40, 60, 70
(``R2BStepSchedule``), stage 3 lr 2e-4 with 10 warm-up epochs then cosine. Departures: the
5-epoch warm-up of ``R2BStepSchedule`` is left out; the quick variant (digits, whose 8x8 images
leave the teacher and student blocks different sizes) drops the attention term.
"""

import math

from bnn_jax.train.config import defaults, parse_arg

QUANT = {1: dict(input_quantizer=None, kernel_quantizer=None, kernel_constraint=None),
         2: dict(input_quantizer="ste_sign", kernel_quantizer=None, kernel_constraint=None),
         3: dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                 kernel_constraint="weight_clip")}


def get_config(arg=None):
    """Arguments: stage (1, 2 or 3), teacher (the stage's teacher run dir), stage2 (run dir
    stage 3 starts from), quick."""
    arg = parse_arg(arg, stage=1, teacher="runs/resnet18_float", stage2="runs/r2b_stage2",
                    quick=False)
    if arg.stage not in QUANT:
        raise ValueError(f"stage must be one of {sorted(QUANT)}, got {arg.stage}")
    c = defaults()
    c.model = dict(name="real_to_binary_net", **QUANT[arg.stage])
    teacher = (dict(name="resnet18") if arg.stage == 1
               else dict(c.model, **QUANT[arg.stage - 1]))
    batch = 256
    epoch = math.ceil(1_281_167 / batch)
    if arg.quick:
        c.model["filters"] = 8
        teacher = dict(name="resnet_cifar", arch="resnet20", width=4)
        c.data = dict(name="digits", batch_size=8, eval_batch_size=8, data_dir="")
        c.total_steps, epoch = 2, 0
    else:
        c.data = dict(name="imagenet2012", batch_size=batch, eval_batch_size=500, data_dir="")
        c.total_steps = 75 * epoch
    c.log_every = 1 if arg.quick else 100
    if arg.stage < 3:
        c.optimizer = dict(name="adam", learning_rate=1e-3, schedule="step",
                           boundaries=[40 / 75, 60 / 75, 70 / 75], decay_factor=0.3,
                           weight_decay=0.0)
    else:
        c.optimizer = dict(name="adam", learning_rate=2e-4, schedule="warmup_cosine",
                           warmup_steps=10 * epoch, weight_decay=0.0)
    terms = [dict(name="distribution", weight=3.0 if arg.stage < 3 else 0.8)]
    if arg.stage < 3 and not arg.quick:
        terms.append(dict(name="attention", weight=30.0, student="block_out/.*"))
    c.kd = dict(enabled=True, teacher_model=teacher, teacher_workdir=arg.teacher,
                terms=terms, task_weight=1.0)
    if arg.stage == 3:
        c.init_from = arg.stage2
    return c

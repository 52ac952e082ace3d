"""BiPer (Vargas et al., CVPR 2024; github.com/edmav4/BiPer): two stages on CIFAR-10 ResNet-18.
Stage 1: binary activations, real sine weights ``sin(20 W)``, SGD lr 0.021, weight decay 0.0016,
600 epochs; stage 2: ``sign(sin(20 W))`` from stage 1's run, lr 0.0037, weight decay 0.00016, 300
epochs; cosine with 5 warm-up epochs, batch 256 (``cifar10/run_stg1.sh``, ``run_stg2.sh``).
The CIFAR tau regularizer ``sum_layers tau mean(0.5 - 0.5 cos(2 omega0 W))`` over the binarized
convs (``cifar10/main.py`` l. 281-287) is added to the loss with tau 0.037 (stage 1) and 0.0468
(stage 2): the scripts' ``--tau`` sets tau_min = tau_max, so ``cpt_tau`` is that constant.
"""

import math

from bnn_jax.train.config import defaults, parse_arg


def get_config(arg=None):
    """Arguments: stage (1 or 2), stage1 (run dir, stage 2), quick."""
    arg = parse_arg(arg, stage=1, stage1="runs/biper_stage1", quick=False)
    if arg.stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {arg.stage}")
    c = defaults()
    weight = "biper_weight_stage1" if arg.stage == 1 else "biper_weight"
    tau = 0.037 if arg.stage == 1 else 0.0468
    c.model = dict(name="resnet18_cifar", input_quantizer=dict(name="biper_act"),
                   kernel_quantizer=dict(name=weight, omega0=20.0),
                   weight_regularizer=dict(name="biper", tau=tau))
    c.task = dict(name="classification", model_regularizer=True)
    epoch = math.ceil(50_000 / 256)
    if arg.quick:
        c.model = dict(c.model, name="resnet20", width=4)
        c.data = dict(name="digits", batch_size=8, eval_batch_size=8, data_dir="")
        c.total_steps, epoch = 2, 0
    else:
        c.data = dict(name="cifar10", batch_size=256, eval_batch_size=500, data_dir="")
        c.total_steps = (600 if arg.stage == 1 else 300) * epoch
    c.log_every = 1 if arg.quick else 100
    c.optimizer = dict(name="momentum", momentum=0.9, schedule="warmup_cosine",
                       warmup_steps=5 * epoch,
                       learning_rate=0.021 if arg.stage == 1 else 0.0037,
                       weight_decay=0.0016 if arg.stage == 1 else 0.00016)
    if arg.stage == 2:
        c.init_from = arg.stage1
    return c

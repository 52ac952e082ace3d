"""QuickNet / QuickNetSmall / QuickNetLarge (larq-zoo ``training/sota_experiments.py``): Adam
(lr 1e-2) for the binary kernels and SGD momentum 0.9 (lr 0.1) for everything else, both with 5
warm-up epochs then cosine decay, batch 2048, 600 epochs on ImageNet; weight clip 1.25 on the
binary kernels (the models' kernel constraint). larq-zoo trains QuickNet with distillation
stages too; this is the single-stage recipe of its TrainQuickNet task.
"""

import math

from bnn_jax.train.config import defaults, parse_arg

MODELS = ("quicknet", "quicknet_small", "quicknet_large")


def get_config(arg=None):
    """Arguments: model (quicknet, quicknet_small, quicknet_large), quick."""
    arg = parse_arg(arg, model="quicknet", quick=False)
    if arg.model not in MODELS:
        raise ValueError(f"model must be one of {list(MODELS)}, got {arg.model!r}")
    c = defaults()
    c.model = dict(name=arg.model)
    if arg.quick:
        c.model.update(section_blocks=(1, 1), section_filters=(8, 16))
        c.data = dict(name="digits", batch_size=8, eval_batch_size=8, data_dir="")
        c.total_steps, epoch = 2, 1
    else:
        c.data = dict(name="imagenet2012", batch_size=2048, eval_batch_size=500, data_dir="")
        epoch = math.ceil(1_281_167 / 2048)
        c.total_steps = 600 * epoch
    c.log_every = 1 if arg.quick else 100
    c.optimizer = dict(name="momentum", momentum=0.9, learning_rate=0.1,
                       schedule="warmup_cosine", warmup_steps=5 * epoch, weight_decay=0.0,
                       # the binary kernels: the residual blocks' convs (transitions say
                       # "pointwise", the stem "stem_*")
                       groups=[(r"layers/\d+/conv/kernel",
                                dict(name="adam", learning_rate=1e-2))])
    return c

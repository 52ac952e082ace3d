"""PokeBNN 0.5x / 1.0x / 2.0x (google/aqt ``configs/pokebnn/pokebnn_config.py``): distillation
from the 8-bit ResNet-50 teacher (``configs/teachers.py:model=resnet50_int8``), Adam b1 0.9,
b2 0.99, weight decay 5e-5, 800 epochs, the learning rate falling linearly to 0.

Departures: the reference's base learning rate 2e-5 is per its AQT batch convention (scaled
with the batch there; here it is used as given at batch 1024); its piecewise schedule (knee at
epoch 750, knee and end learning rate 0) is the linear decay to 0 reaching it at 800; its
start steps for weight quantization (50) and activation bounds (7500) are not modelled.
"""

import math

from bnn_jax.train.config import defaults, parse_arg

MODELS = ("pokebnn_0.5x", "pokebnn_1.0x", "pokebnn_2.0x")


def get_config(arg=None):
    """Arguments: model, teacher (the 8-bit ResNet-50's run dir), quick."""
    arg = parse_arg(arg, model="pokebnn_1.0x", teacher="runs/resnet50_int8", quick=False)
    if arg.model not in MODELS:
        raise ValueError(f"model must be one of {list(MODELS)}, got {arg.model!r}")
    c = defaults()
    c.model = dict(name=arg.model)
    teacher = dict(name="resnet50_int8")
    if arg.quick:
        c.model = dict(name="pokebnn", filter_multiplier=0.125)
        teacher = dict(name="resnet_cifar", arch="resnet20", width=4)
        c.data = dict(name="digits", batch_size=8, eval_batch_size=8, data_dir="")
        c.total_steps = 2
    else:
        c.data = dict(name="imagenet2012", batch_size=1024, eval_batch_size=500, data_dir="")
        c.total_steps = 800 * math.ceil(1_281_167 / 1024)
    c.log_every = 1 if arg.quick else 100
    c.optimizer = dict(name="adam", learning_rate=2e-5, b1=0.9, b2=0.99, schedule="linear",
                       weight_decay=5e-5)
    c.kd = dict(enabled=True, teacher_model=teacher, teacher_workdir=arg.teacher,
                kind="distributional", weight=1.0, temperature=1.0)
    return c

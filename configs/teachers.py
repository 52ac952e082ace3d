"""Float and 8-bit teachers for distillation: ResNet-34 (ReActNet), ResNet-18/50, and the AQT
8-bit ResNet-50 of PokeBNN. SGD momentum 0.9, lr 0.1 (batch 256), cosine, weight decay 1e-4,
90 epochs on ImageNet. ``model=resnet34|resnet18|resnet50|resnet50_int8``; ``quick`` is the
tiny teacher the quick student configs distil from.

  python -m bnn_jax.main --config configs/teachers.py:model=resnet34 --workdir runs/resnet34_float
"""

import math

from bnn_jax.train.config import defaults, parse_arg

MODELS = {"resnet34": dict(name="resnet_imagenet", depth=34, style="float"),
          "resnet18": dict(name="resnet18"), "resnet50": dict(name="resnet50"),
          "resnet50_int8": dict(name="resnet50_int8")}


def get_config(arg=None):
    """Arguments: model, quick (a float CIFAR ResNet-20 of width 4 on digits)."""
    arg = parse_arg(arg, model="resnet34", quick=False)
    if arg.model not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {arg.model!r}")
    c = defaults()
    if arg.quick:
        c.model = dict(name="resnet_cifar", arch="resnet20", width=4)
        c.data = dict(name="digits", batch_size=8, eval_batch_size=8, data_dir="")
        c.total_steps = 2
    else:
        c.model = dict(MODELS[arg.model])
        c.data = dict(name="imagenet2012", batch_size=256, eval_batch_size=500, data_dir="")
        c.total_steps = 90 * math.ceil(1_281_167 / 256)
    c.log_every = 1 if arg.quick else 100
    c.optimizer = dict(name="momentum", momentum=0.9, learning_rate=0.1, schedule="cosine",
                       weight_decay=1e-4)
    return c

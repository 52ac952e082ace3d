"""ReSTE (Wu et al., ICCV 2023; github.com/DravenALG/ReSTE main.py): binary ResNet-20 / Bi-Real
ResNet-20 / ResNet-18 / VGG-Small on CIFAR-10, binary ResNet-18/34 on ImageNet.

ReSTE on weights (per-tensor mean|W| scale) and activations, its ``o`` rising 1 -> 3 with the
code's cosine schedule; SGD momentum 0.9, lr 0.1, weight decay 1e-4, cosine to 0. CIFAR-10: 1000
epochs at batch 256 (ResNet-18: 2000 at 96); ImageNet: 250 epochs at batch 750. Usage:

  python -m bnn_jax.main --config configs/reste.py:model=resnet20 --workdir runs/reste_r20
  python -m bnn_jax.main --config configs/reste.py:model=resnet18,quick --workdir /tmp/q
"""

import math

from bnn_jax.train.config import defaults, parse_arg

CIFAR = ("resnet20", "resnet20_bireal", "resnet18_cifar", "vgg_small")
IMAGENET = {"resnet18": 18, "resnet34": 34}
SIZES = {"cifar10": 50_000, "imagenet2012": 1_281_167}


def get_config(arg=None):
    """Arguments: model (resnet20, resnet20_bireal, resnet18_cifar, vgg_small, resnet18,
    resnet34), quick (digits, 2 steps), epochs (0: the paper's)."""
    arg = parse_arg(arg, model="resnet20", quick=False, epochs=0)
    if arg.model not in (*CIFAR, *IMAGENET):
        raise ValueError(f"model must be one of {[*CIFAR, *IMAGENET]}, got {arg.model!r}")
    c = defaults()
    binary = dict(input_quantizer=dict(name="reste"), kernel_quantizer=dict(name="reste_weight"))
    if arg.model in CIFAR:
        dataset, batch = "cifar10", 96 if arg.model == "resnet18_cifar" else 256
        epochs = arg.epochs or (2000 if arg.model == "resnet18_cifar" else 1000)
        c.model = dict(name=arg.model, **binary)
    else:
        dataset, batch, epochs = "imagenet2012", 750, arg.epochs or 250
        c.model = dict(name="resnet_imagenet", depth=IMAGENET[arg.model], **binary)
    if arg.quick:
        c.data = dict(name="digits", batch_size=8, eval_batch_size=8, data_dir="")
        c.total_steps = 2
    else:
        c.data = dict(name=dataset, batch_size=batch, eval_batch_size=500, data_dir="")
        c.total_steps = epochs * math.ceil(SIZES[dataset] / batch)
    c.log_every = 1 if arg.quick else 100
    c.optimizer = dict(name="momentum", momentum=0.9, learning_rate=0.1, schedule="cosine",
                       weight_decay=1e-4)
    o = dict(kind="cosine", start=1.0, end=3.0)
    c.schedules = dict(input=dict(o=o), kernel=dict(o=o))
    return c

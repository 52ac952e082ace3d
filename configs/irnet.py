"""IR-Net (Qin et al., CVPR 2020): EDE on the activations, balanced standardized binary weights,
ResNet-20 on CIFAR-10 or ResNet-18/34 on ImageNet; SGD momentum 0.9, lr 0.1, cosine, weight
decay 1e-4 (CIFAR: 400 epochs at batch 128; ImageNet: 100 epochs at batch 256).

EDE's ``t`` grows from 0.1 to 10 over training (IR-Net: ``t = 0.1 * 10^(2 e/E)``, ``k =
max(1/t, 1)``). The config's schedule kinds cannot express that curve: here ``t`` ramps
linearly 0.1 -> 10 and ``k`` linearly 10 -> 1 (a departure; a fixed ``k = 10`` would let the
gradient grow to ``k t = 100`` by the end).
"""

import math

from bnn_jax.train.config import defaults, parse_arg

MODELS = {"resnet20": "cifar10", "irnet_resnet18": "imagenet2012",
          "irnet_resnet34": "imagenet2012"}


def get_config(arg=None):
    """Arguments: model (resnet20, irnet_resnet18, irnet_resnet34), quick."""
    arg = parse_arg(arg, model="resnet20", quick=False)
    if arg.model not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {arg.model!r}")
    c = defaults()
    c.model = dict(name=arg.model, input_quantizer=dict(name="irnet_ede"),
                   kernel_quantizer=dict(name="irnet_weight"))
    dataset = MODELS[arg.model]
    if arg.quick:
        c.data = dict(name="digits", batch_size=8, eval_batch_size=8, data_dir="")
        c.total_steps = 2
    else:
        batch, epochs = (128, 400) if dataset == "cifar10" else (256, 100)
        size = 50_000 if dataset == "cifar10" else 1_281_167
        c.data = dict(name=dataset, batch_size=batch, eval_batch_size=500, data_dir="")
        c.total_steps = epochs * math.ceil(size / batch)
    c.log_every = 1 if arg.quick else 100
    c.optimizer = dict(name="momentum", momentum=0.9, learning_rate=0.1, schedule="cosine",
                       weight_decay=1e-4)
    ede = dict(t=dict(kind="linear", start=0.1, end=10.0),
               k=dict(kind="linear", start=10.0, end=1.0))
    c.schedules = dict(input=ede, kernel=dict(ede))
    return c

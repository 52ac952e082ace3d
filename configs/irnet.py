"""IR-Net (Qin et al., CVPR 2020): EDE on the activations, balanced standardized binary weights,
ResNet-20 or VGG-Small on CIFAR-10, ResNet-18/34 on ImageNet.

CIFAR-10 as htqin/IR-Net's trainers: SGD momentum 0.9, weight decay 1e-4, cosine to 0, batch
128; ResNet-20 1w1a 400 epochs at lr 0.1 (``ResNet20/1w1a/trainer.py``), VGG-Small 300 epochs
at lr 0.007 (``VGG-Small/main.py``). EDE's (t, k) follow the trainers' ``Log_UP`` exactly: once
per epoch e of E, ``t = 10^(log10 T_min + (log10 T_max - log10 T_min) e/E)``, ``k = 1/t`` while
t < 1, else 1, with T_max = 10 and T_min = 1e-3 (ResNet-20 1w1a, ``trainer.py`` l. 130) or 0.1
(VGG-Small ``main.py`` l. 123, and the paper). The schedule feeds the quantizers the fraction of
training done (``progress``); ``irnet_ede`` / ``irnet_weight`` turn it into (t, k).

ImageNet: the repository ships models and configs but no trainer (no t/k schedule); the paper's
T_min = 0.1, T_max = 10 is used with ``ImageNet/ResNet18/1w1a/config.yaml``'s SGD (momentum 0.9,
Nesterov, weight decay 1e-4, step decay x0.1 at 30/60/90 % of the run, 62,500 iterations).
Departures: its batch (64 per GPU, GPU count not given) is taken as 256 with lr 0.1 and
100 epochs (the paper's "ResNet-18 ... 100 epochs" is not in the config), and its warm-up to
lr 0.8 is left out; the CIFAR cosine is per step (the trainers step it per epoch).
"""

import math

from bnn_jax.train.config import defaults, parse_arg

# model -> (dataset, epochs, batch, lr, T_min)
MODELS = {"resnet20": ("cifar10", 400, 128, 0.1, 1e-3),
          "vgg_small": ("cifar10", 300, 128, 0.007, 0.1),
          "irnet_resnet18": ("imagenet2012", 100, 256, 0.1, 0.1),
          "irnet_resnet34": ("imagenet2012", 100, 256, 0.1, 0.1)}
SIZE = {"cifar10": 50_000, "imagenet2012": 1_281_167}


def get_config(arg=None):
    """Arguments: model (resnet20, vgg_small, irnet_resnet18, irnet_resnet34), quick."""
    arg = parse_arg(arg, model="resnet20", quick=False)
    if arg.model not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {arg.model!r}")
    c = defaults()
    dataset, epochs, batch, lr, t_min = MODELS[arg.model]
    ede = dict(t_min=t_min, t_max=10.0, epochs=epochs)
    c.model = dict(name=arg.model, input_quantizer=dict(name="irnet_ede", **ede),
                   kernel_quantizer=dict(name="irnet_weight", **ede))
    if arg.quick:
        c.data = dict(name="digits", batch_size=8, eval_batch_size=8, data_dir="")
        c.total_steps = 2
    else:
        c.data = dict(name=dataset, batch_size=batch, eval_batch_size=500, data_dir="")
        c.total_steps = epochs * math.ceil(SIZE[dataset] / batch)
    c.log_every = 1 if arg.quick else 100
    if dataset == "cifar10":
        c.optimizer = dict(name="momentum", momentum=0.9, learning_rate=lr, schedule="cosine",
                           weight_decay=1e-4)
    else:
        c.optimizer = dict(name="momentum", momentum=0.9, nesterov=True, learning_rate=lr,
                           schedule="step", boundaries=[0.3, 0.6, 0.9], decay_factor=0.1,
                           weight_decay=1e-4)
    # the fraction of training done, from which the quantizers compute IR-Net's (t, k)
    progress = dict(progress=dict(kind="linear", start=0.0, end=1.0))
    c.schedules = dict(input=progress, kernel=dict(progress))
    return c

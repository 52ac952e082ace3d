"""XNOR-Net and BWN ResNet-18 (Rastegari et al., ECCV 2016) on ImageNet in the binary ResNet
layout of ``bnn_jax.models.resnet_imagenet``: XNOR scaled inputs and weights (``bwn``: float
inputs, scaled binary weights). Adam lr 1e-3, cosine, batch 256, 100 epochs.
"""

import math

from bnn_jax.train.config import defaults, parse_arg


def get_config(arg=None):
    """Arguments: bwn (binary weights only), quick."""
    arg = parse_arg(arg, bwn=False, quick=False)
    c = defaults()
    c.model = dict(name="bwn_resnet18" if arg.bwn else "xnor_resnet18")
    if arg.quick:
        c.data = dict(name="digits", batch_size=8, eval_batch_size=8, data_dir="")
        c.total_steps = 2
    else:
        c.data = dict(name="imagenet2012", batch_size=256, eval_batch_size=500, data_dir="")
        c.total_steps = 100 * math.ceil(1_281_167 / 256)
    c.log_every = 1 if arg.quick else 100
    c.optimizer = dict(name="adam", learning_rate=1e-3, schedule="cosine", weight_decay=0.0)
    return c

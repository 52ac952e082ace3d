"""AQT W4A4 (or W8A8) ResNet-50 (Abdolrashidi et al., CVPR-W 2021): AQT's uniform quantizer on
every conv and the dense (weights per output channel, inputs with a mean-of-max bound); SGD
momentum 0.9, lr 0.1 at batch 256, cosine, weight decay 1e-4, 90 epochs on ImageNet.
Departure: AQT's w4a4 configs keep the first conv and the dense at 8 bits; here every layer
has ``bits``.
"""

import math

from bnn_jax.train.config import defaults, parse_arg


def get_config(arg=None):
    """Arguments: bits (4 or 8), quick."""
    arg = parse_arg(arg, bits=4, quick=False)
    c = defaults()
    q = dict(input_quantizer=dict(name="aqt", bits=arg.bits, bound="mean_of_max"),
             kernel_quantizer=dict(name="aqt", bits=arg.bits, per_channel=True))
    c.model = dict(name="resnet_imagenet", depth=50, style="float", **q)
    if arg.quick:
        c.model["depth"] = 18
        c.data = dict(name="digits", batch_size=8, eval_batch_size=8, data_dir="")
        c.total_steps = 2
    else:
        c.data = dict(name="imagenet2012", batch_size=256, eval_batch_size=500, data_dir="")
        c.total_steps = 90 * math.ceil(1_281_167 / 256)
    c.log_every = 1 if arg.quick else 100
    c.optimizer = dict(name="momentum", momentum=0.9, learning_rate=0.1, schedule="cosine",
                       weight_decay=1e-4)
    return c

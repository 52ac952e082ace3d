"""AQT W4A4 (or W8A8) ResNet-50 (Abdolrashidi et al., CVPR-W 2021; google/aqt
``imagenet/configs/paper/``): AQT's uniform quantizer on every conv and the dense (weights per
output channel, inputs with a mean-of-max bound), the first conv and the dense at 8 bits
(``resnet50_w4_a4_init8_dense8_auto.py``, the paper's 4-bit leaderboard entry; ``first_last=4``
gives ``resnet50_w4_a4_auto.py``'s all-4-bit model). Training as ``configs/base_config.py``:
SGD momentum 0.9, lr 0.1 x batch / 256, weight decay 1e-4, 250 epochs (``paper/README.md``), 5
warm-up epochs then cosine; the input bounds (mean of max) start at step 7500 (before it AQT's
bound -1 leaves inputs unquantized), fed as a fraction of training with the ``progress``
schedule. Departures: AQT's 50 cool-down epochs (lr x (total - step) / cool-down) and its cosine
floor (alpha 0.001) are not modelled; batch 256 (the paper's is not in the configs).
"""

from bnn_jax.train.config import defaults, parse_arg


def aqt(bits, act_start=0.0):
    """AQT's weight (per channel) and input (mean-of-max bound) quantizers at ``bits``."""
    return dict(input_quantizer=dict(name="aqt", bits=bits, bound="mean_of_max",
                                     start=act_start),
                kernel_quantizer=dict(name="aqt", bits=bits, per_channel=True))


def get_config(arg=None):
    """Arguments: bits (4 or 8), first_last (bits of the stem conv and the dense), quick."""
    arg = parse_arg(arg, bits=4, first_last=8, quick=False)
    c = defaults()
    batch = 256
    per_epoch = 1_281_167 // batch  # AQT imagenet/train.py: TRAIN_IMAGES // batch_size
    c.total_steps, warmup = 250 * per_epoch, 5 * per_epoch
    depth = 50
    if arg.quick:
        depth, c.total_steps, warmup = 18, 2, 1
        c.data = dict(name="digits", batch_size=8, eval_batch_size=8, data_dir="")
    else:
        c.data = dict(name="imagenet2012", batch_size=batch, eval_batch_size=500, data_dir="")
    start = min(7500 / c.total_steps, 1.0)
    c.model = dict(name="resnet_imagenet", depth=depth, style="float", **aqt(arg.bits, start),
                   first_last=aqt(arg.first_last, start))
    c.log_every = 1 if arg.quick else 100
    c.optimizer = dict(name="momentum", momentum=0.9, learning_rate=0.1 * batch / 256,
                       schedule="warmup_cosine", warmup_steps=warmup, weight_decay=1e-4)
    progress = dict(progress=dict(kind="linear", start=0.0, end=1.0))
    c.schedules = dict(input=progress, kernel=dict(progress))
    return c

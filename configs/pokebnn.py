"""PokeBNN 0.5x / 1.0x / 2.0x (google/aqt ``configs/pokebnn/pokebnn_config.py`` and
``imagenet/train.py``): distillation from the 8-bit ResNet-50 teacher
(``configs/teachers.py:model=resnet50_int8``), Adam b1 0.9, b2 0.99, weight decay 5e-5, 800
epochs at batch 1024 (steps per epoch = 1,281,167 // 1024, as ``train.py`` l. 346).

* Learning rate: base 2e-5 scaled by batch / 256 (``train.py`` l. 405: 8e-5 at batch 1024), the
  ``piecewise`` scheduler: linear to the knee learning rate 0 at epoch 750, then to the end
  learning rate 0 at epoch 800 (``train.py`` ``create_learning_rate_fn``).
* Quantization start: weights are quantized from epoch 50 (``weight_quant_start_step`` = 50 is
  compared with ``step // steps_per_epoch``, ``train.py`` l. 459), the mean-of-max activation
  bounds of the 8-bit/4-bit layers from step 7500 (``activation_bound_start_step``; AQT's bound
  -1 before it means "not quantized"); the PokeConvs' fixed input bound 3.0 is used from step 0.
  The model fields take them as fractions of training, fed by the ``progress`` schedule.
"""

from bnn_jax.train.config import defaults, parse_arg

MODELS = ("pokebnn_0.5x", "pokebnn_1.0x", "pokebnn_2.0x")
EPOCHS, KNEE_EPOCHS, WEIGHT_START_EPOCH, ACT_START_STEP = 800, 750, 50, 7500


def get_config(arg=None):
    """Arguments: model, teacher (the 8-bit ResNet-50's run dir), quick."""
    arg = parse_arg(arg, model="pokebnn_1.0x", teacher="runs/resnet50_int8", quick=False)
    if arg.model not in MODELS:
        raise ValueError(f"model must be one of {list(MODELS)}, got {arg.model!r}")
    c = defaults()
    batch = 1024
    per_epoch = 1_281_167 // batch
    c.total_steps = EPOCHS * per_epoch
    teacher = dict(name="resnet50_int8")
    if arg.quick:
        c.model = dict(name="pokebnn", filter_multiplier=0.125)
        teacher = dict(name="resnet_cifar", arch="resnet20", width=4)
        c.data = dict(name="digits", batch_size=8, eval_batch_size=8, data_dir="")
        per_epoch, c.total_steps = 1, 2
    else:
        c.model = dict(name=arg.model)
        c.data = dict(name="imagenet2012", batch_size=batch, eval_batch_size=500, data_dir="")
    c.model = dict(c.model, weight_quant_start=WEIGHT_START_EPOCH / EPOCHS,
                   act_bound_start=min(ACT_START_STEP / c.total_steps, 1.0))
    c.log_every = 1 if arg.quick else 100
    c.optimizer = dict(name="adam", learning_rate=2e-5 * batch / 256, b1=0.9, b2=0.99,
                       schedule="piecewise", knee_steps=KNEE_EPOCHS * per_epoch,
                       knee_factor=0.0, end_factor=0.0, weight_decay=5e-5)
    progress = dict(progress=dict(kind="linear", start=0.0, end=1.0))
    c.schedules = dict(input=progress, kernel=dict(progress))
    c.kd = dict(enabled=True, teacher_model=teacher, teacher_workdir=arg.teacher,
                kind="distributional", weight=1.0, temperature=1.0)
    return c

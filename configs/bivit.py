"""BiViT (He et al., ICCV 2023; github.com/ThisisBillhe/BiViT): binary Swin / DeiT with
softmax-aware binarization, learned weight scales and Cross-layer Binarization (CLB).

CLB binarizes the attention and the MLPs in separate stages (:func:`bnn_jax.models.vit.
bivit_fields`), each distilled from the float model and each starting from the previous
stage's weights (``config.init_from``):

* ``stage=1``: the MLPs W1A1 (sign inputs, row-centred ``bivit_weight`` kernels), attention
  full precision, from the pretrained float model (``pretrained=`` a local Hugging Face dir);
* ``stage=2``: the attention binarized too (SAB: binary Q, K, V, {0, 1} attention by the
  row-adaptive ``0.25·max`` threshold), from the stage-1 run (``step1=``).

Stage order (the sources do not give it; methods notes section 7): the MLPs first, because
SAB's threshold acts on softmax distributions computed from the block features, so the
attention is binarized last on the features of the already binary MLPs it has to live with;
the MLPs also hold about two thirds of the weights and get the longer binary training. The
released code has no training scripts: epochs, optimizer and KD below follow DeiT/OFQ's
ImageNet recipe (AdamW 5e-4, weight decay 0.05, cosine, 300 epochs per stage, soft KD from
the float model) and are not the paper's numbers. ``model=swin_small|swin_tiny|deit_small``
(Swin-S is the paper's headline, 75.6 % top-1 [abstract]); ``quick``: a tiny ViT on digits.

  python -m bnn_jax.main --config configs/bivit.py:stage=1,pretrained=hf/swin_s \\
      --workdir runs/bivit_1
  python -m bnn_jax.main \\
      --config configs/bivit.py:stage=2,step1=runs/bivit_1,pretrained=hf/swin_s \\
      --workdir runs/bivit_2
"""

import math

from bnn_jax.models.vit import bivit_fields
from bnn_jax.train.config import defaults, parse_arg

MODELS = ("swin_small", "swin_tiny", "deit_small")
IMAGENET_TRAIN = 1_281_167
QUICK = dict(name="vit", patch_size=4, hidden=32, depth=2, num_heads=2, mlp_dim=64)


def get_config(arg=None):
    """Arguments: stage (1|2), model, pretrained (HF dir), step1 (run dir), quick."""
    arg = parse_arg(arg, stage=1, model="swin_small", pretrained="", step1="runs/bivit_1",
                    quick=False)
    if arg.stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {arg.stage}")
    if arg.model not in MODELS:
        raise ValueError(f"model must be one of {list(MODELS)}, got {arg.model!r}")
    c = defaults()
    fields = bivit_fields(attention=arg.stage == 2, mlp=True)
    batch = 1024
    if arg.quick:
        c.model = dict(QUICK, **fields)
        c.data = dict(name="digits", batch_size=8, eval_batch_size=8, data_dir="")
        c.total_steps = 2
        steps_per_epoch = 1
    else:
        # The float model's local Hugging Face directory (a missing one stops the run with
        # how to place it there).
        arg.pretrained = arg.pretrained or f"hf/{arg.model}"
        c.model = dict(name=arg.model, **fields)
        if arg.stage == 1:
            c.model["pretrained"] = arg.pretrained
        c.data = dict(name="imagenet2012", batch_size=batch, eval_batch_size=500, data_dir="")
        steps_per_epoch = math.ceil(IMAGENET_TRAIN / batch)
        c.total_steps = 300 * steps_per_epoch
        c.kd = dict(enabled=True, teacher_import=arg.pretrained, kind="logit", weight=1.0,
                    temperature=1.0)
        if arg.stage == 2:
            c.init_from = arg.step1
    c.log_every = 1 if arg.quick else 100
    c.optimizer = dict(name="adamw", learning_rate=5e-4, weight_decay=0.05,
                       schedule="warmup_cosine", warmup_steps=5 * steps_per_epoch,
                       end_factor=0.02)
    return c

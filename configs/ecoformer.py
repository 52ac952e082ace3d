"""EcoFormer (Liu, Pan, He, Cai, Zhuang; NeurIPS 2022; github.com/ziplab/EcoFormer) on PVTv2.

The reference's two fine-tunes (``pvt/README.md``, ``pvt/scripts/train_ecoformer.sh``):

* ``stage=msa``: PVTv2 with full softmax attention (``pvt_v2_*_msa``), 100 epochs from a PVTv2
  run (``pvt=DIR``, a run of ``attention="sra"``; its spatial-reduction convs are dropped, as
  the reference's loader does);
* ``stage=ecoformer``: EcoFormer attention in stages 1-3 (``pvt_v2_*_ecoformer``: b = 16 bits,
  m = 25 anchors, top-k 10), 30 epochs from the msa run (``msa=DIR``); the hash functions are
  fitted on the first batch and every k = 300 epochs after it (so once), by the step hook
  ``ecoformer_refresh``.

Both: AdamW (weight decay 0.05, none on vectors), batch 256 (32 x 8 GPUs), lr 5e-5 scaled by
batch/512 as ``main.py`` line 243 does (2.5e-5), 5 warm-up epochs then cosine to min-lr 1e-6,
label smoothing 0.1, ImageNet at 224 through tfds (prepared under ``data.data_dir``; the run
stops before training when it is not there). The reference fine-tunes with the model in eval
mode (``set_training_mode=args.finetune == ""``), so its drop-path 0.1 never acts (the
models here have none).
Not reproduced: the reference's RandAugment, mixup/cutmix and random erasing (the image
pipeline has none), the warm-up from 1e-7 (here from 0) and per-epoch lr steps (here per step).

  python -m bnn_jax.main --config configs/ecoformer.py:stage=msa,pvt=runs/pvt_b0 --workdir runs/m
  python -m bnn_jax.main --config configs/ecoformer.py:stage=ecoformer,msa=runs/m --workdir ...

``quick``: a small PVTv2 on mnist5k (28x28, first patch 3/stride 2, so 196-49-16-4 tokens), a
few steps, from scratch unless ``pvt=``/``msa=`` is given.

For another model (e.g. a small ViT with ``attention="ecoformer"``), this module gives the
recipe's pieces: :data:`ATTENTION` / :data:`QUICK_ATTENTION`, the EcoFormerAttention fields
(``bnn_jax.nn.ecoformer.EcoFormerAttention(num_heads, dim, rngs=..., **ATTENTION)``; with N
tokens per example it needs ``num_anchors <= N`` and ``topk <= N``), and :func:`refresh_hooks`,
the ``config.hooks`` entry of the refit schedule.
"""

import math

from bnn_jax.train.config import defaults, parse_arg

MODELS = ("pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2")
STAGES = ("msa", "ecoformer")
# pvt/configs/pvt_v2/pvt_v2_b*_ecoformer.py: nbits, m, topk (k = 300 is the refit period).
ATTENTION = dict(num_bits=16, num_anchors=25, topk=10)
REFIT_EPOCHS = 300
# Few tokens per example in small inputs: fewer anchors and neighbours, same bits.
QUICK_ATTENTION = dict(num_bits=16, num_anchors=8, topk=3)
QUICK_PVT = dict(embed_dims=(16, 32, 32, 64), num_heads=(1, 2, 2, 4), mlp_ratios=(2, 2, 2, 2),
                 depths=(1, 1, 1, 1), sr_ratios=(4, 2, 1, 1), first_patch=3, first_stride=2)


def refresh_hooks(steps_per_epoch: int, *, every_epochs: int = REFIT_EPOCHS, seed: int = 0,
                  input_key: str = "image") -> list:
    """``config.hooks`` for EcoFormer's refit: before the first step, then every
    ``every_epochs`` epochs (the reference's ``epoch % k == 0``, ``main.py`` 321-326)."""
    return [dict(name="ecoformer_refresh", every=every_epochs * steps_per_epoch, at_start=True,
                 seed=seed, input_key=input_key)]


def get_config(arg=None):
    """Arguments: stage (msa, ecoformer), model (pvt_v2_b0/b1/b2), pvt (run dir, msa stage),
    msa (run dir, ecoformer stage), quick."""
    arg = parse_arg(arg, stage="ecoformer", model="pvt_v2_b0", pvt="", msa="", quick=False)
    if arg.stage not in STAGES:
        raise ValueError(f"stage must be one of {list(STAGES)}, got {arg.stage!r}")
    if arg.model not in MODELS:
        raise ValueError(f"model must be one of {list(MODELS)}, got {arg.model!r}")
    eco = arg.stage == "ecoformer"
    start = arg.msa if eco else arg.pvt
    if not (start or arg.quick):
        raise ValueError(f"stage={arg.stage} fine-tunes an earlier run: give "
                         f"{'msa' if eco else 'pvt'}=DIR (the workdir of the "
                         f"{'msa stage' if eco else 'PVTv2 run'})")
    c = defaults()
    c.model = dict(name=arg.model, attention=arg.stage)
    if arg.quick:
        c.model.update(QUICK_PVT)
        c.data = dict(name="mnist5k", batch_size=32, eval_batch_size=200, data_dir="")
        steps_per_epoch = math.ceil(4000 / 32)
        c.total_steps = 4
    else:
        c.data = dict(name="imagenet2012", batch_size=256, eval_batch_size=500, data_dir="",
                      image_size=224)
        steps_per_epoch = math.ceil(1_281_167 / 256)
        c.total_steps = (30 if eco else 100) * steps_per_epoch
    if eco:
        c.model["ecoformer"] = dict(QUICK_ATTENTION if arg.quick else ATTENTION)
        c.hooks = refresh_hooks(steps_per_epoch)
    c.log_every = 1 if arg.quick else 100
    lr = 5e-5 * 256 / 512
    c.optimizer = dict(name="adamw", learning_rate=lr, weight_decay=0.05,
                       schedule="warmup_cosine", warmup_steps=5 * steps_per_epoch,
                       end_factor=1e-6 / lr)
    if arg.quick:
        c.optimizer = dict(name="adamw", learning_rate=2e-3, weight_decay=0.05,
                           schedule="constant")
    c.loss = dict(name="softmax_xent", label_smoothing=0.1)
    c.init_from = start
    return c

"""OFQ (Liu, Liu, Cheng; ICML 2023; github.com/nbasyl/OFQ): W2A2 / W3A3 / W4A4 DeiT and Swin.

Two stages, as the reference's ``train_scripts/deit_t/w2a2_deit_t.sh``:

* ``stage=qat``: quantization-aware training from the pretrained float model (``pretrained=``
  a local Hugging Face directory, e.g. ``facebook/deit-tiny-distilled-patch16-224``), with
  StatsQ weights, per-token LSQ activations between learned biases, V quantized per channel
  and the query-key reparameterization (:func:`bnn_jax.models.vit.ofq_fields`); patch embedding
  and head at 8 bits (per-tensor LSQ here; the reference's ``LsqQuantizer4img`` /
  ``LsqQuantizer4head_input`` use other step shapes). KD "hard + soft" from the same float
  model (``KDLossSoftandHard``, ``src/quantization/utils.py`` lines 65-77: cross-entropy to
  the labels on the class-token head + the teacher's soft labels on the distillation-token
  head, the two heads the distilled DeiT returns in training; ``distilled_training``).
  AdamW lr 5.47e-4, weight decay 0.05, batch 140 x 4 GPUs, 300 epochs, 5 warmup epochs, cosine
  to timm's min_lr 1e-5; mixup and cutmix off (this loop has neither).
* ``stage=cga``: Confidence-Guided Annealing for 30 epochs from the ``qat=`` run
  (``config.init_from``), boundary range 0.005 (``--boundaryRange 0.005
  --freeze_for_n_epochs 30``); the reference's learning rate in this phase is the cooldown
  value of its cosine schedule, its min_lr 1e-5, held constant here.

``model=deit_tiny_distilled|deit_small_distilled|swin_tiny``, ``bits=2|3|4``; ``quick`` is a
tiny ViT on digits (no pretrained weights, no teacher).

  python -m bnn_jax.main --config configs/ofq.py:bits=2,pretrained=hf/deit_t \\
      --workdir runs/ofq_w2a2
  python -m bnn_jax.main \\
      --config configs/ofq.py:bits=2,stage=cga,qat=runs/ofq_w2a2,pretrained=hf/deit_t \\
      --workdir runs/ofq_w2a2_cga
"""

import math

from bnn_jax.models.vit import ofq_fields
from bnn_jax.train.config import defaults, parse_arg

MODELS = ("deit_tiny_distilled", "deit_small_distilled", "swin_tiny")
IMAGENET_TRAIN = 1_281_167
BATCH = 140 * 4
MIN_LR, LR = 1e-5, 5.47e-4
QUICK = dict(name="vit", patch_size=4, hidden=32, depth=2, num_heads=2, mlp_dim=64)
# OFQ's CGA freezes fc1, fc2, the value projection and proj (and Swin's reduction).
CGA_PATTERN = r"(mlp/fc1|mlp/fc2|attn/value|attn/out|downsample/reduction)/kernel$"


def eight_bit_rules(distilled: bool) -> list:
    """8-bit patch embedding and head(s), as OFQ's ``qmodules`` list and ``utils.py``."""
    q8 = dict(name="lsq", bits=8)
    heads = ["head", "head_dist"] if distilled else ["head"]
    return [dict(pattern=f"^{name}$", weight=q8, input=q8) for name in ["patch_embed", *heads]]


def get_config(arg=None):
    """Arguments: bits, model, stage (qat|cga), pretrained (HF dir), qat (run dir), quick."""
    arg = parse_arg(arg, bits=2, model="deit_tiny_distilled", stage="qat", pretrained="",
                    qat="runs/ofq_qat", quick=False)
    if arg.bits not in (2, 3, 4):
        raise ValueError(f"bits must be 2, 3 or 4, got {arg.bits}")
    if arg.model not in MODELS:
        raise ValueError(f"model must be one of {list(MODELS)}, got {arg.model!r}")
    if arg.stage not in ("qat", "cga"):
        raise ValueError(f"stage must be 'qat' or 'cga', got {arg.stage!r}")
    c = defaults()
    fields = ofq_fields(arg.bits)
    if arg.quick:
        c.model = dict(QUICK, **fields)
        c.data = dict(name="digits", batch_size=8, eval_batch_size=8, data_dir="")
        c.total_steps = 2
        steps_per_epoch = 1
    else:
        # The float model's local Hugging Face directory (a missing one stops the run with
        # how to place it there).
        arg.pretrained = arg.pretrained or f"hf/{arg.model}"
        c.model = dict(name=arg.model, pretrained=arg.pretrained, **fields)
        if "distilled" in arg.model:
            c.model["distilled_training"] = True
        c.data = dict(name="imagenet2012", batch_size=BATCH, eval_batch_size=500, data_dir="")
        steps_per_epoch = math.ceil(IMAGENET_TRAIN / BATCH)
        c.total_steps = (300 if arg.stage == "qat" else 30) * steps_per_epoch
        c.quant = dict(rules=eight_bit_rules("distilled" in arg.model))
        c.kd = dict(enabled=True, teacher_import=arg.pretrained, task_weight=1.0,
                    terms=[dict(name="logit", weight=1.0, temperature=1.0)])
    c.log_every = 1 if arg.quick else 100
    if arg.stage == "qat":
        c.optimizer = dict(name="adamw", learning_rate=LR, weight_decay=0.05,
                           schedule="warmup_cosine", warmup_steps=5 * steps_per_epoch,
                           end_factor=MIN_LR / LR)
    else:
        c.optimizer = dict(name="adamw", learning_rate=MIN_LR, weight_decay=0.05,
                           schedule="constant",
                           cga=dict(bits=arg.bits, boundary_range=0.005, steps=c.total_steps,
                                    pattern=CGA_PATTERN))
        if not arg.quick:
            c.init_from = arg.qat
    return c

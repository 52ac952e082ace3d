"""BinaryDM (Zheng, Qin et al., 2024; github.com/Xingyu-Zheng/BinaryDM): a binarized DDPM/LDM
U-Net fine-tuned from its float model with progressive binarization and LRM distillation.

``stage=fp`` trains the float U-Net (the teacher); ``stage=binarydm`` starts from that run
(``teacher=DIR``): order-2 LMB in the outer groups, order-1 elsewhere, the
``binarydm_progressive`` hook (one group per iteration from the middle outward, then attention
activation quantization), ``L = L_simple + 1e-4·L_LRM`` on every block output with the PCA
bases of the teacher's first batch, AdamW (``ddpm_ours.py`` lines 1030-1109, 1428-1439).
``stage=sign`` is the plain baseline of the same budget: every binarized layer ``σ·sign(W)``
with ``σ = mean|W|`` per channel (no second basis, no progressive phase, no LRM).
``act_bits=8`` (or 4) quantizes the binarized layers' inputs and attention's q, k, softmax and
v (``binarydm_act``); 0 keeps activations in float (A32).

Recipes: ``recipe=cifar10`` (default): Ho et al.'s CIFAR-10 32x32 DDPM (128 channels,
``(1, 2, 2, 2)``, attention at 16x16, linear β 1e-4..0.02 over 1000 steps, Adam 2e-4, batch
128, EMA 0.9999; the U-Net here has no dropout, the paper's 0.1). ``quick``: digits (8x8) in a
few minutes on 2 CPU cores (200 timesteps, linear β 5e-4..0.1). Both keep the images in
``[0, 1]`` (``data.normalize=False``), centred to ``[−1, 1]`` by the task.
``recipe=lsun_ldm4`` is BinaryDM's paper setting (``bedrooms.yaml``:
the U-Net below on 64x64x3 latents of a VQ-f4 autoencoder, LDM's scaled-linear β 0.0015..0.0195,
base lr 2e-5, batch 4): bnn_jax cannot import the VQ-f4 first stage (latent diffusion's
``VQModelInterface`` and its ``vq-f4/model.ckpt``), so this recipe refuses to build a config;
:data:`LSUN_LDM4_UNET` still gives the U-Net for cost analysis (``#Bits ≈ 1.1``).

  python -m bnn_jax.main --config configs/binarydm.py:quick,stage=fp --workdir runs/dm_fp
  python -m bnn_jax.main --config configs/binarydm.py:quick,stage=binarydm,teacher=runs/dm_fp \\
      --workdir runs/dm_binarydm
  python -m bnn_jax.sample --workdir runs/dm_binarydm --num 1000
"""

from bnn_jax.train.config import defaults, parse_arg

ACT = "binarydm_act"
# bedrooms.yaml's unet_config (attention_resolutions are downsampling factors: 8, 4, 2).
LSUN_LDM4_UNET = dict(name="unet", model_channels=224, channel_mult=(1, 2, 3, 4),
                      num_res_blocks=2, attention_resolutions=(8, 4, 2), num_head_channels=32)
CIFAR10_UNET = dict(name="unet", model_channels=128, channel_mult=(1, 2, 2, 2),
                    num_res_blocks=2, attention_resolutions=(2,), num_head_channels=64)
QUICK_UNET = dict(name="unet", model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                  attention_resolutions=(2,), num_head_channels=16)
# Every conv/linear of the U-Net's blocks (the stem and output conv stay float).
LRM_FEATURES = r"(input_blocks/\d+|middle|output_blocks/\d+)/hidden"
STAGES = ("fp", "binarydm", "sign")


def quantizers(stage: str, act_bits: int) -> dict:
    """The U-Net's quantizer fields for ``stage`` at ``act_bits`` (0: float activations)."""
    act = dict(name=ACT, bits=act_bits) if act_bits else None
    if stage == "fp":
        return {}
    if stage == "binarydm":
        return dict(kernel_quantizer="binarydm_lmb1", outer_kernel_quantizer="binarydm_lmb",
                    outer_groups=(0, 1), input_quantizer=act, attention_quantizer=act)
    sign = dict(name="binarydm_lmb1", dynamic_scale=True)
    return dict(kernel_quantizer=sign, outer_kernel_quantizer=sign, input_quantizer=act,
                attention_quantizer=act)


def get_config(arg=None):
    """Arguments: recipe (cifar10, lsun_ldm4), stage (fp, binarydm, sign), teacher (the fp
    run), act_bits (0 = A32, 8, 4), steps (0: the recipe's), quick."""
    arg = parse_arg(arg, recipe="cifar10", stage="fp", teacher="runs/binarydm_fp", act_bits=0,
                    steps=0, quick=False)
    if arg.recipe == "lsun_ldm4":
        raise ValueError("recipe=lsun_ldm4 needs the VQ-f4 first stage of latent diffusion "
                         "(VQModelInterface, vq-f4/model.ckpt) to encode LSUN-Bedrooms into "
                         "64x64x3 latents; bnn_jax cannot import it. Use recipe=cifar10 or "
                         "quick; configs/binarydm.py:LSUN_LDM4_UNET is the paper's U-Net")
    if arg.recipe != "cifar10":
        raise ValueError(f"recipe must be one of ['cifar10', 'lsun_ldm4'], got {arg.recipe!r}")
    if arg.stage not in STAGES:
        raise ValueError(f"stage must be one of {list(STAGES)}, got {arg.stage!r}")
    if arg.act_bits not in (0, 4, 8):
        raise ValueError(f"act_bits must be 0 (float), 4 or 8, got {arg.act_bits!r}")
    c = defaults()
    if arg.quick:
        c.data = dict(name="digits", batch_size=32, eval_batch_size=120, data_dir="",
                      normalize=False)  # diffusion works on [0, 1] images (center: [-1, 1])
        # Ho et al.'s β bounds scaled by 1000/T (improved-diffusion's get_named_beta_schedule,
        # "linear"): with 1e-4..0.02 over 200 steps ᾱ_T is 0.13, and x_T ~ N(0, I) would start
        # the sampler far from what the model saw at t = T-1.
        c.task = dict(name="denoising", num_timesteps=200, center=True,
                      beta_start=5e-4, beta_end=0.1)
        c.model = dict(QUICK_UNET, **quantizers(arg.stage, arg.act_bits))
        c.total_steps = arg.steps or (600 if arg.stage == "fp" else 300)
        c.optimizer = dict(name="adamw", learning_rate=2e-3 if arg.stage == "fp" else 5e-4,
                           schedule="constant", weight_decay=0.01)
        c.ema = dict(decay=0.99, eval=True)
        c.log_every, c.eval_every = 50, 0
    else:
        c.data = dict(name="cifar10", batch_size=128, eval_batch_size=500, data_dir="",
                      normalize=False)
        c.task = dict(name="denoising", num_timesteps=1000, center=True)
        c.model = dict(CIFAR10_UNET, **quantizers(arg.stage, arg.act_bits))
        c.total_steps = arg.steps or 800_000
        c.optimizer = dict(name="adam" if arg.stage == "fp" else "adamw",
                           learning_rate=2e-4 if arg.stage == "fp" else 2e-5,
                           schedule="constant", weight_decay=0.0 if arg.stage == "fp" else 0.01)
        c.ema = dict(decay=0.9999, eval=True)
        c.log_every, c.eval_every = 100, 10_000
    c.checkpoint_every = c.total_steps
    if arg.stage != "fp":
        c.init_from = arg.teacher
    if arg.stage == "binarydm":
        c.hooks = [dict(name="binarydm_progressive", every=1, at_start=True)]
        c.kd = dict(enabled=True, teacher_model=dict(QUICK_UNET if arg.quick else CIFAR10_UNET),
                    teacher_workdir=arg.teacher, task_weight=1.0,
                    terms=[dict(name="lrm", weight=1e-4, student=LRM_FEATURES)])
    return c

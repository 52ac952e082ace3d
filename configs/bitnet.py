"""BitNet b1.58 decoders trained from scratch, tiny to 3B (Ma et al., 2024).

The LLaMA-style decoder of :mod:`bnn_jax.models.llama` with BitNet b1.58's placement: every
block linear is a BitLinear (ternary absmean weights ``bitnet_weight``, per-token absmax 8-bit
activations ``bitnet_act``) whose input is first normalized (``subln="rms"``, the RMSNorm that
BitLinear applies before quantizing); no biases; embeddings, norms and the LM head stay in full
precision. ``median`` is BitNet b1.58 Reloaded (median weight scale, LayerNorm inside the
BitLinear, activation scale 128). ``float`` trains the same shape without quantizers.

Shapes: ``3b`` is the LLaMA 3B shape b1.58 is compared with (hidden 3200, SwiGLU 8640, 26
layers, 32 heads: 3.43B parameters with a 32000 vocabulary); ``700m`` (0.78B) and ``1.3b``
(1.34B) are LLaMA-style shapes of those sizes, and the peak / second-stage learning rates
per size are our reading of the b1.58 training tips, not checked against the paper's table
here. The optimizer is AdamW with the two-stage learning rate and weight decay
(``bnn_jax.train.optimizers.two_stage_schedule``: the rate drops at mid-run, the weight decay
of 0.1 is switched off in the second stage). Sizes above ``tiny`` shard the
parameters over a ``fsdp`` x ``model`` mesh (:data:`bnn_jax.models.llama.PARTITION_RULES`).

  python -m bnn_jax.main --config configs/bitnet.py:size=tiny --workdir /tmp/bitnet_tiny
  python -m bnn_jax.main --config configs/bitnet.py:size=tiny,median --workdir /tmp/reloaded
  python -m bnn_jax.main --config configs/bitnet.py:size=3b,model_parallel=2 --workdir DIR
"""

from bnn_jax.train.config import defaults, parse_arg

# size -> (hidden, intermediate, layers, heads, peak learning rate, stage-2 learning rate)
SIZES = {
    "tiny": (64, 172, 2, 4, 3e-3, 1.5e-3),
    "700m": (1536, 4096, 24, 16, 1.5e-3, 1e-3),
    "1.3b": (2048, 5460, 24, 32, 1.2e-3, 8e-4),
    "3b": (3200, 8640, 26, 32, 1.2e-3, 8e-4),
}


def model_fields(size: str, *, median: bool = False, quantized: bool = True) -> dict:
    """The ``config.model`` of one size (without data-derived vocab/max_len)."""
    if size not in SIZES:
        raise ValueError(f"unknown BitNet size {size!r}; valid sizes: {list(SIZES)}")
    hidden, intermediate, layers, heads = SIZES[size][:4]
    fields = dict(name="llama", hidden=hidden, intermediate=intermediate, num_layers=layers,
                  num_heads=heads, attention_bias=False, mlp_bias=False)
    if quantized:
        fields.update(
            subln="layer" if median else "rms",
            kernel_quantizer=dict(name="bitnet_weight", measure="median" if median else "mean"),
            input_quantizer=dict(name="bitnet_act", bits=8,
                                 variant="reloaded" if median else "b1.58"))
    return fields


def get_config(arg=None):
    """BitNet b1.58 config; arguments: size, median, float, quick, steps, seq_len,
    model_parallel."""
    arg = parse_arg(arg, size="tiny", median=False, float=False, quick=False, steps=0,
                    seq_len=0, model_parallel=1)
    c = defaults()
    c.seed = 0
    c.total_steps = arg.steps or (20 if arg.quick else 400)
    c.log_every = 10 if arg.quick else 50
    c.eval_every = 0
    c.checkpoint_every = 200
    c.task = dict(name="causal_lm")
    big = arg.size != "tiny"
    c.data = dict(name="pydoc", batch_size=32, eval_batch_size=256,
                  seq_len=arg.seq_len or (2048 if big else 64), tokenizer="byte", data_dir="")
    if not big:  # the big sizes expect a streamed corpus (--config.data.name=c4), no packing
        c.data.packing = "stream"
    c.model = model_fields(arg.size, median=arg.median, quantized=not arg.float)
    peak, stage2 = SIZES[arg.size][4:]
    c.optimizer = dict(name="adamw", learning_rate=peak, schedule="two_stage",
                       warmup_steps=max(c.total_steps // 20, 1), stage_boundary=0.5,
                       stage1_end_factor=1.0, stage2_factor=stage2 / peak, end_factor=0.0,
                       weight_decay=0.1, stage2_weight_decay=0.0, b1=0.9, b2=0.95,
                       grad_clip_norm=1.0)
    if big:
        from bnn_jax.models.llama import PARTITION_RULES

        c.mesh = dict(data=1, fsdp=-1, model=arg.model_parallel, num_devices=0)
        c.partition_rules = list(PARTITION_RULES)
    return c

"""The main text job: a small BitNet b1.58 decoder LM on the offline Python-documentation corpus.

A LLaMA-style decoder (``bnn_jax.models.llama``) whose block linear layers use BitNet b1.58's
ternary absmean weights (``bitnet_weight``) and 8-bit absmax activations (``bitnet_act``), as
Ma et al. (2024) describe; embeddings, norms and the LM head stay in full precision. Byte-level
tokens, so the validation perplexity is per byte and ``bits_per_byte`` = log2 of it (up to the
separators between documents). ``:float`` trains the same model without quantizers. Usage:

  python -m bnn_jax.main --config configs/bitnet_lm.py --workdir /tmp/bitnet_lm
  python -m bnn_jax.main --config configs/bitnet_lm.py:float --workdir /tmp/bitnet_lm_float
  python -m bnn_jax.main --config configs/bitnet_lm.py:quick --workdir /tmp/bitnet_lm_quick
"""

from bnn_jax.train.config import defaults, parse_arg


def get_config(arg=None):
    """The BitNet LM config; arguments: quick, float (no quantizers), steps."""
    arg = parse_arg(arg, quick=False, float=False, steps=0)
    c = defaults()
    c.seed = 0
    c.total_steps = arg.steps or (20 if arg.quick else 400)
    c.log_every = 10 if arg.quick else 50
    c.eval_every = 0
    c.checkpoint_every = 200
    c.task = dict(name="causal_lm")
    c.data = dict(name="pydoc", batch_size=32, eval_batch_size=256, seq_len=64,
                  tokenizer="byte", packing="stream", data_dir="")
    quant = {} if arg.float else dict(kernel_quantizer=dict(name="bitnet_weight"),
                                      input_quantizer=dict(name="bitnet_act", bits=8))
    c.model = dict(name="llama", hidden=64 if arg.quick else 128,
                   intermediate=128 if arg.quick else 344, num_layers=2, num_heads=4,
                   **quant)
    c.optimizer = dict(name="adam", learning_rate=3e-3 if arg.float else 6e-3,
                       schedule="warmup_cosine", warmup_steps=max(c.total_steps // 20, 1),
                       end_factor=0.0, grad_clip_norm=1.0, weight_decay=0.0)
    return c

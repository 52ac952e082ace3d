"""BiPFT, binary pre-trained foundation transformer (Xing et al., AAAI 2024;
github.com/Xingrun-Xing/BiPFT at 63ec0a0): the GLUE fine-tuning recipe.

``binary_finetune/run.sh`` and ``arun.sh``: a W1A1 BERT-base (``method="bipft"``: BWN weights,
learned shift + elastic sign inputs, elastic binary attention; the released fine-tuning config
has ``improve_kqv = False``, so no residual estimators) trained on the task loss alone
(``online_dist = False``) with AdamW, weight decay 0, a **constant** learning rate 2e-5, batch
32, sequences of 128 tokens, epochs CoLA 50, MNLI 6, MRPC 20, SST-2 10, STS-B 20, QQP 6,
QNLI 10, RTE 20. The released script starts from BiPFT's pretrained binary model
(``pretrain_student``); here the model starts from ``hf=`` (a local Hugging Face BERT
directory, the script's ``bert-base-uncased``): this loop has no masked-LM/NSP task yet, so
BiPFT's pretraining stage (hidden-state MSE + NSP soft-CE KD + MLM/NSP loss,
``binary_pretraining/learner.py``) cannot be reproduced and this recipe is BiPFT's binary
BERT fine-tuned without it.

``quick``: a tiny binary BERT on ``synthetic_glue``.

  python -m bnn_jax.main --config configs/bipft.py:task=sst2,hf=hf/bert-base-uncased \\
      --config.data.data_dir=data/glue --workdir runs/bipft_sst2
"""

import math

from bnn_jax.train.config import defaults, parse_arg

EPOCHS = {"cola": 50, "mnli": 6, "mrpc": 20, "sst2": 10, "stsb": 20, "qqp": 6, "qnli": 10,
          "rte": 20}
TRAIN_EXAMPLES = {"cola": 8551, "mnli": 392_702, "mrpc": 3668, "sst2": 67_349, "stsb": 5749,
                  "qqp": 363_846, "qnli": 104_743, "rte": 2490}
BATCH, LR = 32, 2e-5
QUICK = dict(hidden=32, intermediate=64, num_layers=2, num_heads=2)


def get_config(arg=None):
    """Arguments: task (GLUE), hf (BERT checkpoint dir), estimators, quick, steps (quick)."""
    arg = parse_arg(arg, task="sst2", hf="hf/bert-base-uncased", estimators=False,
                    quick=False, steps=0)
    if arg.task not in EPOCHS:
        raise ValueError(f"task must be one of {sorted(EPOCHS)}, got {arg.task!r}")
    c = defaults()
    c.task = dict(name="sequence_classification")
    c.log_every = 10 if arg.quick else 100
    c.checkpoint_every = 1000
    fields = dict(method="bipft", estimators=arg.estimators)
    if arg.quick:
        c.data = dict(name="synthetic_glue", batch_size=32, eval_batch_size=64, vocab_size=32,
                      seq_len=16, num_labels=2, num_train=2048, num_test=256, data_dir="")
        c.total_steps = arg.steps or 300
        c.model = dict(name="bert", **QUICK, **fields)
        lr = 2e-3
    else:
        c.data = dict(name="glue", task=arg.task, source="hf", data_dir="", tokenizer=arg.hf,
                      max_len=128, batch_size=BATCH, eval_batch_size=64)
        c.total_steps = EPOCHS[arg.task] * math.ceil(TRAIN_EXAMPLES[arg.task] / BATCH)
        c.model = dict(name="bert", pretrained=arg.hf, **fields)
        lr = LR
    c.optimizer = dict(name="adamw", learning_rate=lr, weight_decay=0.0, schedule="constant")
    return c

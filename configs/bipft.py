"""BiPFT, binary pre-trained foundation transformer (Xing et al., AAAI 2024;
github.com/Xingrun-Xing/BiPFT at 63ec0a0): binary pretraining, then GLUE fine-tuning.

``stage=pretrain`` (``binary_pretraining/bert_base.sh``, ``run_pretrain_binary.py``,
``learner.py``): a W1A1 BERT-base with residual estimators (``method="bipft"``,
``estimators=True``; the pretraining model always has them) starts from the float BERT
(``hf=``, the script's ``bert-base-uncased``) and trains on BERT's masked-LM + next-sentence
task (:mod:`bnn_jax.tasks.masked_lm`, loss = MLM CE + NSP CE) plus distillation from that float
BERT (``learner.py`` l. 37-49): soft cross-entropy of the NSP logits (mean over elements) +
the MSE of every hidden state (embeddings output and each layer), averaged over the 13 states
(``hidden_mse`` sums, so its weight is 1/13), all at weight 1. AdamW, lr 2e-4, weight decay 0
(the script's default), 5000 warmup steps then linear decay to 0 (``get_scheduler("linear")``),
500k steps, batch 8 x 64, sequences of 128 tokens. Departures: the corpus is the offline
``pydoc_pretraining`` (the paper's Wikipedia + BookCorpus are a static masked dataset the
release does not include; at most 20 masked tokens per sequence as BERT's 128-token data),
the teacher runs without dropout (the reference keeps it in train mode), and the student keeps
the checkpoint's GELU (the reference sets ``hidden_act='relu'``, l. 351).

``stage=finetune`` (default; ``binary_finetune/run.sh`` and ``arun.sh``): W1A1 (the released
fine-tuning config has ``improve_kqv = False``: no residual estimators) trained on the task
loss alone (``online_dist = False``) with AdamW, weight decay 0, a **constant** learning rate
2e-5, batch 32, sequences of 128 tokens, epochs CoLA 50, MNLI 6, MRPC 20, SST-2 10, STS-B 20,
QQP 6, QNLI 10, RTE 20. It starts from the pretraining run with ``init=WORKDIR``
(``config.init_from``; the classifier starts fresh), else from ``hf=`` alone (BiPFT's binary
BERT fine-tuned without its pretraining).

``quick``: tiny BERTs. ``quick,stage=teacher`` pretrains a float BERT on ``pydoc_pretraining``
(byte tokens); ``quick,stage=pretrain`` pretrains the binary student distilled from it
(``teacher=`` that run); ``quick`` fine-tunes on ``synthetic_glue`` (from ``init=`` a quick
pretraining run, with the byte vocabulary and its sequence length).

  python -m bnn_jax.main --config configs/bipft.py:stage=pretrain,hf=hf/bert-base-uncased \\
      --workdir runs/bipft_pretrain
  python -m bnn_jax.main --config configs/bipft.py:task=sst2,hf=hf/bert-base-uncased,\\
init=runs/bipft_pretrain --config.data.data_dir=data/glue --workdir runs/bipft_sst2
"""

import math

from bnn_jax.train.config import defaults, parse_arg

EPOCHS = {"cola": 50, "mnli": 6, "mrpc": 20, "sst2": 10, "stsb": 20, "qqp": 6, "qnli": 10,
          "rte": 20}
TRAIN_EXAMPLES = {"cola": 8551, "mnli": 392_702, "mrpc": 3668, "sst2": 67_349, "stsb": 5749,
                  "qqp": 363_846, "qnli": 104_743, "rte": 2490}
BATCH, LR = 32, 2e-5
QUICK = dict(hidden=32, intermediate=64, num_layers=2, num_heads=2)
STAGES = ("finetune", "pretrain", "teacher")
# bert_base.sh: 8 GPUs x 64, lr 2e-4, 500k steps, 5000 warmup, 128 tokens.
PRETRAIN = dict(batch=8 * 64, lr=2e-4, steps=500_000, warmup=5000, seq_len=128)
QUICK_SEQ, BYTE_VOCAB = 32, 260  # quick pretraining: byte tokens (+ [MASK])


def bipft_pretrain_terms(num_layers: int) -> list[dict]:
    """BiPFT's distillation terms: NSP soft-CE and the hidden-state MSE averaged over the
    ``num_layers + 1`` states (``learner.py`` l. 37-45)."""
    return [dict(name="soft_ce", weight=1.0, reduction="elementmean"),
            dict(name="hidden_mse", weight=1.0 / (num_layers + 1),
                 student=r"hidden_states/\d+")]


def _pretrain(c, arg):
    fields = dict(name="bert", head="pretraining")
    student = dict(fields, method="bipft", estimators=True)
    c.task = dict(name="masked_lm")
    if arg.quick:
        c.data = dict(name="pydoc_pretraining", batch_size=32, eval_batch_size=128,
                      seq_len=QUICK_SEQ, tokenizer="byte", data_dir="")
        c.total_steps = arg.steps or 300
        teacher = arg.stage == "teacher"
        c.model = dict(fields if teacher else student, **QUICK)
        c.optimizer = dict(name="adamw", learning_rate=2e-3, weight_decay=0.0,
                           schedule="warmup_linear", warmup_steps=max(c.total_steps // 10, 1),
                           end_factor=0.0)
        if not teacher:
            c.kd = dict(enabled=True, teacher_model=dict(fields, **QUICK),
                        teacher_workdir=arg.teacher, task_weight=1.0,
                        terms=bipft_pretrain_terms(QUICK["num_layers"]))
        return c
    c.data = dict(name="pydoc_pretraining", batch_size=PRETRAIN["batch"], eval_batch_size=64,
                  seq_len=PRETRAIN["seq_len"], tokenizer=arg.hf, max_predictions=20,
                  data_dir="")
    c.total_steps = PRETRAIN["steps"]
    c.checkpoint_every = 50_000  # --checkpointing_steps
    c.model = dict(student, pretrained=arg.hf)
    c.optimizer = dict(name="adamw", learning_rate=PRETRAIN["lr"], weight_decay=0.0,
                       schedule="warmup_linear", warmup_steps=PRETRAIN["warmup"],
                       end_factor=0.0)
    c.kd = dict(enabled=True, teacher_import=arg.hf, task_weight=1.0,
                terms=bipft_pretrain_terms(12))  # BERT-base: 12 layers
    return c


def get_config(arg=None):
    """Arguments: task (GLUE), hf (BERT checkpoint dir), estimators, stage (finetune|pretrain;
    quick also teacher), init (fine-tuning: the pretraining run), teacher (quick pretrain:
    the teacher run), quick, steps (quick)."""
    arg = parse_arg(arg, task="sst2", hf="hf/bert-base-uncased", estimators=False,
                    quick=False, steps=0, stage="finetune", init="",
                    teacher="runs/bipft_quick_teacher")
    if arg.task not in EPOCHS:
        raise ValueError(f"task must be one of {sorted(EPOCHS)}, got {arg.task!r}")
    if arg.stage not in STAGES:
        raise ValueError(f"stage must be one of {list(STAGES)}, got {arg.stage!r}")
    if arg.stage == "teacher" and not arg.quick:
        raise ValueError("stage=teacher is the quick float teacher; the full pretraining "
                         "recipe's teacher is the float checkpoint hf=DIR")
    c = defaults()
    c.log_every = 10 if arg.quick else 100
    c.checkpoint_every = 1000
    if arg.stage != "finetune":
        return _pretrain(c, arg)
    c.task = dict(name="sequence_classification")
    fields = dict(method="bipft", estimators=arg.estimators)
    if arg.quick:
        # From a quick pretraining run: its byte vocabulary and positions.
        vocab, seq = (BYTE_VOCAB, QUICK_SEQ) if arg.init else (32, 16)
        c.data = dict(name="synthetic_glue", batch_size=32, eval_batch_size=64,
                      vocab_size=vocab, seq_len=seq, num_labels=2, num_train=2048,
                      num_test=256, data_dir="")
        c.total_steps = arg.steps or 300
        c.model = dict(name="bert", **QUICK, **fields)
        lr = 2e-3
    else:
        c.data = dict(name="glue", task=arg.task, source="hf", data_dir="", tokenizer=arg.hf,
                      max_len=128, batch_size=BATCH, eval_batch_size=64)
        c.total_steps = EPOCHS[arg.task] * math.ceil(TRAIN_EXAMPLES[arg.task] / BATCH)
        c.model = dict(name="bert", pretrained=arg.hf, **fields)
        lr = LR
    if arg.init:  # the pretraining run's weights; the classifier is new
        c.init_from, c.init_fresh = arg.init, "classifier/.*"
    c.optimizer = dict(name="adamw", learning_rate=lr, weight_decay=0.0, schedule="constant")
    return c

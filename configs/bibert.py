"""BiBERT, fully binarized BERT (Qin et al., ICLR 2022; github.com/htqin/BiBERT at 91fd347).

W1-E1-A1 BERT-base on a GLUE task (``task=``): ``bibert_weight`` kernels and word table,
``bibert_act`` inputs, Bi-Attention (:mod:`bnn_jax.models.bert`, ``method="bibert"``). The
student starts from the fine-tuned full-precision model (``hf=``, a local Hugging Face
directory; the paper's is DynaBERT's full-size model per task) and distils from it, as
``quant_task_glue.py`` (lines 500-585) with the scripts' flags (``--pred_distill
--intermediate_distill --value_distill --key_distill --query_distill``):

* prediction: soft cross-entropy to the teacher, mean over every element, plus 0.5 x the
  cross-entropy to the labels; STS-B (regression): MSE between the outputs, no label term;
* hidden states (embeddings output and every layer): ``||H_s/||H_s|| - H_t/||H_t|| ||`` summed;
* Direction-Matching Distillation on the similarity patterns of Q, K and V of every layer.

Training (``scripts/train_*.sh``, lines 240-330): batch 16, sequences of 64 (CoLA, SST-2) or
128 tokens, the per-task learning rate of the scripts and epochs of ``default_params``,
BertAdam with weight decay 0.01 (not on biases and LayerNorms) and linear decay after 10%
warmup. BertAdam has no bias correction; Adam's (AdamW here) has.

``quick``: a tiny BERT on ``synthetic_glue`` distilled from a tiny float BERT trained by
``quick,stage=teacher`` (``teacher=`` that run).

  python -m bnn_jax.main --config configs/bibert.py:task=sst2,hf=hf/bert-base-sst2 \\
      --config.data.data_dir=data/glue --workdir runs/bibert_sst2
  python -m bnn_jax.evaluate --workdir runs/bibert_sst2
"""

import math

from bnn_jax.train.config import defaults, parse_arg

# scripts/train_<task>.sh --learning_rate; quant_task_glue.py default_params.
LR = {"cola": 1e-4, "mnli": 5e-5, "mrpc": 2e-4, "sst2": 1e-4, "stsb": 1e-4, "qqp": 1e-4,
      "qnli": 1e-4, "rte": 1e-5}
EPOCHS = {"cola": 50, "mnli": 5, "mrpc": 20, "sst2": 10, "stsb": 20, "qqp": 5, "qnli": 10,
          "rte": 20}
MAX_LEN = {"cola": 64, "sst2": 64}
TRAIN_EXAMPLES = {"cola": 8551, "mnli": 392_702, "mrpc": 3668, "sst2": 67_349, "stsb": 5749,
                  "qqp": 363_846, "qnli": 104_743, "rte": 2490}
BATCH = 16
QUICK = dict(hidden=32, intermediate=64, num_layers=2, num_heads=2)
QUICK_DATA = dict(name="synthetic_glue", batch_size=32, eval_batch_size=64, vocab_size=32,
                  seq_len=16, num_labels=2, num_train=2048, num_test=256, data_dir="")


def bibert_terms(regression: bool) -> tuple[float, list[dict]]:
    """``(task_weight, terms)`` of BiBERT's distillation loss."""
    pred = [dict(name="logit_mse", weight=1.0)] if regression else [
        dict(name="soft_ce", weight=1.0, reduction="elementmean")]
    reps = [dict(name="hidden_state", weight=1.0, student=r"hidden_states/\d+")]
    dmd = [dict(name="dmd", weight=1.0, student=rf"layers/\d+/attention/{p}") for p in "qkv"]
    return (0.0 if regression else 0.5), pred + reps + dmd


def get_config(arg=None):
    """Arguments: task (GLUE), hf (FP fine-tuned checkpoint dir), quick, stage (quick:
    student|teacher), teacher (quick: the teacher run), steps (quick)."""
    arg = parse_arg(arg, task="sst2", hf="", quick=False, stage="student",
                    teacher="runs/bibert_quick_teacher", steps=0)
    if arg.task not in LR:
        raise ValueError(f"task must be one of {sorted(LR)}, got {arg.task!r}")
    if arg.stage not in ("student", "teacher"):
        raise ValueError(f"stage must be 'student' or 'teacher', got {arg.stage!r}")
    if arg.stage == "teacher" and not arg.quick:
        raise ValueError("stage=teacher is the quick float teacher; the full recipe's teacher "
                         "is the fine-tuned checkpoint hf=DIR")
    c = defaults()
    student = arg.stage == "student"
    c.task = dict(name="sequence_classification")
    c.log_every = 10 if arg.quick else 100
    c.checkpoint_every = 1000
    if arg.quick:
        c.data = dict(QUICK_DATA)
        c.total_steps = arg.steps or (300 if student else 400)
        c.model = dict(name="bert", **QUICK, **(dict(method="bibert") if student else {}))
        c.optimizer = dict(name="adamw", learning_rate=2e-3, weight_decay=0.01,
                           schedule="warmup_linear",
                           warmup_steps=max(c.total_steps // 10, 1), end_factor=0.0)
        if student:
            task_weight, terms = bibert_terms(regression=False)
            c.kd = dict(enabled=True, teacher_model=dict(name="bert", **QUICK),
                        teacher_workdir=arg.teacher, task_weight=task_weight, terms=terms)
        return c
    hf = arg.hf or f"hf/bert-base-{arg.task}"
    c.data = dict(name="glue", task=arg.task, source="hf", data_dir="", tokenizer=hf,
                  max_len=MAX_LEN.get(arg.task, 128), batch_size=BATCH, eval_batch_size=64)
    steps_per_epoch = math.ceil(TRAIN_EXAMPLES[arg.task] / BATCH)
    c.total_steps = EPOCHS[arg.task] * steps_per_epoch
    c.model = dict(name="bert", method="bibert", pretrained=hf)
    c.optimizer = dict(name="adamw", learning_rate=LR[arg.task], weight_decay=0.01,
                       schedule="warmup_linear", warmup_steps=int(0.1 * c.total_steps),
                       end_factor=0.0)
    task_weight, terms = bibert_terms(regression=arg.task == "stsb")
    c.kd = dict(enabled=True, teacher_import=hf, task_weight=task_weight, terms=terms)
    return c

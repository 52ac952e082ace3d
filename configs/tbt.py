"""TBT, binary and ternary BART (Liu, Oguz, Pappu, Shi, Krishnamoorthi; ACL 2023;
github.com/facebookresearch/Ternary_Binary_Transformer at 715407e).

The student is the fine-tuned full-precision model (``hf=``, a local Hugging Face directory:
XSUM ``Aktsvigun/bart-base_xsum_42``, CNN/DailyMail ``ainize/bart-base-cnn``) with TBT's
quantizers (``bits=W1E1A1|W2E2A2|W1E1A8|W2E2A8``, :func:`bnn_jax.models.transformer.tbt_placement`)
and 6+6 layers picked from the teacher by ``distill_mappings``; the teacher is the same
directory. Loss, as ``run_summarization_no_trainer.py`` (lines 695-748, weights 1):

* the task cross-entropy (Hugging Face's BART loss: no label smoothing);
* the logits' soft cross-entropy to the teacher (``KD_loss.DistributionLoss``, every position);
* MSE of the encoder and of the decoder hidden states (embeddings output, then every layer;
  teacher states by the layer map).

``code_terms`` (default on) adds what the released code also puts in the total when
``--hid_distill`` is on (lines 706-748): MSE of the encoder self-, decoder self- and cross-
attention maps, and the encoder's last hidden state once more as a sum over the examples of
each device's batch (8), i.e. weight 8 on its batch mean. The paper names only the three terms
above; ``code_terms=false`` gives those.

Training: AdamW, weight decay 0, 20 epochs, linear decay after 5% warmup, 8 GPUs x 8 x 2
accumulation = 128 sequences a step, sources 1024 / targets 128 tokens; learning rates of the
README per dataset and bit setting. Decoding (lines 333-342): XSUM 6 beams, lengths 11-62,
length penalty 1.0; CNN/DailyMail 4 beams, 56-142, length penalty 2.0 (Hugging Face's
``min_length``/``max_length`` count the decoder start token). ``dataset=wmt16_ro_en`` is TBT's
mBART translation setting, which the released code does not include: model, beams and learning
rates there are this config's choice (XSUM's rates, 5 beams, BLEU).
``weights=twn`` is the README's TWN baseline (2-bit only).

``quick``: a tiny BART on the offline reversal task (``synthetic_seq2seq``), distilled from a
tiny float BART trained by ``quick,stage=teacher`` (``teacher=`` that run).

  python -m bnn_jax.main --config configs/tbt.py:bits=W1E1A1,hf=hf/bart-base-xsum \\
      --config.data.data_dir=data/xsum --workdir runs/tbt_xsum_w1e1a1
  python -m bnn_jax.evaluate --workdir runs/tbt_xsum_w1e1a1
"""

import math

from bnn_jax.models.bart import tbt_hidden_map, tbt_layer_map
from bnn_jax.train.config import defaults, parse_arg

BITS = ("W1E1A1", "W2E2A2", "W1E1A8", "W2E2A8")
# README "Learning rate for each model" (W-A; the embedding takes the weights' bits).
LR = {"xsum": {"W2E2A8": 3e-4, "W2E2A2": 3.5e-4, "W1E1A8": 2.5e-4, "W1E1A1": 5e-4},
      "cnn_dailymail": {"W2E2A8": 1e-4, "W2E2A2": 7e-4, "W1E1A8": 1.5e-4, "W1E1A1": 5e-4}}
LR["wmt16_ro_en"] = LR["xsum"]
# Hugging Face min_length / max_length - 1: tokens after the decoder start token.
DECODING = {"xsum": dict(strategy="beam", num_beams=6, min_new_tokens=10, max_new_tokens=61,
                         length_penalty=1.0, metric="rouge"),
            "cnn_dailymail": dict(strategy="beam", num_beams=4, min_new_tokens=55,
                                  max_new_tokens=141, length_penalty=2.0, metric="rouge"),
            "wmt16_ro_en": dict(strategy="beam", num_beams=5, max_new_tokens=127,
                                length_penalty=1.0, metric="bleu")}
TRAIN_EXAMPLES = {"xsum": 204_045, "cnn_dailymail": 287_113, "wmt16_ro_en": 610_320}
HF = {"xsum": "hf/bart-base-xsum", "cnn_dailymail": "hf/bart-base-cnn",
      "wmt16_ro_en": "hf/mbart-large-cc25"}
BATCH, DEVICE_BATCH, EPOCHS = 128, 8, 20
MBART_LAYERS = (12, 12)  # mbart-large-cc25
QUICK = dict(hidden=32, ffn=64, encoder_layers=2, decoder_layers=2, encoder_heads=2)
QUICK_DATA = dict(name="synthetic_seq2seq", batch_size=32, eval_batch_size=64, vocab_size=32,
                  seq_len=12, num_train=2048, num_test=64, data_dir="")


def tbt_terms(student: tuple[int, int], teacher: tuple[int, int], *, code_terms: bool = True,
              device_batch: int = DEVICE_BATCH) -> list[dict]:
    """TBT's distillation terms for ``(encoder, decoder)`` student and teacher layer counts."""
    terms = [dict(name="distribution", weight=1.0, kind="cross_entropy")]
    for i, stack in enumerate(("encoder", "decoder")):
        terms.append(dict(name="hidden_mse", weight=1.0, student=rf"{stack}/hidden_states/\d+",
                          layer_map=tbt_hidden_map(student[i], teacher[i])))
    if code_terms:
        for i, stack, attn in ((0, "encoder", "self_attn"), (1, "decoder", "self_attn"),
                               (1, "decoder", "encoder_attn")):
            terms.append(dict(name="hidden_mse", weight=1.0,
                              student=rf"{stack}/layers/\d+/{attn}/attention",
                              layer_map=tbt_layer_map(student[i], teacher[i])))
        terms.append(dict(name="hidden_mse", weight=float(device_batch),
                          student=rf"encoder/hidden_states/{student[0]}",
                          teacher=rf"encoder/hidden_states/{teacher[0]}"))
    return terms


def get_config(arg=None):
    """Arguments: dataset, bits, weights (tbt|twn), hf (FP checkpoint dir), code_terms, quick,
    stage (quick: student|teacher), teacher (quick: the teacher run), steps (quick)."""
    arg = parse_arg(arg, dataset="xsum", bits="W1E1A1", weights="tbt", hf="", code_terms=True,
                    quick=False, stage="student", teacher="runs/tbt_quick_teacher", steps=0)
    if arg.dataset not in DECODING:
        raise ValueError(f"dataset must be one of {sorted(DECODING)}, got {arg.dataset!r}")
    if arg.bits not in BITS:
        raise ValueError(f"bits must be one of {list(BITS)}, got {arg.bits!r}")
    if arg.stage not in ("student", "teacher"):
        raise ValueError(f"stage must be 'student' or 'teacher', got {arg.stage!r}")
    if arg.stage == "teacher" and not arg.quick:
        raise ValueError("stage=teacher is the quick float teacher; the full recipe's teacher "
                         "is the fine-tuned checkpoint hf=DIR")
    c = defaults()
    student = arg.stage == "student"
    c.log_every = 10 if arg.quick else 100
    c.checkpoint_every = 1000
    if arg.quick:
        c.data = dict(QUICK_DATA)
        c.total_steps = arg.steps or (400 if student else 1000)
        bits = dict(bits=arg.bits, weights=arg.weights) if student else {}
        c.model = dict(name="bart", **QUICK, **bits)
        c.task = dict(name="seq2seq", label_smoothing=0.0,
                      generate=dict(strategy="beam", num_beams=2, max_new_tokens=11,
                                    metric="rouge"))
        c.optimizer = dict(name="adamw", learning_rate=5e-3,
                           weight_decay=0.0, schedule="warmup_linear",
                           warmup_steps=max(c.total_steps // 20, 1), end_factor=0.0)
        if student:
            c.kd = dict(enabled=True, teacher_model=dict(name="bart", **QUICK),
                        teacher_workdir=arg.teacher, task_weight=1.0,
                        terms=tbt_terms((2, 2), (2, 2), code_terms=arg.code_terms,
                                        device_batch=QUICK_DATA["batch_size"]))
        return c
    hf = arg.hf or HF[arg.dataset]
    c.data = dict(name=arg.dataset, source="hf", data_dir="", tokenizer=hf,
                  max_source_len=1024, max_target_len=128, batch_size=BATCH, eval_batch_size=32)
    c.total_steps = EPOCHS * math.ceil(TRAIN_EXAMPLES[arg.dataset] / BATCH)
    # XSUM/CNN: TBT's 6+6 student from the 6+6 fine-tuned BART-base; mBART keeps its depth.
    six = arg.dataset != "wmt16_ro_en"
    c.model = dict(name="bart" if six else "mbart", bits=arg.bits, weights=arg.weights,
                   pretrained=hf, **(dict(encoder_layers=6, decoder_layers=6) if six else {}))
    c.task = dict(name="seq2seq", label_smoothing=0.0, generate=dict(DECODING[arg.dataset]))
    c.optimizer = dict(name="adamw", learning_rate=LR[arg.dataset][arg.bits], weight_decay=0.0,
                       schedule="warmup_linear", warmup_steps=int(0.05 * c.total_steps),
                       end_factor=0.0)
    c.kd = dict(enabled=True, teacher_import=hf, task_weight=1.0,
                terms=tbt_terms(*[(6, 6) if six else MBART_LAYERS] * 2,
                                code_terms=arg.code_terms))
    return c

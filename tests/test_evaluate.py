"""``python -m bnn_jax.evaluate``: a finished tiny run re-evaluated from its newest checkpoint
gives the run's own final metrics (ROUGE of beam search, accuracy), recorded without touching
anything else; missing runs and checkpoints are clear errors."""

import json
import os

import pytest

from bnn_jax import evaluate
from bnn_jax.train import config as config_lib, run


def tiny_run(workdir):
    c = config_lib.defaults()
    c.total_steps, c.log_every, c.checkpoint_every = 3, 1, 3
    c.tensorboard, c.async_checkpoint = False, False
    c.mesh.num_devices = 1
    c.data = dict(name="synthetic_seq2seq", batch_size=8, eval_batch_size=8, num_train=32,
                  num_test=8, seq_len=8, vocab_size=16)
    c.task = dict(name="seq2seq", generate=dict(strategy="beam", num_beams=2, max_new_tokens=7))
    c.model = dict(name="bart", hidden=16, ffn=16, encoder_layers=1, decoder_layers=1,
                   encoder_heads=2, bits="W1E1A1")
    c.optimizer = dict(name="adam", learning_rate=1e-2)
    return run(c, str(workdir))


@pytest.mark.slow  # a 3-step W1E1A1 BART run and its re-evaluation: ~30 s
def test_evaluate_reproduces_the_final_metrics_and_records_them(tmp_path, capsys):
    wd = tmp_path / "run"
    result = tiny_run(wd)
    summary_before = (wd / "summary.md").read_text()
    files_before = sorted(os.listdir(wd))
    lines_before = (wd / "metrics.jsonl").read_text()
    assert evaluate.main(["--workdir", str(wd)]) == 0
    assert "rouge1" in capsys.readouterr().out
    lines = (wd / "metrics.jsonl").read_text()
    assert lines.startswith(lines_before)
    record = json.loads(lines.splitlines()[-1])
    assert record["split"] == "evaluate" and record["step"] == 3
    for k in ("rouge1", "rouge2", "rougeL", "accuracy", "loss"):
        assert record[k] == pytest.approx(result[f"test_{k}"], abs=1e-6), k
    summary = (wd / "summary.md").read_text()
    assert summary.startswith(summary_before) and evaluate.SECTION in summary
    assert "num_beams=2" in summary
    # A rerun replaces its own section, nothing else.
    evaluate.evaluate(str(wd), max_examples=4)
    again = (wd / "summary.md").read_text()
    assert again.count(evaluate.SECTION) == 1 and again.startswith(summary_before)
    assert "first 4 examples decoded" in again
    assert len((wd / "metrics.jsonl").read_text().splitlines()) == len(lines.splitlines()) + 1
    assert sorted(os.listdir(wd)) == files_before  # no new files, none removed


def test_missing_workdir_config_or_checkpoint_are_clear_errors(tmp_path, capsys):
    assert evaluate.main(["--workdir", str(tmp_path / "nope")]) == 1
    assert "is not a directory" in capsys.readouterr().err
    with pytest.raises(ValueError, match="has no config.json: it is not a bnn_jax run"):
        evaluate.evaluate(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(config_lib.defaults().to_dict()))
    with pytest.raises(ValueError, match="has no checkpoint under checkpoints/ yet"):
        evaluate.evaluate(str(tmp_path))
    assert evaluate.main(["--workdir", str(tmp_path), "--max_examples", "0"]) == 1

"""End to end, as a user runs it: real fairseq-train with the plugin and quantization flags, a saved checkpoint,
evaluate.py reading it back with and without post-training quantization."""
import csv
import json
import re

import torch
from conftest import binarize, fairseq_train, rule_rows, run_evaluate

from fairseq_quant.checkpoint import load_checkpoint


def result(proc) -> dict:
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


def test_qat_training_writes_quantizer_state_into_checkpoint(qat_run):
    log = (qat_run / "train.log").read_text()
    assert "QuantizedMultiheadAttention" in log  # fairseq prints the wrapped model
    assert re.search(r"num_updates 12\b", log)
    state = load_checkpoint(str(qat_run / "checkpoint_last.pt"))
    model = state["model"]
    key = "encoder.sentence_encoder.layers.0.fc1.input_quant"
    assert model[f"{key}.num_batches_tracked"].item() == 12  # one range update per training step
    assert model[f"{key}.running_max"].item() > 0
    probs = "encoder.sentence_encoder.layers.1.self_attn.probs_quant"
    assert 0 < model[f"{probs}.running_max"].item() <= 1.0  # softmax probabilities
    assert state["cfg"]["model"].quantw and state["cfg"]["model"].bitsin == 8


def test_evaluate_reads_back_with_trained_ranges_and_with_ptq(qat_run, tiny_data, tmp_path):
    ckpt = str(qat_run / "checkpoint_last.pt")
    table = tmp_path / "results.csv"
    as_trained = result(run_evaluate("--checkpoint", ckpt, "--data", str(tiny_data), "--split", "valid",
                                     "--csv", str(table), "--tag", "qat"))
    assert as_trained["quant"] == "W8A8" and as_trained["n"] == 64
    assert 0.0 <= as_trained["accuracy"] <= 1.0
    ptq = result(run_evaluate("--checkpoint", ckpt, "--data", str(tiny_data), "--split", "valid",
                              "--quantw", "--bitsw", "4", "--calib-batches", "2", "--csv", str(table)))
    assert ptq["quant"] == "W4A8" and ptq["calib_batches"] == 2
    rows = list(csv.DictReader(table.open()))
    assert [r["quant"] for r in rows] == ["W8A8", "W4A8"]


def test_fp32_plain_roberta_checkpoint_is_post_training_quantized(tiny_data, tmp_path):
    save = tmp_path / "fp32"
    fairseq_train(tiny_data, save, "--max-update", "4", "--arch", "roberta", "--encoder-layers", "1",
                  "--encoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2")
    ckpt = str(save / "checkpoint_last.pt")
    fp32 = result(run_evaluate("--checkpoint", ckpt, "--data", str(tiny_data)))
    w8a8 = result(run_evaluate("--checkpoint", ckpt, "--data", str(tiny_data), "--quantw", "--quantin"))
    w2a2 = result(run_evaluate("--checkpoint", ckpt, "--data", str(tiny_data), "--quantw", "--quantin",
                               "--bitsw", "2", "--bitsin", "2", "--dynamic-qparams"))
    assert (fp32["quant"], w8a8["quant"], w2a2["quant"]) == ("FP32", "W8A8", "W2A2")
    assert abs(fp32["accuracy"] - w8a8["accuracy"]) <= 2 / 64  # 8 bits: at most a couple of flipped predictions


def test_evaluate_bad_input_names_the_flag(qat_run, tiny_data, tmp_path):
    ckpt = str(qat_run / "checkpoint_last.pt")
    missing = run_evaluate("--checkpoint", str(tmp_path / "nope.pt"), "--data", str(tiny_data), check=False)
    assert missing.returncode == 2 and "--checkpoint: no such file" in missing.stderr
    bits = run_evaluate("--checkpoint", ckpt, "--data", str(tiny_data), "--bitsw", "17", check=False)
    assert bits.returncode == 2 and "--bitsw" in bits.stderr and "from 2 to 16" in bits.stderr
    frac = run_evaluate("--checkpoint", ckpt, "--data", str(tiny_data), "--bitsin", "4.5", check=False)
    assert frac.returncode == 2 and "--bitsin" in frac.stderr
    both = run_evaluate("--checkpoint", ckpt, "--data", str(tiny_data), "--quantw", "--measurew", check=False)
    assert both.returncode == 2 and "cannot be combined" in both.stderr
    split = run_evaluate("--checkpoint", ckpt, "--data", str(tiny_data), "--split", "test", check=False)
    assert split.returncode == 2 and "no split 'test'" in split.stderr
    other_vocab = binarize(tmp_path / "other", {"train": [(f"x{i} y{i} z{i}", str(i % 3)) for i in range(60)]})
    wrong = run_evaluate("--checkpoint", ckpt, "--data", str(other_vocab), "--split", "train", check=False)
    assert wrong.returncode == 2 and "another task" in wrong.stderr
    assert "Traceback" not in wrong.stderr + both.stderr + missing.stderr


def test_fairseq_train_rejects_bad_flags_at_parse_time(tiny_data, tmp_path):
    for flags, needle in ((["--bitsw", "1"], "--bitsw"), (["--bitsin", "eight"], "--bitsin"),
                          (["--quantin", "--measurein"], "cannot be combined"),
                          (["--quantw-granularity", "row"], "--quantw-granularity")):
        try:
            fairseq_train(tiny_data, tmp_path / "bad", "--max-update", "1", *flags, timeout=120)
        except AssertionError as e:
            text = str(e)
            assert "error:" in text and needle in text, text
            assert "Traceback" not in text, text
        else:
            raise AssertionError(f"{flags} was accepted")


def test_freeze_trains_only_the_head(tiny_data, tmp_path):
    save = tmp_path / "frozen"
    fairseq_train(tiny_data, save, "--max-update", "3", "--freeze", "--quantw", "--quantin", "--save-interval-updates",
                  "1", "--keep-interval-updates", "10", "--no-save-optimizer-state")
    first = load_checkpoint(str(save / "checkpoint_1_1.pt"))["model"]
    last = load_checkpoint(str(save / "checkpoint_1_3.pt"))["model"]
    enc = "encoder.sentence_encoder.layers.0.fc1.weight"
    head = "classification_heads.sentence_classification_head.out_proj.weight"
    assert torch.equal(first[enc], last[enc])
    assert not torch.equal(first[head], last[head])

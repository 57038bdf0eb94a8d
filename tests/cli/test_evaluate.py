"""End to end, as a user runs it: real fairseq-train with the plugin and quantization flags, a saved checkpoint,
evaluate.py reading it back with and without post-training quantization."""
import csv
import inspect
import json
import re

import pytest
import torch
from fairseq import options
from helpers import TINY_TRAIN, accuracy_by_hand, binarize, fairseq_train, run_evaluate, run_in_process

from fairseq_quant.cli.evaluate import cli_main
from fairseq_quant.plugin.checkpoint import load_checkpoint


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
    accuracy, quantized = accuracy_by_hand(ckpt, str(tiny_data))
    assert as_trained["accuracy"] == accuracy and quantized  # the metric of the quantized model, computed apart
    ptq = result(run_evaluate("--checkpoint", ckpt, "--data", str(tiny_data), "--split", "valid",
                              "--quantw", "--bitsw", "4", "--calib-batches", "2", "--csv", str(table)))
    assert ptq["quant"] == "W4A8" and ptq["calib_batches"] == 2
    rows = list(csv.DictReader(table.open()))
    assert [r["quant"] for r in rows] == ["W8A8", "W4A8"]


def evaluate_in_process(capsys, *argv: str) -> tuple[int, str, str]:
    """evaluate.py's ``cli_main`` in this process (same code path, no interpreter start-up): (exit code, out, err)."""
    return run_in_process(capsys, cli_main, *argv)


def test_fp32_plain_roberta_checkpoint_is_post_training_quantized(plain_roberta_run, tiny_data, capsys):
    common = ("--checkpoint", str(plain_roberta_run / "checkpoint_last.pt"), "--data", str(tiny_data))
    runs = {}
    for name, flags in (("fp32", ()), ("w8a8", ("--quantw", "--quantin")),
                        ("w2a2", ("--quantw", "--quantin", "--bitsw", "2", "--bitsin", "2", "--dynamic-qparams"))):
        code, out, err = evaluate_in_process(capsys, *common, *flags)
        assert code == 0, err
        runs[name] = json.loads(out.strip().splitlines()[-1])
    assert [runs[k]["quant"] for k in ("fp32", "w8a8", "w2a2")] == ["FP32", "W8A8", "W2A2"]
    assert abs(runs["fp32"]["accuracy"] - runs["w8a8"]["accuracy"]) <= 2 / 64  # at most two flipped predictions


def test_evaluate_bad_input_names_the_flag(qat_run, tiny_data, tmp_path, capsys):
    ckpt = str(qat_run / "checkpoint_last.pt")
    data = str(tiny_data)
    other_vocab = binarize(tmp_path / "other", {"train": [(f"x{i} y{i} z{i}", str(i % 3)) for i in range(60)]})
    cases = [
        (("--checkpoint", str(tmp_path / "nope.pt"), "--data", data), "--checkpoint: no such file"),
        (("--checkpoint", ckpt, "--data", data, "--bitsw", "17"), "from 2 to 16"),
        (("--checkpoint", ckpt, "--data", data, "--bitsin", "4.5"), "argument --bitsin: invalid bit width '4.5'"),
        (("--checkpoint", ckpt, "--data", data, "--quantw", "--measurew"), "cannot be combined"),
        (("--checkpoint", ckpt, "--data", data, "--split", "test"), "no split 'test'"),
        (("--checkpoint", ckpt, "--data", str(other_vocab), "--split", "train"), "another task"),
        (("--checkpoint", ckpt, "--data", str(tmp_path)), "is not binarized sentence-prediction data"),
    ]
    for argv, needle in cases:
        code, out, err = evaluate_in_process(capsys, *argv)
        assert code == 2 and needle in err, (argv, err)
        assert "Traceback" not in err and out == ""


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_evaluate_refuses_unsafe_or_uncalibrated_input_in_one_line(plain_roberta_run, tiny_data, tmp_path, capsys):
    crafted, marker = tmp_path / "crafted.pt", tmp_path / "MARKER"
    torch.save({"model": _RunsCode(marker)}, crafted)
    fp32 = str(plain_roberta_run / "checkpoint_last.pt")
    cases = [
        (("--checkpoint", str(crafted), "--data", str(tiny_data)),
         "holds global(s) posix.system not on fairseq-quant's allowlist (fairseq_quant.plugin.checkpoint"),
        # PTQ for the kernels needs recorded ranges: an FP32 checkpoint has none until calibrated
        (("--checkpoint", fp32, "--data", str(tiny_data), "--quantw", "--quantin", "--backend", "triton"),
         "it has recorded no ranges: calibrate it first (evaluate.py --calib-batches N)"),
    ]
    for argv, needle in cases:
        code, out, err = evaluate_in_process(capsys, *argv)
        assert code == 2 and needle in err, (argv, err)
        assert "Traceback" not in err and out == "" and len(err.strip().splitlines()[-1]) > 0
    assert not marker.exists()


def test_fairseq_train_rejects_bad_flags_at_parse_time(tiny_data, tmp_path, capsys):
    with pytest.raises(AssertionError, match=r"argument --bitsw: invalid bit width '1': expected an integer from 2"):
        fairseq_train(tiny_data, tmp_path / "bad", "--max-update", "1", "--bitsw", "1", timeout=120)
    for flags, needle in ((["--bitsin", "eight"], "argument --bitsin: invalid bit width 'eight'"),
                          (["--quantin", "--measurein"], "--quantin and --measurein cannot be combined"),
                          (["--quantw-granularity", "row"], "argument --quantw-granularity: invalid choice")):
        with pytest.raises(SystemExit):
            options.parse_args_and_arch(options.get_training_parser(), [str(tiny_data), *TINY_TRAIN, *flags])
        assert needle in capsys.readouterr().err


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


def test_fairseq_train_help_lists_the_quantization_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        options.parse_args_and_arch(options.get_training_parser(), ["data", *TINY_TRAIN, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--quantw", "--quantin", "--bitsw N", "--bitsin N", "--measurew", "--measurein", "--freeze",
                 "--quantw-range", "--quantin-range", "--quantw-granularity", "--dynamic-qparams",
                 "--qparams-momentum", "--encoder-layers"):  # ours, and roberta's own
        assert flag in out, flag


def test_help_without_the_patch_lists_no_model_options(capsys):
    """The fairseq bug the help patch fixes: unpatched, --help exits before model options are added."""
    original = inspect.unwrap(options.parse_args_and_arch)
    with pytest.raises(SystemExit):
        original(options.get_training_parser(), ["data", *TINY_TRAIN, "--help"])
    out = capsys.readouterr().out
    assert "--encoder-layers" not in out and "--quantw" not in out


def test_help_without_data_directory_still_lists_model_options(capsys):
    argv = [a for a in TINY_TRAIN] + ["--help"]
    with pytest.raises(SystemExit) as exit_info:
        options.parse_args_and_arch(options.get_training_parser(), argv)
    assert exit_info.value.code == 0
    assert "--bitsw N" in capsys.readouterr().out

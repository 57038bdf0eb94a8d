"""Cyclic precision training: the pure schedule, cfg_cpt.json validation, the model's bits in training and
evaluation, the bit-operations account, and real fairseq-train runs (logs, --max-epoch length, exact resume)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, TINY_TRAIN, fairseq_train, run_evaluate, tiny_batch, tiny_model

from fairseq_quant.core.schedule import (
    CPTConfig,
    CPTConfigError,
    CyclicPrecisionScheduler,
    cyclic_bits,
    load_cpt_config,
    parse_eval_bits,
    staircase_bits,
)
from fairseq_quant.plugin.checkpoint import load_checkpoint

CFG = REPO / "configs" / "cfg_cpt.json"
VALID = {"wbit_min": 4, "wbit_max": 8, "inbit_min": 3, "inbit_max": 6, "num_cyclic_period": 3}


# --- the schedule -------------------------------------------------------------------------------------------

def test_schedule_pinned_values_two_cycles_of_four():
    assert [cyclic_bits(t, 8, 4, 8, 2) for t in range(8)] == [4, 5, 6, 7, 4, 5, 6, 7]


def test_schedule_rises_from_min_at_every_cycle_start_and_ends_near_max():
    # 3 cycles of 100 updates, 2..8 bits: min at each boundary, max reached inside each cycle, last update 8
    bits = [cyclic_bits(t, 300, 2, 8, 3) for t in range(300)]
    assert bits[0] == bits[100] == bits[200] == 2
    assert bits[50] == bits[150] == 5  # half way: (2 + 8) / 2
    assert bits[99] == bits[199] == bits[299] == 8
    for c in range(3):
        cycle = bits[100 * c: 100 * (c + 1)]
        assert cycle == sorted(cycle)  # each cycle rises from min to max


def test_schedule_matches_the_cpt_reference_formula_when_the_period_divides_the_run():
    # github.com/GATECH-EIC/CPT: (min+max)/2 - (max-min)/2 * cos((t % period) / period * pi), np.rint
    total, cycles, lo, hi = 96, 4, 3, 8
    period = total // cycles
    ref = [int(np.rint((lo + hi) / 2 - (hi - lo) / 2 * np.cos((t % period) / period * np.pi))) for t in range(total)]
    assert [cyclic_bits(t, total, lo, hi, cycles) for t in range(total)] == ref


def test_schedule_with_fractional_cycles_pins_values():
    # 10 updates, 3 cycles of 10/3 updates each: phases 0, .3, .6, .9, .2, .5, .8, .1, .4, .7
    assert [cyclic_bits(t, 10, 2, 8, 3) for t in range(10)] == [2, 3, 6, 8, 3, 5, 7, 2, 4, 7]


def test_scheduler_gives_weight_and_input_bits_separately():
    s = CyclicPrecisionScheduler(CPTConfig(**VALID), total_updates=30)
    assert s.bits_at(0) == (4, 3)
    assert s.bits_at(5) == (6, 4)  # phase .5: weights (4+8)/2, inputs 4.5 -> 4 (half to even)
    assert s.bits_at(29) == (8, 6)


def test_input_offset_shifts_the_inputs_cycles_against_the_weights():
    # 2 cycles of 4 updates, both 4..8 bits; the inputs half a cycle ahead: each is high where the other is low
    s = CyclicPrecisionScheduler(CPTConfig(**{**VALID, "inbit_max": 8, "inbit_min": 4, "num_cyclic_period": 2,
                                              "input_offset": 0.5}), total_updates=8)
    assert [s.bits_at(t) for t in range(8)] == [(4, 6), (5, 7), (6, 4), (7, 5)] * 2
    assert [cyclic_bits(t, 8, 4, 8, 2, offset=0.5) for t in range(8)] == [6, 7, 4, 5] * 2
    # the product of the bits, what a GEMM's bit operations go as, falls: 3..8 weights, 6..8 inputs, 8 cycles
    def cost(offset):
        s = CyclicPrecisionScheduler(CPTConfig(3, 8, 6, 8, 8, input_offset=offset), 600)
        return sum(w * a for w, a in map(s.bits_at, range(600))) / (64 * 600)
    assert cost(0.0) == pytest.approx(0.619, abs=1e-3) and cost(0.5) == pytest.approx(0.585, abs=1e-3)


def test_input_offset_is_saved_with_the_config():
    c = CPTConfig.from_dict({**VALID, "input_offset": 0.25})
    assert c.input_offset == 0.25 and CPTConfig.from_dict(json.loads(c.to_json())) == c
    assert CPTConfig.from_dict(VALID).input_offset == 0.0  # files (and checkpoints) from before: in phase


def test_constant_schedule_when_min_equals_max():
    assert {cyclic_bits(t, 50, 6, 6, 5) for t in range(50)} == {6}


def test_more_cycles_than_updates_is_refused():
    with pytest.raises(CPTConfigError, match=r"num_cyclic_period \(3\) exceeds the number of updates of the run \(2\)"):
        CyclicPrecisionScheduler(CPTConfig(**VALID), total_updates=2)


# --- cfg_cpt.json -------------------------------------------------------------------------------------------

def write(tmp_path: Path, content) -> str:
    path = tmp_path / "cfg_cpt.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_example_configs_are_valid():
    for path in sorted((REPO / "configs").glob("cfg_cpt*.json")):
        load_cpt_config(str(path))
    # the recommendation for fine-tuning pretrained encoders, with --estimatorw mse_grid (docs/cpt.md): weights 2-8
    # bits, inputs 6-8, 8 cycles
    assert load_cpt_config(str(CFG)) == CPTConfig(2, 8, 6, 8, 8)


@pytest.mark.parametrize("change, message", [
    ({"wbit_min": None}, "missing key(s) wbit_min (the keys are wbit_min, wbit_max, inbit_min, inbit_max, "
                         "num_cyclic_period, and optionally schedule, input_offset)"),
    ({"num_cycles": 2}, "unknown key(s) num_cycles (the keys are wbit_min, wbit_max, inbit_min, inbit_max, "
                        "num_cyclic_period, and optionally schedule, input_offset)"),
    ({"schedule": "linear"}, "schedule must be one of cosine, staircase, got 'linear'"),
    ({"schedule": "staircase"}, "the staircase schedule rises once over the run: num_cyclic_period must be 1, got 3"),
    ({"wbit_min": 4.0}, "wbit_min must be an integer, got 4.0"),
    ({"inbit_max": "8"}, "inbit_max must be an integer, got '8'"),
    ({"inbit_max": True}, "inbit_max must be an integer, got True"),
    ({"wbit_min": 9}, "wbit_min (9) must not exceed wbit_max (8)"),
    ({"inbit_min": 1}, "inbit_min must be an integer from 2 to 16, got 1"),
    ({"wbit_max": 17}, "wbit_max must be an integer from 2 to 16, got 17"),
    ({"num_cyclic_period": 0}, "num_cyclic_period must be an integer >= 1, got 0"),
    ({"input_offset": 1}, "input_offset must be a number in [0, 1) (a fraction of a cycle), got 1"),
    ({"input_offset": "0.5"}, "input_offset must be a number in [0, 1) (a fraction of a cycle), got '0.5'"),
    ({"input_offset": 0.5, "schedule": "staircase", "num_cyclic_period": 1},
     "the staircase schedule has no cycles to offset: input_offset must be 0, got 0.5"),
])
def test_bad_config_names_the_key_and_the_allowed_values(tmp_path, change, message):
    data = {k: v for k, v in {**VALID, **change}.items() if v is not None}
    path = write(tmp_path, data)
    with pytest.raises(CPTConfigError) as e:
        load_cpt_config(path)
    assert str(e.value) == f"{path}: {message}"


def test_missing_file_and_bad_json(tmp_path):
    with pytest.raises(CPTConfigError, match="--cpt-config: no such file: .*nope.json"):
        load_cpt_config(str(tmp_path / "nope.json"))
    with pytest.raises(CPTConfigError, match="is not valid JSON"):
        load_cpt_config(write(tmp_path, '{"wbit_min": 4,'))
    with pytest.raises(CPTConfigError, match="expected a JSON object"):
        load_cpt_config(write(tmp_path, "[4, 8]"))


def test_eval_bits():
    c = CPTConfig(**VALID)
    assert parse_eval_bits("max", c) == (8, 6)
    assert parse_eval_bits("min", c) == (4, 3)
    assert parse_eval_bits("6,8", c) == (6, 8)
    with pytest.raises(CPTConfigError, match="--cpt-eval-bits: expected max, min or W,I"):
        parse_eval_bits("6,99", c)


# --- the model ----------------------------------------------------------------------------------------------

def weight_and_input_bits(model) -> tuple[set[int], set[int]]:
    w = {q.spec.bits for n, q in model.named_modules() if n.endswith("weight_quant") and q is not None}
    i = {q.spec.bits for n, q in model.named_modules() if n.endswith("input_quant") and q is not None}
    return w, i


def test_model_uses_the_schedule_in_training_and_fixed_bits_in_evaluation(tmp_path):
    path = write(tmp_path, VALID)
    model = tiny_model(["--quantw", "--quantin", "--cpt-config", path], max_update=30)
    model.train()
    assert weight_and_input_bits(model) == ({8}, {6})  # before the first update: the evaluation bits
    model.set_num_updates(5)
    assert weight_and_input_bits(model) == ({6}, {4})
    model.eval()
    assert weight_and_input_bits(model) == ({8}, {6})  # --cpt-eval-bits max
    model.train()
    assert weight_and_input_bits(model) == ({6}, {4})
    model.set_num_updates(0)
    assert weight_and_input_bits(model) == ({4}, {3})


def test_eval_bits_flag_chooses_the_fixed_precision(tmp_path):
    model = tiny_model(["--quantw", "--quantin", "--cpt-config", write(tmp_path, VALID), "--cpt-eval-bits", "5,7"],
                       max_update=30)
    model.eval()
    assert weight_and_input_bits(model) == ({5}, {7})


def test_bitops_account_counts_gemm_macs_times_bits():
    model = tiny_model(["--quantw", "--quantin", "--bitsw", "4", "--bitsin", "6"])
    tokens = tiny_batch(batch=3, length=10)
    model.train()
    model(tokens, features_only=True, classification_head_name="sentence_classification_head")
    # tiny: 2 layers, dim 64, ffn 128; per token per layer q,k,v,out 4*64*64 + fc1, fc2 2*64*128
    tokens_n = 3 * 10
    linear = tokens_n * 2 * (4 * 64 * 64 + 2 * 64 * 128) + 3 * (64 * 64 + 64 * 2)  # + head on <s>: dense, out
    attention = 2 * (2 * 3 * 10 * 10 * 64)  # 2 layers x (q k^T and probs v)
    macs, bitops = model.bitops_counter.totals()
    assert macs == linear + attention
    assert bitops == linear * 4 * 6 + attention * 6 * 6
    # the backward GEMMs, separately: two per forward GEMM, gradients (32 bits) times the forward operand
    assert model.bitops_counter.backward_totals() == (2 * macs, linear * 32 * (4 + 6) + attention * 2 * 32 * 6)
    model.eval()  # evaluation forwards are not training work
    model(tokens, features_only=True, classification_head_name="sentence_classification_head")
    assert model.bitops_counter.totals() == (macs, bitops)
    state = model.state_dict()
    assert state["bitops_counter.bitops"].item() == bitops and state["bitops_counter.bitops"].dtype == torch.float64
    fresh = tiny_model(["--quantw", "--quantin"])
    fresh.load_state_dict(state)
    assert fresh.bitops_counter.totals() == (macs, bitops)
    del state["bitops_counter.macs"], state["bitops_counter.bitops"]  # checkpoints from before the account
    fresh.load_state_dict(state)
    assert fresh.bitops_counter.totals() == (0.0, 0.0)


def test_bitops_totals_stay_float64_when_the_model_is_cast():
    model = tiny_model(["--quantw"])
    model.half()
    assert model.bitops_counter.bitops.dtype == torch.float64


# --- fairseq-train, as a user runs it ---------------------------------------------------------------------

FIELDS = ("num_updates", "wbits", "inbits", "macs", "bitops", "bw_macs", "bw_bitops", "loss", "accuracy")


def train_inner(log: str) -> dict[int, dict[str, str]]:
    """{num_updates: {field: value as logged}} from fairseq's simple-format train_inner lines."""
    rows = {}
    for line in log.splitlines():
        if "| train_inner |" in line:
            kv = dict(re.findall(r"(\w+)=([^,\s]+)", line))
            rows[int(kv["num_updates"])] = {k: kv[k] for k in FIELDS if k in kv}
    return rows


@pytest.fixture(scope="module")
def max_epoch_run(tiny_data, tmp_path_factory) -> tuple[Path, str]:
    """A CPT run given --max-epoch 2 --update-freq 3 (no --max-update); returns (save dir, log)."""
    tmp = tmp_path_factory.mktemp("cpt_max_epoch")
    cfg = write(tmp, {**VALID, "num_cyclic_period": 2})
    proc = fairseq_train(tiny_data, tmp / "run", "--quantw", "--quantin", "--cpt-config", cfg,
                         "--max-epoch", "2", "--update-freq", "3")
    return tmp / "run", proc.stdout + proc.stderr


def test_max_epoch_run_logs_the_schedule_and_the_account(max_epoch_run):
    _, log = max_epoch_run
    rows = train_inner(log)
    # 256 sentences / 16 = 16 batches per epoch, grouped by 3 -> ceil(16/3) = 6 updates per epoch, 12 in all
    assert "16 batches per epoch, update_freq [3], 2 epochs -> 12 updates" in log
    assert max(rows) == 12
    scheduler = CyclicPrecisionScheduler(CPTConfig(**{**VALID, "num_cyclic_period": 2}), 12)
    for n, row in rows.items():
        assert (int(row["wbits"]), int(row["inbits"])) == scheduler.bits_at(n - 1)
    assert [rows[n]["wbits"] for n in sorted(rows)] == ["4", "4", "5", "6", "7", "8"] * 2  # phases k/6
    bitops = [float(rows[n]["bitops"]) for n in sorted(rows)]
    assert all(b > a for a, b in zip(bitops, bitops[1:]))
    macs = float(rows[12]["macs"])
    assert 4 * 3 * macs < float(rows[12]["bitops"]) < 8 * 6 * macs


def test_validation_and_evaluate_use_the_evaluation_precision(max_epoch_run, tiny_data):
    save, log = max_epoch_run
    valid = re.findall(r"valid on 'valid' subset \| loss [\d.]+ \| nll_loss [\d.]+ \| accuracy ([\d.]+)", log)
    out = json.loads(run_evaluate("--checkpoint", str(save / "checkpoint_last.pt"), "--data", str(tiny_data),
                                  "--cpu").stdout.strip().splitlines()[-1])
    assert out["quant"] == "W8A6"  # the top of the cycle, saved with the checkpoint
    assert round(100 * out["accuracy"], 1) == float(valid[-1])


BAD_FLAGS = [
    (["--cpt-config", "{bad}"], "argument --cpt-config: {bad}: wbit_min (9) must not exceed wbit_max (8)"),
    (["--cpt-config", "missing.json"], "argument --cpt-config: --cpt-config: no such file: missing.json"),
    (["--cpt-config", "{good}", "--quantw", "--max-update", "2"],
     "num_cyclic_period (3) in the --cpt-config file exceeds --max-update (2)"),
    (["--cpt-config", "{good}", "--max-update", "20"], "--cpt-config cycles the bit widths of quantized weights "
                                                       "and inputs: it needs --quantw and/or --quantin"),
    (["--cpt-config", "{good}", "--quantin"], "--cpt-config needs the length of the run: give --max-update or "
                                              "--max-epoch"),
    (["--cpt-config", "{good}", "--quantin", "--max-update", "20", "--cpt-eval-bits", "high"],
     "argument --cpt-eval-bits: --cpt-eval-bits: expected max, min or W,I"),
]


def bad_flags(tmp_path: Path, flags: list[str], message: str) -> tuple[list[str], str]:
    good, bad = write(tmp_path, VALID), str(tmp_path / "bad.json")
    Path(bad).write_text(json.dumps({**VALID, "wbit_min": 9}))
    return [f.format(good=good, bad=bad) for f in flags], message.format(good=good, bad=bad)


@pytest.mark.parametrize("flags, message", BAD_FLAGS)
def test_bad_cpt_flags_are_usage_errors(tmp_path, capsys, flags, message):
    from fairseq import options

    flags, message = bad_flags(tmp_path, flags, message)
    with pytest.raises(SystemExit) as e:
        options.parse_args_and_arch(options.get_training_parser(), ["data", *TINY_TRAIN, *flags])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_fairseq_train_reports_a_bad_cpt_config_before_training(tiny_data, tmp_path):
    flags, message = bad_flags(tmp_path, *BAD_FLAGS[2])
    cmd = [sys.executable, "-m", "fairseq_cli.train", str(tiny_data), "--save-dir", str(tmp_path / "s"),
           *TINY_TRAIN, *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 2
    assert f"fairseq-train: error: {message}" in proc.stderr.replace("train.py: error", "fairseq-train: error")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "s").exists()


def test_resume_after_a_kill_mid_cycle_matches_an_uninterrupted_run(tiny_data, tmp_path):
    """Kill a CPT run after its checkpoint at update 6, restart it: schedule, losses, account and final weights
    equal those of the run that was never stopped."""
    cfg = write(tmp_path, {**VALID, "num_cyclic_period": 5})
    flags = ["--quantw", "--quantin", "--cpt-config", cfg, "--max-update", "16", "--save-interval-updates", "6",
             "--dropout", "0.1"]
    whole = train_inner(fairseq_train(tiny_data, tmp_path / "whole", *flags).stdout)
    assert sorted(whole) == list(range(1, 17))

    save = tmp_path / "killed"
    cmd = [sys.executable, "-m", "fairseq_cli.train", str(tiny_data), "--save-dir", str(save), *TINY_TRAIN, *flags]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        for line in proc.stdout:
            if "| train_inner |" in line and "num_updates=7," in line:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=60)
    stopped_at = load_checkpoint(str(save / "checkpoint_last.pt"))["optimizer_history"][-1]["num_updates"]
    assert 6 <= stopped_at < 16
    assert CyclicPrecisionScheduler(CPTConfig(**{**VALID, "num_cyclic_period": 5}), 16).bits_at(stopped_at)[0] > 4

    resumed = train_inner(fairseq_train(tiny_data, save, *flags).stdout)
    assert sorted(resumed) == list(range(stopped_at + 1, 17))
    for n in resumed:
        assert resumed[n] == whole[n], f"update {n}"
    a = load_checkpoint(str(tmp_path / "whole" / "checkpoint_last.pt"))["model"]
    b = load_checkpoint(str(save / "checkpoint_last.pt"))["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k



def test_a_run_that_resets_its_meters_starts_its_account_at_zero(tiny_data, tmp_path):
    """QAT from an FP32 checkpoint with --restore-file --reset-optimizer --reset-meters is a new run: its account
    starts at zero (it continued the FP32 run's). A plain resume continues it (test_resume_after_a_kill...)."""
    first = train_inner(fairseq_train(tiny_data, tmp_path / "fp32", "--max-update", "3").stdout)
    qat = train_inner(fairseq_train(
        tiny_data, tmp_path / "qat", "--quantw", "--quantin", "--max-update", "2", "--restore-file",
        str(tmp_path / "fp32" / "checkpoint_last.pt"), "--reset-optimizer", "--reset-meters",
        "--reset-dataloader").stdout)
    assert float(first[3]["macs"]) > 0
    step = float(qat[1]["macs"])  # one update's forward MACs, nothing carried over
    assert float(qat[2]["macs"]) == pytest.approx(2 * step, rel=0.3)  # batches differ in length a little
    assert float(qat[1]["bitops"]) == pytest.approx(64 * step, rel=1e-4)
    assert float(qat[1]["bw_macs"]) == pytest.approx(2 * step, rel=1e-4)
    assert float(qat[1]["bw_bitops"]) == pytest.approx(32 * 16 * step, rel=1e-4)  # 32-bit gradients x (8 + 8)


def test_points_kept_at_a_fixed_precision_while_the_rest_cycles(tmp_path):
    """CPT per point: --quant-dict fixes the FFN residual sum y, the token embeddings Et and the FFN input x at
    8 bits while the base bits cycle; the account counts fc1 (whose input is x) at its own 8 input bits."""
    cfg = write(tmp_path, {**VALID, "inbit_min": 4, "inbit_max": 8})  # 4-8 bits for weights and inputs
    model = tiny_model(["--quantw", "--quantin", "--cpt-config", cfg, "--quant-dict", "{'y': 8, 'Et': 8, 'x': 8}"],
                       max_update=30)
    model.train()
    low = next(t for t in range(30) if model.cpt.bits(True, t) == (4, 4))
    model.set_num_updates(low)
    layer = model.encoder.sentence_encoder.layers[0]
    assert layer.fc2.weight_quant.spec.bits == 4 and layer.self_attn.input_quant.spec.bits == 4  # cycling
    assert layer.ffn_residual_quant.spec.bits == 8 and layer.fc1.input_quant.spec.bits == 8  # fixed
    assert model.encoder.sentence_encoder.embed_tokens.weight_quant.spec.bits == 8
    tokens = tiny_batch(batch=3, length=10)
    model(tokens, features_only=True, classification_head_name="sentence_classification_head")
    macs, bitops = model.bitops_counter.totals()
    fc1 = 3 * 10 * 64 * 128 * 2  # both layers
    assert bitops == (macs - fc1) * 4 * 4 + fc1 * 4 * 8


def test_one_layers_weights_kept_at_8_bits_by_a_pattern_while_the_rest_cycles(tmp_path):
    """CPT per layer: a --quant-dict pattern over quantizer paths keeps layer 0's fc1 weights at 8 bits; layer 1's
    cycle, and the account counts layer 0's fc1 at 8 weight bits."""
    cfg = write(tmp_path, {**VALID, "wbit_min": 2, "inbit_min": 6, "inbit_max": 8})
    model = tiny_model(["--quantw", "--quantin", "--cpt-config", cfg, "--quant-dict",
                        "{'*.layers.0.fc1.weight_quant': 8}"], max_update=30)
    model.train()
    model.set_num_updates(0)  # the bottom of the first cycle
    assert model.cpt.bits(True, 0) == (2, 6)
    layers = model.encoder.sentence_encoder.layers
    assert layers[0].fc1.weight_quant.spec.bits == 8 and layers[0].fc2.weight_quant.spec.bits == 2
    assert layers[1].fc1.weight_quant.spec.bits == 2 and layers[0].fc1.input_quant.spec.bits == 6
    tokens = tiny_batch(batch=3, length=10)
    model(tokens, features_only=True, classification_head_name="sentence_classification_head")
    macs, bitops = model.bitops_counter.totals()
    fc1 = 3 * 10 * 64 * 128  # layer 0's
    attn = 2 * 2 * 3 * 10 * 10 * 64  # both layers' two attention matmuls, input x input bits
    assert bitops == (macs - fc1 - attn) * 2 * 6 + fc1 * 8 * 6 + attn * 6 * 6
    model.eval()
    assert layers[0].fc1.weight_quant.spec.bits == layers[1].fc1.weight_quant.spec.bits == 8  # evaluation: W8A8


def test_a_quant_dict_pattern_that_names_nothing_is_a_logged_typo(caplog):
    model = tiny_model(["--quantw", "--quantin", "--quant-dict", "{'*.layers.7.fc1.weight_quant': 8}"])
    with caplog.at_level("WARNING"):
        model(tiny_batch(), features_only=True)
    assert "points key '*.layers.7.fc1.weight_quant' matches no quantizer of this model" in caplog.text


def test_the_staircase_schedule_rises_once_through_every_width():
    assert [staircase_bits(t, 14, 2, 8) for t in range(14)] == [2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8]
    assert [staircase_bits(t, 10, 4, 6) for t in range(10)] == [4, 4, 4, 4, 5, 5, 5, 6, 6, 6]
    cfg = CPTConfig(2, 8, 2, 8, 1, schedule="staircase")
    scheduler = CyclicPrecisionScheduler(cfg, 70)
    assert [scheduler.bits_at(t)[0] for t in (0, 9, 10, 69)] == [2, 2, 3, 8]
    assert CPTConfig.from_dict(json.loads(cfg.to_json())) == cfg  # saved with a checkpoint, read back
    assert CPTConfig.from_dict({**VALID}).schedule == "cosine"  # files without the key: CPT's cosine


def test_low_weight_bits_with_minmax_ranges_warn(caplog):
    # at the first training update (once), not where the model is only built or loaded for evaluation
    from fairseq_quant.plugin.cpt import CyclicPrecision

    def schedule(config, minmax_weights):
        return CyclicPrecision(config, (8, 8), total=lambda: 20, minmax_weights=minmax_weights).scheduler

    with caplog.at_level("WARNING", logger="fairseq_quant.plugin.cpt"):
        cpt = CyclicPrecision(CPTConfig(2, 8, 6, 8, 8), (8, 8), total=lambda: 20, minmax_weights=True)
        assert caplog.text == ""  # built: nothing yet
        cpt.bits(True, 0)
        assert "down to 2 bits with min-max ranges (--estimatorw minmax)" in caplog.text
        caplog.clear()
        cpt.bits(True, 1)
        schedule(CPTConfig(2, 8, 6, 8, 8), minmax_weights=False)  # --estimatorw mse_grid
        schedule(CPTConfig(4, 8, 4, 8, 8), minmax_weights=True)
        assert caplog.text == ""

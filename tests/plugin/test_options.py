"""Range estimators, embedding groups, --quant-dict and learned ranges inside a model, from the flags."""
import json
import re

import pytest
import torch
from fairseq import options
from helpers import TINY_TRAIN, accuracy_by_hand, run_evaluate, tiny_batch, tiny_model

from fairseq_quant import QuantMeasure, QuantSpec
from fairseq_quant.core.recipe import RecipeError, parse_quant_dict

HEAD = "sentence_classification_head"
PRE = "encoder.sentence_encoder.layers.0."


def points(model):
    return {n: q for n, q in model.named_modules() if isinstance(q, QuantMeasure)}


def test_quant_dict_sets_bits_and_embedding_groups_on_the_named_points():
    model = tiny_model(["--quantw", "--quantin", "--quant-dict", "{'y': 'ngp4', 'h': 16, 'x': 'ng2', 'Et': 2}"])
    q = points(model)
    y, h, x = q[PRE + "ffn_residual_quant"], q[PRE + "fc2.output_quant"], q[PRE + "fc1.input_quant"]
    assert (y.spec.groups, y.spec.permute, y.spec.bits) == (4, True, 8)
    assert (x.spec.groups, x.spec.permute) == (2, False)
    assert h.spec.mode == "quantize" and h.spec.bits == 16
    assert q["encoder.sentence_encoder.embed_tokens.weight_quant"].spec.bits == 2
    model.train()
    model(tiny_batch(), classification_head_name=HEAD)
    assert y.running_max.shape == (4,) and y.group_index.shape == (64,)
    # contiguous groups without permutation: 64 dims in 2 halves
    assert x.group_index.tolist() == [0] * 32 + [1] * 32
    # with permutation the groups are ordered by range: the group maxima rise with the group number
    ranges = y.dim_max - y.dim_min
    widest = [ranges[y.group_index == g].max().item() for g in range(4)]
    assert widest == sorted(widest)


def test_quant_dict_patterns_name_one_layers_points():
    assert parse_quant_dict("{'*.layers.0.fc1.weight_quant': 8, 'y': 16}") == [
        ("*.layers.0.fc1.weight_quant", {"bits": 8}), ("y", {"bits": 16})]
    q = points(tiny_model(["--quantw", "--bitsw", "4", "--quant-dict", "{'*.layers.0.fc1.weight_quant': 8}"]))
    assert q[PRE + "fc1.weight_quant"].spec.bits == 8
    assert q[PRE.replace(".0.", ".1.") + "fc1.weight_quant"].spec.bits == 4


@pytest.mark.parametrize("value, message", [
    ("{'z': 8}", "unknown point 'z'; allowed: x, h, y, P, C, Et, residual"),
    ("{'y': 20}", "'y': 20 is not a valid value; allowed: an integer from 2 to 16, ngN or ngpN"),
    ("{'Et': 'ng4'}", "'Et': 'ng4' is not a valid value; allowed: an integer from 2 to 16"),
    ("{'y': 'ngq4'}", "'y': 'ngq4' is not a valid value"),
    ("{'*.layers.0.fc1.weight_quant': 'ng2'}", "'*.layers.0.fc1.weight_quant': 'ng2' is not a valid value; allowed: "
                                               "an integer from 2 to 16"),
    ("y=16", "'y=16' is not a dictionary literal"),
])
def test_bad_quant_dict_names_key_and_allowed_values(value, message, capsys):
    with pytest.raises(RecipeError, match=re.escape(message)):
        parse_quant_dict(value)
    with pytest.raises(SystemExit):
        options.parse_args_and_arch(options.get_training_parser(), ["data", *TINY_TRAIN, "--quant-dict", value])
    assert "argument --quant-dict: " + message in capsys.readouterr().err




def test_estimator_flags_reach_weights_and_inputs():
    model = tiny_model(["--quantw", "--quantin", "--bitsw", "4", "--estimatorw", "mse_grid", "--estimatorin",
                        "percentile", "--percentile", "99"])
    q = points(model)
    w, a = q[PRE + "fc1.weight_quant"], q[PRE + "fc1.input_quant"]
    assert w.spec.estimator == "mse_grid" and a.spec.estimator == "percentile" and a.spec.percentile == 99
    model.eval()
    lo, hi = w._estimate(model.encoder.sentence_encoder.layers[0].fc1.weight, 0)
    wmax = model.encoder.sentence_encoder.layers[0].fc1.weight.abs().amax(dim=1)
    assert (hi <= wmax + 1e-7).all() and (hi < wmax).any()  # MSE clips some channels at 4 bits


def test_learned_ranges_start_from_the_estimate_and_train():
    model = tiny_model(["--quantw", "--quantin", "--bitsw", "4", "--bitsin", "4", "--learn-ranges"]).train()
    q = points(model)[PRE + "fc1.input_quant"]
    names = [n for n, _ in model.named_parameters() if "lsq" in n]
    assert PRE + "fc1.input_quant.lsq_scale" in names and PRE + "fc1.weight_quant.lsq_scale" in names
    assert not any("fc1.output_quant" in n or "residual" in n for n in names)  # off points get no parameters
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(tiny_batch(), classification_head_name=HEAD)[0].pow(2).sum().backward()
    first = q.lsq_scale.detach().clone()
    (hi, lo) = (q.running_max, q.running_min)
    assert first.item() == pytest.approx(((hi - lo) / 15).item(), rel=1e-5)  # uint4 asymmetric: (hi - lo) / 15
    assert q.lsq_scale.grad is not None and q.lsq_scale.grad.abs().item() > 0
    opt.step()
    assert not torch.equal(q.lsq_scale.detach(), first)


def test_learned_ranges_run_the_estimator_only_to_start(monkeypatch):
    model = tiny_model(["--quantw", "--quantin", "--bitsw", "4", "--bitsin", "8", "--learn-ranges",
                        "--estimatorin", "mse_grid"]).train()
    calls = []
    estimate = QuantMeasure._estimate
    monkeypatch.setattr(QuantMeasure, "_estimate", lambda self, x, axis: calls.append(self) or estimate(self, x, axis))
    model(tiny_batch(), classification_head_name=HEAD)[0].sum().backward()
    started = len(calls)
    assert started > 0
    q = points(model)[PRE + "fc1.input_quant"]
    scale = q.lsq_scale.detach().clone()
    for _ in range(2):
        model(tiny_batch(), classification_head_name=HEAD)[0].sum().backward()
    assert len(calls) == started  # afterwards the learned scales alone set the grid
    assert torch.equal(q.lsq_scale.detach(), scale)  # no optimizer step: the same grid as at the start


def test_calibration_can_leave_padding_out():
    q = QuantMeasure(QuantSpec(mode="measure")).train()
    x = torch.zeros(3, 2, 4)  # (time, batch, dim), as inside fairseq's encoder
    x[:, 0] = 1.0
    x[2, 1] = 50.0  # a padding position of sentence 1
    q.token_mask = torch.tensor([[True, True, True], [True, True, False]])  # (batch, time)
    q(x)
    assert q.running_max.item() == 1.0
    q.reset_ranges()
    q.token_mask = None
    q(x)
    assert q.running_max.item() == 50.0


def test_bad_ptq_flags_are_usage_errors(capsys):
    for flags, message in ((["--estimatorin", "mean"], "argument --estimatorin: invalid choice"),
                           (["--percentile", "40"],
                            "invalid percentile '40': percentile must be a number in (50, 100]"),
                           (["--quantin", "--formatin", "e4m3", "--estimatorin", "mse"],
                            "input flags (--bitsin, --formatin, --estimatorin, --qparams-momentum): estimator 'mse' "
                            "searches integer grids")):
        with pytest.raises(SystemExit):
            options.parse_args_and_arch(options.get_training_parser(), ["data", *TINY_TRAIN, *flags])
        assert message in capsys.readouterr().err


def test_evaluate_calibrates_with_estimators_groups_and_without_padding(qat_run, tiny_data):
    ckpt = str(qat_run / "checkpoint_last.pt")
    proc = run_evaluate("--checkpoint", ckpt, "--data", str(tiny_data), "--quantw", "--quantin", "--estimatorin",
                        "mse_grid", "--quant-dict", "{'y': 'ngp4', 'x': 16}", "--calib-batches", "2",
                        "--calib-skip-padding")
    result = json.loads([x for x in proc.stdout.splitlines() if x.startswith("{")][0])
    assert result["calib_batches"] == 2 and result["quant"] == "W8A8+points"
    # calibrated the same way here (padding left out): the same ranges as evaluate.py's, so the same metric
    accuracy, quantized = accuracy_by_hand(ckpt, str(tiny_data), ["--quantw", "--quantin", "--estimatorin",
                                                                  "mse_grid", "--quant-dict", "{'y': 'ngp4', 'x': 16}"],
                                           calib_batches=2, skip_padding=True)
    assert quantized and result["accuracy"] == accuracy


def test_evaluate_adarounds_weights_and_reports_the_reconstruction_gain(qat_run, tiny_data):
    ckpt = str(qat_run / "checkpoint_last.pt")
    proc = run_evaluate("--checkpoint", ckpt, "--data", str(tiny_data), "--quantw", "--bitsw", "4", "--adaround",
                        "--adaround-iters", "100", "--adaround-batches", "2")
    result = json.loads([x for x in proc.stdout.splitlines() if x.startswith("{")][0])
    assert result["quant"] == "W4A8+AdaRound"
    assert 0.0 < result["adaround_mse_ratio"] < 1.0  # AdaRound reconstructs each layer better than nearest
    bad = run_evaluate("--checkpoint", ckpt, "--data", str(tiny_data), "--quantw", "--formatw", "e3m2",
                       "--adaround", check=False)
    assert bad.returncode == 2 and "--adaround rounds quantized integer weights" in bad.stderr


def test_quant_dict_entries_reach_the_model():
    model = tiny_model(["--quantin", "--quant-dict", "{'residual': 'ngp2'}"])
    assert points(model)[PRE + "attn_residual_quant"].spec.groups == 2


def test_measured_points_learn_no_scales():
    """--quantw --measurein --learn-ranges: the weights learn their scales; the measured inputs only record
    ranges and hold no parameters (unused parameters break DDP)."""
    model = tiny_model(["--quantw", "--measurein", "--learn-ranges"])
    learned = {name for name, _ in model.named_parameters() if "lsq_" in name}
    assert any(".weight_quant." in n for n in learned) and not any(".input_quant." in n for n in learned)


@pytest.mark.parametrize("flags, message", [
    (["--measurein", "--learn-ranges"], "--learn-ranges learns the scales of quantized weights and inputs: it needs"),
    (["--quantin", "--quant-dict", "{'y': 'ng100000'}"],
     "'y': 100000 embedding groups, but the model's embedding dimension (--encoder-embed-dim) is 64"),
])
def test_impossible_quantization_flags_are_usage_errors(flags, message, capsys):
    from fairseq import options

    with pytest.raises(SystemExit) as e:
        options.parse_args_and_arch(options.get_training_parser(), ["data", *TINY_TRAIN, *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err

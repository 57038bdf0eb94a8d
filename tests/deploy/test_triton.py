"""deploy(): a calibrated fake-quantized model -> real INT8/FP8 linear layers with the same numbers; and
evaluate.py --backend triton, as a user runs it."""
import copy

import pytest
import torch
from helpers import HEAD, calibrated, json_line, run_in_process, tiny_batch

from fairseq_quant.cli.evaluate import cli_main
from fairseq_quant.deploy import DeployedLinear, DeployError, deploy

FP8 = ["--formatw", "fp8_e4m3", "--formatin", "fp8_e4m3", "--formatw-scaling", "amax", "--formatin-scaling", "amax"]


def logits(model, tokens):
    with torch.no_grad():
        return model(tokens, features_only=True, classification_head_name=HEAD)[0]


@pytest.mark.parametrize("flags,kind,tol", [
    (["--quantw", "--quantin"], "int8", 1e-5),  # default W8A8: per-channel weights, asymmetric inputs
    (["--quantw", "--quantin", "--quantin-range", "symmetric", "--bitsw", "4"], "int8", 1e-5),  # W4A8
    (["--quantw", "--quantin"] + FP8, "fp8", 1e-2),
])
@pytest.mark.parametrize("interpret", ["1", "0"])  # Triton's interpreter; the PyTorch fallback (torch._int_mm)
def test_deployed_model_matches_its_fake_quantized_twin(flags, kind, tol, interpret, monkeypatch):
    if interpret == "0" and torch.cuda.is_available():
        pytest.skip("the fallback is for machines without a GPU")
    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    model = calibrated(flags)
    tokens = tiny_batch(batch=3, seed=9)
    fake = logits(model, tokens)
    deployed = copy.deepcopy(model)
    report = deploy(deployed, cpu_reference=interpret == "0")
    assert len(report) == 14 and set(report.values()) == {kind}  # 2 layers x 6 linears + the head's 2
    layer = deployed.encoder.sentence_encoder.layers[0]
    assert isinstance(layer.self_attn.q_proj, DeployedLinear) and layer.fc1.gelu  # GELU fused into fc1
    assert layer.fc1.weight_q.dtype == (torch.int8 if kind == "int8" else torch.float8_e4m3fn)
    real = logits(deployed, tokens)
    # integer grids: the same integers, sums exact in int32; only float32 rounding of the epilogue differs.
    # fp8: the kernel divides by the scale as x * (1 / scale), fake quantization as x / scale
    assert (real - fake).abs().max() <= tol * fake.abs().max()
    assert torch.equal(real.argmax(-1), fake.argmax(-1))


def test_layers_that_cannot_run_in_int8_are_kept_and_reported():
    model = calibrated(["--quantw", "--quantin", "--quant-dict", "{'C': 16}"])
    report = deploy(copy.deepcopy(model))
    head = "classification_heads.sentence_classification_head.out_proj"
    assert report[head].startswith("kept: weight: its grid is int16")
    assert sum(r == "int8" for r in report.values()) == 13


def test_nothing_to_deploy_names_the_flags():
    with pytest.raises(DeployError, match=r"its input is not quantized.*|--quantin"):
        deploy(calibrated(["--quantw"]))


def evaluate_json(capsys, *argv):
    """evaluate.py's cli_main in this process (the code path of the command, without its start-up)."""
    code, out, err = run_in_process(capsys, cli_main, *argv)
    assert code == 0, err
    return json_line(out)


def test_evaluate_backend_triton_reports_the_same_metric(qat_run, tiny_data, capsys):
    common = ("--checkpoint", str(qat_run / "checkpoint_last.pt"), "--data", str(tiny_data), "--split", "valid")
    fake = evaluate_json(capsys, *common)
    real = evaluate_json(capsys, *common, "--backend", "triton")  # Triton's interpreter on a CPU-only machine
    assert fake["backend"] == "fake" and real["backend"] == "triton" and real["deployed_layers"] == 14
    assert real["accuracy"] == fake["accuracy"] and real["n"] == fake["n"] == 64


def test_evaluate_backend_triton_without_quantized_inputs_is_a_usage_error(qat_run, tiny_data, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["--checkpoint", str(qat_run / "checkpoint_last.pt"), "--data", str(tiny_data), "--bitsin", "16",
                  "--backend", "triton"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--backend triton: nothing to deploy" in err and "int16" in err


def test_gelu_is_not_fused_under_a_quantized_fc1_output(tmp_path, monkeypatch):
    """fc1's output quantized: the model computes gelu(quantize(fc1(x))); a GELU epilogue would compute
    quantize(gelu(fc1(x))). Not fused, and the deployed model matches its twin."""
    import json

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    recipe = tmp_path / "fc1_out.json"
    recipe.write_text(json.dumps({"weight": {"mode": "quantize", "granularity": "channel"},
                                  "input": {"mode": "quantize", "range": "asymmetric"},
                                  "points": {"*.fc1.output_quant": {"mode": "quantize"}}}))
    model = calibrated(["--quant-recipe", str(recipe)])
    layer = model.encoder.sentence_encoder.layers[0]
    assert layer.fc1.output_quant.active
    tokens = tiny_batch(batch=3, seed=9)
    fake = logits(model, tokens)
    deploy(model)
    assert isinstance(model.encoder.sentence_encoder.layers[0].fc1, DeployedLinear)
    assert not model.encoder.sentence_encoder.layers[0].fc1.gelu
    real = logits(model, tokens)
    assert (real - fake).abs().max() <= 1e-5 * fake.abs().max()

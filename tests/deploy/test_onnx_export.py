"""ONNX export with the calibrated Q/DQ scales (fairseq_quant.deploy): the ONNX Runtime model computes what the
fake-quantized model computes, its integer points are fused into integer kernels, bad input is refused, and the
commands (fairseq-quant-export, evaluate.py --backend onnxruntime) work as a user runs them."""
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from helpers import HEAD, REPO, calibrated, fairseq_train, json_line, run_in_process, tiny_batch, tiny_model
from onnx import numpy_helper

from fairseq_quant.cli.evaluate import cli_main as evaluate_main
from fairseq_quant.cli.export import cli_main as export_main
from fairseq_quant.core.estimators import int_qparams
from fairseq_quant.core.formats import int_values
from fairseq_quant.deploy import ExportError, deploy, export_onnx, onnx_twin
from fairseq_quant.deploy.runtime import OrtClassifier, session

W8A8 = ["--quantw", "--quantin"]
FP8 = ["--formatw-scaling", "amax", "--formatin-scaling", "amax"]


def fake_logits(model, tokens):
    with torch.no_grad():
        return model(tokens, features_only=True, classification_head_name=HEAD)[0]


RECIPES = {
    "W8A8": (W8A8, {"uint8": 36}),
    "W4A4": (W8A8 + ["--bitsw", "4", "--bitsin", "4"], {"uint8 (4-bit grid)": 36}),
    "symmetric inputs": (W8A8 + ["--quantin-range", "symmetric"], {"uint8": 36}),
    "16-bit inputs": (W8A8 + ["--bitsin", "16"], {"int16": 20, "uint16": 2, "uint8": 14}),
    "FP8 E4M3": (W8A8 + ["--formatw", "fp8_e4m3", "--formatin", "fp8_e4m3"] + FP8, {"fp8_e4m3": 36}),
    "FP8 E5M2": (W8A8 + ["--formatw", "fp8_e5m2", "--formatin", "fp8_e5m2"] + FP8, {"fp8_e5m2": 36}),
    "every operation": (W8A8 + ["--quantize-ops", "gemm,act,norm,attn_scaling,residual"], {"uint8": 58}),
    "PEG on y": (W8A8 + ["--quantize-ops", "gemm,residual", "--quant-dict", "{'y': 'ngp3'}"], {"uint8": 40}),
    "MSE / percentile": (W8A8 + ["--bitsw", "4", "--estimatorw", "mse_grid", "--estimatorin", "percentile"],
                         {"uint8": 22, "uint8 (4-bit grid)": 14}),
    "learned ranges": (W8A8 + ["--bitsw", "4", "--learn-ranges"], {"uint8": 22, "uint8 (4-bit grid)": 14}),
    "4-bit embeddings": (W8A8 + ["--quant-dict", "{'Et': 4}"], {"uint8": 36, "uint8 (4-bit grid)": 1}),
}


def assert_close(ort, fake, tol=1e-5):
    """ONNX Runtime's logits against the fake-quantized model's, per sentence: integer grids give the same
    integers, so only float rounding differs, within ``tol`` of the largest logit. But one activation that ONNX
    Runtime's float kernels (softmax, LayerNorm, QuantizeLinear's division, a fused requantization) put across a
    rounding boundary moves its sentence's logits by one step's worth, up to about 5e-3 of the largest on these
    models (seen on an AMD EPYC for some batches, not on a Xeon). So: every sentence within 1e-2, most within
    ``tol``. A wrong scale, a saturating kernel or a merged rounding moves most sentences (the merged
    rounding of DoubleQDQPairsRemover: 3 of 5)."""
    ort, fake = torch.as_tensor(ort), torch.as_tensor(fake)
    scale = fake.abs().max()
    per_sentence = (ort - fake).abs().amax(-1)
    assert per_sentence.max() <= 1e-2 * scale, per_sentence
    assert (per_sentence <= tol * scale).float().mean() >= 0.5, per_sentence
    assert torch.equal(ort.argmax(-1), fake.argmax(-1))


@pytest.mark.parametrize("name", list(RECIPES))
def test_onnx_runtime_computes_what_the_fake_quantized_model_computes(name, tmp_path):
    flags, points = RECIPES[name]
    model = calibrated(flags)
    if name == "learned ranges":  # the calibration passes started the learned scales; move them off the estimate
        with torch.no_grad():
            for q in [m for m in model.modules() if hasattr(m, "lsq_scale")]:
                assert bool(q.lsq_ready)
                q.lsq_scale.mul_(1.01)
    tokens = tiny_batch(batch=5, length=14, seed=9)  # padded: the last row ends in pad tokens
    fake = fake_logits(model, tokens)
    twin, counts = onnx_twin(model)
    with torch.no_grad():
        assert torch.equal(twin(tokens), fake)  # the points' Q/DQ parameters are exactly the fake quantization's
    assert dict(counts) == points  # every active point exported (2 layers: 16 inputs + 12 weights, head 2 + 2)
    path = tmp_path / "model.onnx"
    report = export_onnx(model, str(path))
    assert report.opset == (21 if name == "16-bit inputs" else 20)
    ort = OrtClassifier(str(path), threads=1)(tokens)
    # integer grids: the same integers, so only float rounding differs (ONNX divides by the scale where the fake
    # quantization multiplies by its reciprocal; kernels sum in another order). 16-bit grids are 256x finer, so
    # such rounding moves more of their values by one step
    assert_close(ort, fake, 1e-3 if name == "16-bit inputs" else 1e-5)


def test_dynamic_batch_and_length_with_fairseq_padding(tmp_path):
    model = calibrated(W8A8)
    path = tmp_path / "m.onnx"
    export_onnx(model, str(path))
    ort = OrtClassifier(str(path), threads=1)
    for batch, length in ((1, 5), (7, 30), (3, 12)):
        tokens = tiny_batch(batch=batch, length=length, seed=batch)
        if batch == 3:
            tokens[:, -1] = 5  # no padding at all: the padding branch passes it through unchanged
        assert_close(ort(tokens), fake_logits(model, tokens))


def node(graph, name: str):
    """The node of the encoder layer path ``name`` (the exporter names nodes by module path)."""
    return next(n for n in graph.node if n.name == f"/model/encoder/sentence_encoder/{name}")


def test_points_become_q_dq_with_the_fake_quant_scales_and_fuse_into_integer_kernels(tmp_path):
    model = calibrated(W8A8 + ["--quantin-range", "symmetric"] + ["--quant-dict", "{'x': 4}"])
    path = tmp_path / "m.onnx"
    export_onnx(model, str(path))
    graph = onnx.load(str(path)).graph
    consts = {o: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"
              for o in n.output}
    fc1 = model.encoder.sentence_encoder.layers[0].fc1
    w = node(graph, "layers.0/fc1/weight_quant/DequantizeLinear")
    stored, scale = consts[w.input[0]], consts[w.input[1]]
    lo, hi = fc1.weight.detach().amin(1), fc1.weight.detach().amax(1)
    expected_scale, _, qmin, qmax = int_qparams(lo, hi, 8, True, True)
    assert stored.dtype == np.uint8 and w.attribute[0].i == 0  # per output channel, shifted by 128
    np.testing.assert_array_equal(scale, expected_scale.numpy())
    np.testing.assert_array_equal(stored.astype(np.int16) - 128,
                                  int_values(fc1.weight, expected_scale, None, qmin, qmax, 0).numpy())
    # fc1's input (x at 4 bits, symmetric): uint8 container (zero point 128), clipped to -7 .. 7 in floating point
    q = node(graph, "layers.0/fc1/input_quant/QuantizeLinear")
    clip = next(n for n in graph.node if q.input[0] in n.output)
    x_scale = float(consts[q.input[1]])
    assert clip.op_type == "Clip" and consts[q.input[2]].dtype == np.uint8 and int(consts[q.input[2]]) == 128
    assert float(consts[clip.input[1]]) == pytest.approx(-7 * x_scale) and float(consts[clip.input[2]]) == \
        pytest.approx(7 * x_scale)
    in_q = model.encoder.sentence_encoder.layers[0].fc1.input_quant
    assert x_scale == pytest.approx(float(in_q.running_max.abs().max().clamp(min=in_q.running_min.abs().max())) / 7)
    # ONNX Runtime fuses every linear layer of the encoder into an integer GEMM
    opt = tmp_path / "optimized.onnx"
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(opt)
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                         disabled_optimizers=["DoubleQDQPairsRemover"])
    ops = [n.op_type for n in onnx.load(str(opt)).graph.node]
    assert ops.count("MatMulIntegerToFloat") + ops.count("QLinearMatMul") >= 12  # 2 layers x 6 linears


def test_asymmetric_inputs_are_uint8_with_the_zero_point_shifted(tmp_path):
    model = calibrated(W8A8)
    export_onnx(model, str(tmp_path / "m.onnx"))
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    consts = {o: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"
              for o in n.output}
    q = node(graph, "layers.1/fc2/input_quant/QuantizeLinear")
    point = model.encoder.sentence_encoder.layers[1].fc2.input_quant
    scale, zp, _, _ = int_qparams(point.running_min, point.running_max, 8, True, False)
    assert consts[q.input[2]].dtype == np.uint8 and int(consts[q.input[2]]) == int(zp) + 128
    assert float(consts[q.input[1]]) == float(scale)


def test_onnx_quantize_linear_gives_the_fake_quantization_integers():
    """ONNX's x / scale against the fake quantization's x * (1 / scale): the integers agree except at a few
    rounding ties (measured: about 1 in 10^6 here), each then off by one."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1_000_000, generator=g) * 3
    scale, zp, qmin, qmax = int_qparams(torch.tensor(-7.3), torch.tensor(8.1), 8, True, False)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"])]
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("q", TensorProto.UINT8, [None])],
                              [numpy_helper.from_array(scale.reshape(()).numpy(), "s"),
                               numpy_helper.from_array(np.array(int(zp) + 128, np.uint8), "z")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    q = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()})[0].astype(np.int64) - 128
    ours = int_values(x, scale, zp, qmin, qmax).numpy().astype(np.int64)
    diff = np.abs(q - ours)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-5


@pytest.mark.parametrize("flags,message", [
    (W8A8 + ["--formatin", "posit8_1"], r"layers\.0\.self_attn\.input_quant: its format posit8_1 has no ONNX"),
    (W8A8 + ["--formatw", "e3m2", "--formatw-scaling", "amax"], r"weight_quant: its format e3m2 has no ONNX"),
    (W8A8 + ["--dynamic-qparams"], r"input_quant: its range comes from each batch.*--calib-batches"),
])
def test_points_onnx_cannot_express_are_refused_by_name(flags, message, tmp_path):
    model = calibrated(flags)
    with pytest.raises(ExportError, match=message):
        export_onnx(model, str(tmp_path / "m.onnx"))
    assert os.listdir(tmp_path) == []  # nothing written


def test_uncalibrated_model_is_refused(tmp_path):
    model = tiny_model(W8A8).eval()  # no range recorded
    with pytest.raises(ExportError, match=r"has recorded no range: calibrate the model first \(--calib-batches N\)"):
        export_onnx(model, str(tmp_path / "m.onnx"))


def test_existing_file_is_kept_unless_force_and_a_failed_export_leaves_nothing(tmp_path, monkeypatch):
    model = calibrated(W8A8)
    path = tmp_path / "m.onnx"
    path.write_text("the user's file")
    with pytest.raises(ExportError, match=r"exists; give --force"):
        export_onnx(model, str(path))
    assert path.read_text() == "the user's file"

    def broken(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(RuntimeError, match="interrupted"):
        export_onnx(model, str(path), force=True)
    assert path.read_text() == "the user's file" and os.listdir(tmp_path) == ["m.onnx"]  # no temporary left
    monkeypatch.undo()
    export_onnx(model, str(path), force=True)
    assert onnx.load(str(path)).graph.output[0].name == "logits"


def test_a_model_without_the_head_is_refused(tmp_path):
    with pytest.raises(ExportError, match=r"no classification head 'other'.*sentence_prediction"):
        export_onnx(calibrated(W8A8), str(tmp_path / "m.onnx"), head="other")


def test_deploy_on_a_cpu_keeps_fake_quantization_and_names_onnx_runtime(monkeypatch, caplog):
    # a CPU without the interpreter (TRITON_INTERPRET itself must stay as conftest set it: Triton reads it when the
    # kernels are first defined)
    import fairseq_quant.deploy.triton as deployment

    monkeypatch.setattr(deployment, "uses_triton", lambda t: False)
    model = calibrated(W8A8)
    tokens = tiny_batch(seed=3)
    before = fake_logits(model, tokens)
    report = deploy(model)
    assert set(report.values()) == {"kept: no GPU for the kernels (use ONNX Runtime on a CPU)"}
    assert "--backend onnxruntime" in caplog.text and "torch._int_mm" in caplog.text
    assert torch.equal(fake_logits(model, tokens), before)


def test_session_leaves_out_the_fusion_that_merges_consecutive_quantizers(tmp_path):
    """GELU output and fc2 input quantized in turn: ONNX Runtime's DoubleQDQPairsRemover would round once
    where the model rounds twice; our session keeps both roundings."""
    model = calibrated(W8A8 + ["--quantize-ops", "gemm,act"])
    path = tmp_path / "m.onnx"
    export_onnx(model, str(path))
    tokens = tiny_batch(batch=5, length=14, seed=9)
    fake = fake_logits(model, tokens).numpy()
    ours = session(str(path), threads=1).run(None, {"src_tokens": tokens.numpy()})[0]
    assert_close(ours, fake)


# -- the commands, as a user runs them ------------------------------------------------------------------------

def run_export(capsys, *argv) -> tuple[int, dict | None, str]:
    code, out, err = run_in_process(capsys, export_main, *argv)
    return code, json_line(out) if code == 0 else None, err


def run_evaluate(capsys, *argv) -> dict:
    code, out, err = run_in_process(capsys, evaluate_main, *argv)
    assert code == 0, err
    return json_line(out)


def test_export_command_and_evaluate_onnxruntime_give_the_fake_quant_metric(qat_run, tiny_data, tmp_path, capsys):
    ckpt = str(qat_run / "checkpoint_last.pt")
    out = tmp_path / "qat.onnx"
    code, result, err = run_export(capsys, "--checkpoint", ckpt, "--data", str(tiny_data), "--out", str(out))
    assert code == 0, err
    assert result["quant"] == "W8A8" and result["points"] == {"uint8": 36} and out.is_file()
    common = ("--checkpoint", ckpt, "--data", str(tiny_data), "--split", "valid")
    fake = run_evaluate(capsys, *common)
    given = run_evaluate(capsys, *common, "--backend", "onnxruntime", "--onnx", str(out))
    exported = run_evaluate(capsys, *common, "--backend", "onnxruntime")  # exports to a temporary file itself
    for r in (given, exported):
        assert r["backend"] == "onnxruntime" and r["n"] == fake["n"] == 64
        assert r["accuracy"] == fake["accuracy"] and r["f1"] == fake["f1"]
        assert r["ms_per_batch"] > 0
    assert given["onnx"] == str(out) and given["quant"] == "W8A8"  # from the file's metadata


def test_plain_roberta_checkpoint_is_calibrated_and_exported(plain_roberta_run, tiny_data, tmp_path, capsys):
    ckpt = str(plain_roberta_run / "checkpoint_last.pt")
    out = tmp_path / "ptq.onnx"
    code, _, err = run_export(capsys, "--checkpoint", ckpt, "--data", str(tiny_data), "--out", str(out), "--quantw",
                              "--quantin")
    assert code == 2 and "has recorded no range: calibrate the model first" in err and not out.exists()
    code, result, err = run_export(capsys, "--checkpoint", ckpt, "--data", str(tiny_data), "--out", str(out),
                                   "--quantw", "--quantin", "--calib-batches", "2")
    assert code == 0, err
    assert result["calib_batches"] == 2 and result["points"] == {"uint8": 20}  # 1 layer + head
    common = ("--checkpoint", ckpt, "--data", str(tiny_data))
    fake = run_evaluate(capsys, *common, "--quantw", "--quantin", "--calib-batches", "2")
    real = run_evaluate(capsys, *common, "--backend", "onnxruntime", "--onnx", str(out))
    assert real["accuracy"] == fake["accuracy"]
    for flag, name, quant in (("--fp32", "fp32.onnx", "FP32"), ("--ort-dynamic", "dynamic.onnx", "ORT dynamic INT8")):
        code, result, err = run_export(capsys, *common, "--out", str(tmp_path / name), flag)
        assert code == 0, err
        r = run_evaluate(capsys, *common, "--backend", "onnxruntime", "--onnx", str(tmp_path / name))
        assert r["n"] == 64 and r["quant"] == quant
    fp32 = run_evaluate(capsys, *common)
    assert run_evaluate(capsys, *common, "--backend", "onnxruntime", "--onnx", str(tmp_path / "fp32.onnx"))[
        "accuracy"] == fp32["accuracy"]


def test_export_bad_input_is_one_usage_error(qat_run, plain_roberta_run, tiny_data, tmp_path, capsys):
    ckpt = str(qat_run / "checkpoint_last.pt")
    existing = tmp_path / "existing.onnx"
    existing.write_text("keep me")
    other = tmp_path / "other_data"
    other.mkdir()
    for sub in ("input0", "label"):
        (other / sub).mkdir()
        (other / sub / "dict.txt").write_text("".join(f"x{i} 1\n" for i in range(7)))
    masked_lm = tmp_path / "mlm.pt"
    state = torch.load(ckpt, weights_only=False)
    state["cfg"]["task"]["_name"] = "masked_lm"
    torch.save(state, masked_lm)
    cases = [
        (["--out", str(existing)], "exists; give --force"),
        (["--out", str(tmp_path / "a.onnx"), "--formatin", "posit8_1"], "its format posit8_1 has no ONNX"),
        (["--out", str(tmp_path / "a.onnx"), "--dynamic-qparams"], "its range comes from each batch"),
        (["--out", str(tmp_path / "a.onnx"), "--fp32", "--bitsw", "4"], "--fp32 exports the floating-point model"),
        (["--out", str(tmp_path / "a.onnx"), "--data", str(other)], "belongs to another task or vocabulary"),
        (["--out", str(tmp_path / "a.onnx"), "--checkpoint", str(masked_lm)], "only sentence_prediction"),
        (["--out", str(tmp_path / "no" / "a.onnx")], "no such directory"),
    ]
    for extra, message in cases:
        argv = ["--checkpoint", ckpt, "--data", str(tiny_data)] + extra
        code, result, err = run_export(capsys, *argv)
        assert code == 2 and message in err and "Traceback" not in err, (extra, err)
    assert existing.read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["existing.onnx", "mlm.pt", "other_data"]


def test_evaluate_onnx_flag_misuse_is_a_usage_error(qat_run, tiny_data, tmp_path, capsys):
    ckpt = str(qat_run / "checkpoint_last.pt")
    bad = tmp_path / "bad.onnx"
    bad.write_text("not onnx")
    for extra, message in ((["--onnx", str(bad)], "needs --backend onnxruntime"),
                           (["--backend", "onnxruntime", "--onnx", str(bad), "--bitsw", "4"], "cannot change it"),
                           (["--backend", "onnxruntime", "--onnx", str(bad)], "ONNX Runtime cannot run it")):
        with pytest.raises(SystemExit) as e:
            evaluate_main(["--checkpoint", ckpt, "--data", str(tiny_data)] + extra)
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_console_command_exports(qat_run, tiny_data, tmp_path):
    out = tmp_path / "m.onnx"
    proc = subprocess.run([sys.executable, "-m", "fairseq_quant.cli.export", "--checkpoint",
                           str(qat_run / "checkpoint_last.pt"), "--data", str(tiny_data), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["out"] == str(out)


def test_cpt_checkpoint_exports_at_its_evaluation_bits(tiny_data, tmp_path, capsys):
    cfg = tmp_path / "cpt.json"
    cfg.write_text(json.dumps({"wbit_min": 4, "wbit_max": 8, "inbit_min": 4, "inbit_max": 8, "num_cyclic_period": 2}))
    fairseq_train(tiny_data, tmp_path / "run", "--max-update", "4", "--quantw", "--quantin", "--cpt-config", str(cfg),
                  "--cpt-eval-bits", "6,8")
    code, result, err = run_export(capsys, "--checkpoint", str(tmp_path / "run" / "checkpoint_last.pt"), "--data",
                                   str(tiny_data), "--out", str(tmp_path / "cpt.onnx"))
    assert code == 0, err
    assert result["quant"] == "W6A8" and result["points"] == {"uint8": 22, "uint8 (6-bit grid)": 14}


def test_evaluate_backend_triton_on_a_cpu_warns_and_evaluates_fake(qat_run, tiny_data, capsys, monkeypatch):
    import fairseq_quant.deploy.triton as deployment

    monkeypatch.setattr(deployment, "uses_triton", lambda t: False)  # a CPU without Triton's interpreter
    common = ("--checkpoint", str(qat_run / "checkpoint_last.pt"), "--data", str(tiny_data))
    fake = run_evaluate(capsys, *common)
    code, out, err = run_in_process(capsys, evaluate_main, *common, "--backend", "triton")
    assert code == 0 and "--backend onnxruntime" in err
    result = json_line(out)
    assert result["deployed_layers"] == 0 and result["accuracy"] == fake["accuracy"]

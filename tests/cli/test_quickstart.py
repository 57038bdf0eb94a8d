"""scripts/quickstart.sh as a user runs it (the tiny model from scratch, a few updates, so it is quick): both
fine-tunings, the PTQ rows, the ONNX exports run by ONNX Runtime, and the table with milliseconds per batch."""
import csv
import os
import subprocess

from helpers import REPO


def test_quickstart_prints_metrics_and_onnx_runtime_latency(tmp_path):
    out = tmp_path / "qs"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "quickstart.sh"), "--from-scratch", "--max-update", "4",
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = [p for p in out.iterdir() if p.name.endswith("quant_roberta_tiny")]
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert [(r["quant"], r["backend"]) for r in rows] == [
        ("FP32", "fake"), ("W8A8", "fake"), ("W8A8", "fake"), ("W6A6", "fake"), ("W4A4", "fake"),
        ("FP32", "onnxruntime"), ("W8A8", "onnxruntime"), ("W8A8", "onnxruntime")]
    by = {(r["tag"], r["backend"]): r for r in rows}
    for tag in ("FP32 fine-tuning", "PTQ of FP32, 8-bit, 16 calibration batches", "W8A8 QAT fine-tuning"):
        # the exported model scores what its fake-quantized twin scores (the bound: 0.2 points)
        assert abs(float(by[(tag, "onnxruntime")]["accuracy"]) - float(by[(tag, "fake")]["accuracy"])) <= 0.002
        assert float(by[(tag, "onnxruntime")]["ms_per_batch"]) > 0
    table = proc.stdout[proc.stdout.index("| run |"):]
    assert "| executed by | ms / batch |" in table and table.count("| ONNX Runtime") == 3
    assert sorted(p.name for p in run.glob("*.onnx")) == ["fp32.onnx", "ptq-w8a8.onnx", "qat-w8a8.onnx"]


def test_quickstart_rejects_unknown_arguments():
    proc = subprocess.run(["bash", str(REPO / "scripts" / "quickstart.sh"), "--tiny"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "unrecognized arguments: --tiny" in proc.stderr

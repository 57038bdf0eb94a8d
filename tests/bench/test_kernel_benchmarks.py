"""The kernel benchmarks (benchmarks/gemm.py, e2e_inference.py, int8_training.py) run end to end in their --smoke
configuration on a CPU (the PyTorch fallback of the kernels) and write the rows they print as JSON."""
from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]  # the repository

GEMM_CASES = ["bf16 torch.matmul", "torch._int_mm", "torch._scaled_mm fp8", "ours int8 scaled_mm",
              "ours fp8 scaled_mm", "ours int8 quantize+mm", "ours fp8 quantize+mm"]
E2E_CASES = ["bf16 eager", "bf16 eager, module-path attention", "bf16 compiled", "int8 deployed eager",
             "int8 deployed compiled", "fp8 deployed eager", "fp8 deployed compiled"]
TRAINING_CASES = ["bf16 autocast", "bf16 autocast, module-path attention", "int8 fwd", "int8 fwd_dgrad", "int8 all",
                  "int8 all, stochastic rounding"]


def run_smoke(script: str, tmp_path: Path) -> tuple[dict, str]:
    out = tmp_path / f"{script}.json"
    env = dict(os.environ, TRITON_INTERPRET="0", OMP_NUM_THREADS="1")  # the fast PyTorch fallback
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{script}.py"), "--smoke", "--device", "cpu",
                           "--json", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), proc.stdout


def check_rows(result: dict, stdout: str, time_key: str, rate_key: str) -> list[dict]:
    """Timed rows have positive times, rates and ratios; the baseline's ratio is 1; the table was printed."""
    assert result["device"].startswith("cpu") and result["device"] in stdout
    assert "| ratio |" in stdout
    timed = [r for r in result["rows"] if r[time_key] is not None]
    for row in timed:
        assert row[time_key] > 0 and row[rate_key] > 0 and row["ratio"] > 0, row
        assert f"| {row['case']} |" in stdout
    for row in result["rows"]:
        if row["case"] == result["baseline"]:
            assert row["ratio"] == 1.0
    return timed


def test_scripts_import_without_running(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    names = ("gemm", "e2e_inference", "int8_training", "_common")
    try:
        for script in names[:3]:
            assert callable(importlib.import_module(script).main)
    finally:
        for name in names:
            sys.modules.pop(name, None)


def test_gemm_smoke(tmp_path):
    result, stdout = run_smoke("gemm", tmp_path)
    shapes = sorted({r["shape"] for r in result["rows"]})
    assert len(shapes) == 2
    for shape in shapes:
        rows = {r["case"]: r for r in result["rows"] if r["shape"] == shape}
        assert list(rows) == GEMM_CASES
        assert rows["ours int8 scaled_mm"]["vs _int_mm"] > 0 and rows["torch._int_mm"]["vs _int_mm"] == 1.0
        assert result["checks"][shape]["int8_exact"] and result["checks"][shape]["int32_sums_exact"]
        fp8 = rows["torch._scaled_mm fp8"]
        assert fp8["ms"] is not None or fp8["note"].startswith("unsupported")  # skipped with a note, no crash
    timed = check_rows(result, stdout, "ms", "TFLOP/s")
    assert {r["case"] for r in timed} >= set(GEMM_CASES) - {"torch._scaled_mm fp8"}
    assert "ours int8 vs scaled_mm(backend='torch'): exact" in stdout


def test_e2e_inference_smoke(tmp_path):
    result, stdout = run_smoke("e2e_inference", tmp_path)
    rows = {r["case"]: r for r in result["rows"]}
    assert list(rows) == E2E_CASES
    timed = check_rows(result, stdout, "ms", "seq/s")
    assert {r["case"] for r in timed} == {c for c in E2E_CASES if "compiled" not in c}  # no --compile on a CPU
    assert all(rows[c]["note"].startswith("skipped") for c in E2E_CASES if "compiled" in c)
    for kind in ("int8", "fp8"):  # deployed vs its fake-quantized twin, both in bf16: close
        assert 0 <= rows[f"{kind} deployed eager"]["max abs dlogit"] < 0.5
        assert "14 linears deployed, 0 kept" in rows[f"{kind} deployed eager"]["note"]


def test_int8_training_smoke(tmp_path):
    result, stdout = run_smoke("int8_training", tmp_path)
    rows = {r["case"]: r for r in result["rows"]}
    assert list(rows) == TRAINING_CASES
    assert len(check_rows(result, stdout, "ms/step", "tokens/s")) == len(TRAINING_CASES)
    for row in rows.values():
        assert row["peak GiB"] == "n/a" and math.isfinite(row["final loss"])
    # the same seed, weights and batches: float runs agree, INT8 ones stay close
    assert rows["bf16 autocast, module-path attention"]["final loss"] == pytest.approx(
        rows["bf16 autocast"]["final loss"], abs=0.05)
    assert rows["int8 all"]["final loss"] == pytest.approx(rows["bf16 autocast"]["final loss"], abs=0.5)

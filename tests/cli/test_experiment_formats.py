"""scripts/formats_table.bash as a user runs it: fine-tuning in a format and PTQ to it, one markdown table."""
import csv
import os
import subprocess

from helpers import REPO, accuracy_by_hand, script_refuses


def test_formats_table_runs_on_the_default_task_and_writes_the_table(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "formats_table.bash"), "--formats", "fp8",
                           "--max-update", "4", "--calib-batches", "2", "--out", str(tmp_path / "f")],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| format | fine-tuned, all ops quantized (accuracy) | PTQ of FP32, GEMMs |")
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| FP32", "| FP8 (E4M3, E5M2 gradients)"]
    cells = rows[2].strip("| ").split(" | ")[1:]
    (run,) = [d for d in os.listdir(tmp_path / "f") if "-formats-default-task-" in d]
    results = {r["tag"]: r for r in csv.DictReader((tmp_path / "f" / run / "results.csv").open())}
    assert cells == [f"{100 * float(results[t]['accuracy']):.1f}" for t in
                     ("fp8|fine-tuned", "fp8|PTQ gemm", "fp8|PTQ gemm,act,norm,attn_scaling,residual")]
    # the PTQ-to-FP8 cell recomputed apart, with the same calibration
    fp8 = ["--quantw", "--quantin", "--formatw", "fp8_e4m3", "--formatw-scaling", "amax", "--formatin", "fp8_e4m3",
           "--formatin-scaling", "amax", "--quantize-ops", "gemm"]
    accuracy, quantized = accuracy_by_hand(str(tmp_path / "f" / run / "fp32-seed1" / "checkpoint_best.pt"),
                                           str(tmp_path / "f" / "data" / "bin"), fp8, calib_batches=2)
    assert quantized and float(results["fp8|PTQ gemm"]["accuracy"]) == accuracy
    log = (tmp_path / "f" / run / "fp8-seed1.log").read_text()
    assert "formatgrad='fp8_e5m2'" in log and "quantize_ops='gemm,act,norm,attn_scaling,residual'" in log
    assert (tmp_path / "f" / run / "table.md").read_text().count("\n") == 4


def test_formats_table_refuses_unknown_formats_before_running(tmp_path):
    script_refuses("formats_table.bash", "--formats", "fp8,fp4", out=tmp_path / "f",
                   messages=("--formats: unknown 'fp4'; allowed: bf16, posit8, fp8, int8",))

"""scripts/formats_table.bash as a user runs it: fine-tuning in a format and PTQ to it, one markdown table."""
import os
import subprocess

from helpers import REPO


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
    assert len(cells) == 3 and all(0.0 <= float(c) <= 100.0 for c in cells)
    (run,) = [d for d in os.listdir(tmp_path / "f") if "-formats-default-task-" in d]
    log = (tmp_path / "f" / run / "fp8-seed1.log").read_text()
    assert "formatgrad='fp8_e5m2'" in log and "quantize_ops='gemm,act,norm,attn_scaling,residual'" in log
    assert (tmp_path / "f" / run / "table.md").read_text().count("\n") == 4


def test_formats_table_refuses_unknown_formats_before_running(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "scripts" / "formats_table.bash"), "--formats", "fp8,fp4",
                           "--out", str(tmp_path / "f")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--formats: unknown 'fp4'; allowed: bf16, posit8, fp8, int8" in proc.stderr
    assert not (tmp_path / "f").exists()

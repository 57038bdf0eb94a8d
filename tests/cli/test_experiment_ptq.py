"""scripts/ptq_table.bash as a user runs it: the PTQ/QAT table on the default task, shortened."""
import csv
import os
import subprocess

from helpers import REPO, accuracy_by_hand, script_refuses


def test_ptq_table_runs_every_row_on_the_default_task(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "ptq_table.bash"), "--max-update", "4", "--adaround-iters",
                           "5", "--calib-batches", "1", "--out", str(tmp_path / "p")],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| ")][1:]  # after the header
    assert [r[1] for r in rows] == ["FP32", "W8A8+residual", "W8A8+residual", "W8A8+residual+points",
                                    "W8A8+residual+points", "W4A32", "W4A32+AdaRound", "W4A8+residual"]
    run = next((tmp_path / "p").glob("*-ptq-default-task-*"))
    results = list(csv.DictReader((run / "results.csv").open()))
    assert [r[2] for r in rows] == [f"{100 * float(r['accuracy']):.1f}" for r in results]  # the table is the CSV
    # a row recomputed apart: W4A32 round to nearest of the FP32 model (its weight grid, no calibration)
    accuracy, quantized = accuracy_by_hand(str(run / "fp32-seed1" / "checkpoint_best.pt"),
                                           str(tmp_path / "p" / "data" / "bin"), ["--quantw", "--bitsw", "4"])
    assert quantized and float(results[5]["accuracy"]) == accuracy
    qat_log = (run / "w4a8-qat-seed1.log").read_text()
    assert f"Loaded checkpoint {run / 'fp32-seed1' / 'checkpoint_best.pt'}" in qat_log  # QAT starts from FP32


def test_ptq_table_refuses_bad_numbers_before_running(tmp_path):
    script_refuses("ptq_table.bash", "--adaround-iters", "many", out=tmp_path / "p",
                   messages=("--adaround-iters must be an integer >= 1, got 'many'",))

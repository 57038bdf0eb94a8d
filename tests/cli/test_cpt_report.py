"""The CPT report (scripts/cpt_report.py) on real training logs, and the experiment scripts end to end."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from helpers import REPO, fairseq_train, script_refuses

from fairseq_quant.cli.cpt_report import ReportError, parse_log, phase_table, report_table
from fairseq_quant.core.schedule import CPTConfig, CyclicPrecisionScheduler

CFG = {"wbit_min": 4, "wbit_max": 8, "inbit_min": 2, "inbit_max": 6, "num_cyclic_period": 2}


@pytest.fixture(scope="module")
def logs(tiny_data, tmp_path_factory) -> dict[str, str]:
    """Logs of a static W8A8 run and a CPT run, 10 updates each, validating every 5."""
    tmp = tmp_path_factory.mktemp("cpt_report")
    (tmp / "cfg.json").write_text(str(CFG).replace("'", '"'))
    paths = {}
    for name, flags in (("static8", []), ("cpt", ["--cpt-config", str(tmp / "cfg.json")])):
        proc = fairseq_train(tiny_data, tmp / name, "--quantw", "--quantin", "--max-update", "10",
                             "--validate-interval-updates", "5", *flags)
        paths[name] = str(tmp / f"{name}-seed1.log")
        with open(paths[name], "w") as f:
            f.write(proc.stdout + proc.stderr)
    return paths


def test_parse_log_reads_schedule_account_and_validations(logs):
    run = parse_log(logs["cpt"])
    assert run.updates == list(range(1, 11))
    scheduler = CyclicPrecisionScheduler(CPTConfig(**CFG), 10)
    assert list(zip(run.wbits, run.inbits)) == [scheduler.bits_at(n - 1) for n in run.updates]
    assert run.best_metric == "accuracy" and run.maximize
    assert [v["num_updates"] for v in run.valid] == [5, 10]
    static = parse_log(logs["static8"])
    assert static.bitops == pytest.approx(64 * static.macs, rel=1e-5)  # logged with 6 significant digits
    assert static.bitops_vs_static8 == pytest.approx(1.0, rel=1e-5)
    # every update's MACs at its own bits: well below static 8-bit, above the all-minimum 4 x 2 bits
    assert 8 / 64 < run.bitops_vs_static8 < 0.6


def test_account_and_length_come_from_the_runs_end_not_its_last_logged_update(logs, tmp_path):
    # a run of 10 updates logging every 4th (--log-interval 4) has train_inner lines at 4 and 8 only; its epoch
    # summary has the account after update 10
    full = parse_log(logs["cpt"])
    lines = open(logs["cpt"]).read().splitlines(keepends=True)
    kept = [ln for ln in lines if "| train_inner |" not in ln or re.search(r"num_updates=[48],", ln)]
    assert len(kept) == len(lines) - 8
    sparse = tmp_path / "cpt-seed1.log"
    sparse.write_text("".join(kept))
    run = parse_log(str(sparse))
    assert run.updates == [4, 8] and run.length == 10 == full.length
    assert (run.macs, run.bitops, run.bw_bitops) == (full.macs, full.bitops, full.bw_bitops)
    eighth = [ln for ln in lines if re.search(r"\| train_inner \|.*num_updates=8,", ln)][0]
    assert float(re.search(r"bitops=([^,]+)", eighth).group(1)) < run.bitops  # not the update-8 account
    assert "| cpt | 1 | 10 |" in report_table({"cpt": [run]})


def test_report_table_rows(logs):
    table = report_table({"static8": [parse_log(logs["static8"])], "cpt": [parse_log(logs["cpt"])]})
    lines = table.splitlines()
    assert lines[0].startswith("| run | seeds | updates | final accuracy | best accuracy |")
    assert lines[2].startswith("| static8 | 1 | 10 |") and lines[2].endswith("| 8.00 / 8.00 | 1.000 | 1.000 |")
    mean_w = sum(parse_log(logs["cpt"]).wbits) / 10
    assert f"| {mean_w:.2f} / " in lines[3]
    cpt = parse_log(logs["cpt"])
    assert 8 / 64 < cpt.backward_vs_static8 < 1.0  # 32-bit gradients times the cycling operands
    assert lines[3].endswith(f"| {cpt.bitops_vs_static8:.3f} | {cpt.backward_vs_static8:.3f} |")


def test_phase_table_splits_the_cycles_into_bottom_and_top(logs):
    # 4-8 / 2-6 bits, 2 cycles over 10 updates: updates 1-3 and 6-8 at the bottom quarter (W 4,4,5 / A 2,2,3),
    # 4-5 and 9-10 at the top (W 7,8 / A 5,6); both validations (5, 10) follow a top
    cpt, static = parse_log(logs["cpt"]), parse_log(logs["static8"])
    acc = {n: t["accuracy"] for n, t in zip(cpt.updates, cpt.train)}
    bottom = sum(acc[n] for n in (1, 2, 3, 6, 7, 8)) / 6
    top = sum(acc[n] for n in (4, 5, 9, 10)) / 4
    valid = sum(v["accuracy"] for v in cpt.valid) / 2
    rows = phase_table({"static8": [static], "cpt": [cpt]}).splitlines()
    assert rows[0].startswith("| run | training accuracy, all lines | training accuracy, bottom |")
    static_all = sum(t["accuracy"] for t in static.train) / len(static.train)
    assert rows[2] == f"| static8 | {static_all:.2f} | — | — | — | — |"
    assert rows[3] == (f"| cpt | {sum(acc.values()) / 10:.2f} | {bottom:.2f} | {top:.2f} | — (0) | "
                       f"{valid:.2f} (2) |")


def test_cli_writes_markdown_and_png(logs, tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "cpt_report.py"), logs["static8"], logs["cpt"],
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| static8 | 1 | 10 |" in proc.stdout  # named after the file, less -seed1
    assert (out / "report.md").read_text().strip() == proc.stdout.strip()
    assert "At the bottom and the top of the cycles" in proc.stdout
    assert (out / "bit_schedules.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_name_the_file(tmp_path):
    plain = tmp_path / "plain.log"
    plain.write_text("2026-01-01 | INFO | train_inner | epoch 001:  1 / 8 loss=1.0, num_updates=1\n")
    for path, message in ((str(tmp_path / "nope.log"), "nope.log: no such file"),
                          (str(plain), "plain.log: no train_inner lines with wbits/inbits/macs/bitops")):
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / "cpt_report.py"), path, "--out",
                               str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_a_metric_the_runs_did_not_log_is_named(logs):
    with pytest.raises(ReportError, match="no 'mcc' in its validation lines; they have loss, nll_loss, accuracy"):
        report_table({"cpt": [parse_log(logs["cpt"])]}, "mcc")


def test_experiment3_runs_the_sweep_on_the_default_task_and_reports(tmp_path):
    """experiment3.bash (which runs experiment2.bash) as a user runs it, shortened to 6 updates."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "experiment3.bash"), "--periods", "2", "--ranges", "4-8",
                           "--period", "2", "--max-update", "6", "--out", str(tmp_path / "e3")],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table, _, phases = proc.stdout[proc.stdout.index("| run | seeds"):].partition("\n\nAt the bottom and the top")
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    # the sweep's two points are the same config: run once
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| static8", "| cpt-w4-8-a4-8-p2"]
    assert rows[1].endswith("| 1.000 | 1.000 |")  # forward and backward bit operations of static 8-bit
    (run,) = [d for d in os.listdir(tmp_path / "e3") if "-cpt-sweep-default-task-" in d]
    assert sorted(p.name for p in (tmp_path / "e3" / run).glob("cfg_cpt-*")) == ["cfg_cpt-cpt-w4-8-a4-8-p2.json"]
    assert (tmp_path / "e3" / run / "report" / "bit_schedules.png").exists()
    assert [r.split(" | ")[0] for r in phases.splitlines() if r.startswith("| ")][1:] == ["| static8",
                                                                                        "| cpt-w4-8-a4-8-p2"]


def test_experiment2_refuses_a_bad_cpt_config_before_running_anything(tmp_path):
    bad = tmp_path / "cfg.json"
    bad.write_text('{"wbit_min": 4, "wbit_max": 8, "inbit_min": 4, "inbit_max": 8}')
    script_refuses("experiment2.bash", "--cpt-configs", str(bad), out=tmp_path / "out",
                   messages=(f"fairseq-quant-experiment cpt: error: {bad}", "missing key(s) num_cyclic_period"))
    proc = subprocess.run(["bash", str(REPO / "scripts" / "experiment2.bash"), "--bits", "4"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "cpt takes no --bits" in proc.stderr


def staircase_log(tmp_path, accuracy_at: dict[int, float], inbits: int | None = None) -> str:
    """A fairseq train log of a staircase run: 4 updates per width, the given training accuracy at each; the
    inputs climb with the weights, or stay at ``inbits``."""
    lines, n = [], 0
    for bits, acc in accuracy_at.items():
        for k in range(4):
            n += 1
            lines.append(f"2026-12-01 10:00:00 | INFO | train_inner | epoch 001:  {n} / 99 wbits={bits}, "
                         f"inbits={inbits or bits}, macs={n}e6, bitops={n * bits * bits}e6, loss={2 - acc / 100:.3f}, "
                         f"accuracy={acc - 3 + 2 * k}, num_updates={n}, lr=0.001")
    lines.append("2026-12-01 10:00:01 | INFO | valid | epoch 001 | valid on 'valid' subset | loss 0.5 | "
                 f"accuracy 90 | num_updates {n}")
    path = tmp_path / "staircase.log"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_precision_range_picks_the_lowest_width_from_which_training_works(tmp_path):
    from fairseq_quant.cli.cpt_report import precision_range

    log = staircase_log(tmp_path, {2: 50.0, 3: 52.0, 4: 81.0, 5: 70.0, 6: 88.0, 7: 90.0, 8: 91.0})
    bound, table = precision_range(parse_log(log), threshold=0.85, criterion="fraction")
    # 5 bits (72) falls under 0.85 x 93 (79): the bound is the lowest width from which every width works
    assert bound == 6
    assert "| 4 | 4 | 83.000 | yes |" in table and "| 5 | 4 | 72.000 | no |" in table
    assert precision_range(parse_log(log), threshold=0.75, criterion="fraction")[0] == 4
    # the CPT paper's criterion: the first width that rises over the one below by more than 10 points (4: +29);
    # the lowest width over the first half of its own phase (48)
    bound, table = precision_range(parse_log(log), criterion="rise")
    assert bound == 4 and "| 2 | 4 | 52.000 | no |" in table and "| 3 | 4 | 54.000 | no |" in table
    assert precision_range(parse_log(log), threshold=3, criterion="rise")[0] == 2  # 2 bits already trains: +4
    assert "| 4 | 4 | 83.000 | yes |" in table and "rises by more than 10 over the width below" in table
    assert precision_range(parse_log(log), threshold=30, criterion="rise")[0] == 8  # no rise of 30: the top
    with pytest.raises(ValueError, match="criterion must be one of rise, fraction, got 'jump'"):
        precision_range(parse_log(log), criterion="jump")
    with pytest.raises(ReportError, match="do not rise step by step"):
        precision_range(parse_log(staircase_log(tmp_path, {8: 90.0, 4: 80.0})))
    # one role climbing, the other at the top: the bound is that role's
    bound, table = precision_range(parse_log(staircase_log(tmp_path, {2: 50.0, 3: 88.0, 4: 90.0}, inbits=8)))
    assert bound == 3 and table.startswith("| weight bits (inputs at 8) |")


@pytest.mark.parametrize("roles", ["together", "separate"])
def test_precision_range_experiment_writes_the_cfg_with_its_bound(tmp_path, roles):
    """fairseq-quant-experiment precision-range as a user runs it, on the tiny model (2 updates per width): one
    run for weights and inputs together, or one for each role with the other at the top."""
    from fairseq_quant.core.schedule import load_cpt_config

    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(["fairseq-quant-experiment", "precision-range", "--pretrained", "tiny", "--max-update",
                           "14", "--period", "4", "--roles", roles, "--out", str(tmp_path / "prt")],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    heads = [line for line in proc.stdout.splitlines() if line.startswith("| ") and " updates | training" in line]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and line not in heads]
    rise = "rises by more than 10 over the width below |"  # the default criterion, the CPT paper's
    assert heads == ([f"| bits (W = A) | updates | training accuracy (second half of the phase) | {rise}"]
                     if roles == "together" else
                     [f"| weight bits (inputs at 8) | updates | training accuracy (second half of the phase) | {rise}",
                      f"| input bits (weights at 8) | updates | training accuracy (second half of the phase) | {rise}"])
    assert [int(r.split(" | ")[0][2:]) for r in rows] == [2, 3, 4, 5, 6, 7, 8] * len(heads)
    assert all(r.split(" | ")[1] == "2" for r in rows)  # 2 updates at each width: the staircase
    (run,) = [d for d in (tmp_path / "prt").iterdir() if "-precision-range-" in d.name]
    cfg = load_cpt_config(str(run / "cfg_cpt.json"))
    bounds = [int(b) for b in re.findall(r"lowest width that trains: (\d+) bits", proc.stdout)]
    assert (cfg.wbit_min, cfg.inbit_min) == ((bounds[0],) * 2 if roles == "together" else tuple(bounds))
    assert (cfg.wbit_max, cfg.inbit_max, cfg.num_cyclic_period) == (8, 8, 4)
    for name in ["precision-range"] if roles == "together" else ["precision-range-weights", "precision-range-inputs"]:
        staircase = json.loads((run / f"cfg_cpt-{name}.json").read_text())
        assert staircase["schedule"] == "staircase"
        assert (staircase["wbit_min"], staircase["inbit_min"]) == {
            "precision-range": (2, 2), "precision-range-weights": (2, 8), "precision-range-inputs": (8, 2)}[name]


def test_precision_range_refuses_unknown_roles_before_running(tmp_path):
    proc = subprocess.run(["fairseq-quant-experiment", "precision-range", "--roles", "weights", "--out",
                           str(tmp_path / "prt")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--roles must be one of together, separate, got 'weights'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "prt").exists()
    from fairseq_quant.cli.experiments import prt_threshold

    with pytest.raises(ValueError, match="--criterion must be one of rise, fraction, got 'jump'"):
        prt_threshold({"criterion": "jump", "threshold": ""})  # the CLI turns it into a usage error, as --roles

    assert prt_threshold({"criterion": "rise", "threshold": ""}) == 10.0
    assert prt_threshold({"criterion": "fraction", "threshold": ""}) == 0.9
    for criterion, threshold, message in (("rise", "0", "a number > 0 (points) with --criterion rise, got '0'"),
                                          ("fraction", "5", "a number in (0, 1] with --criterion fraction, got '5'")):
        with pytest.raises(ValueError, match=re.escape(f"--threshold must be {message}")):
            prt_threshold({"criterion": criterion, "threshold": threshold})

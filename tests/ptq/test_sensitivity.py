"""Per-layer PTQ sensitivity (fairseq_quant.ptq.sensitivity, scripts/experiment1.bash): the groups of a model,
one group quantized at a time, the FP32 baseline against evaluate.py, the CSV / markdown / heatmap outputs, and the
errors for bad flags."""
import csv
import json
import os
import subprocess

import matplotlib.image
import numpy as np
import pytest
import torch
from helpers import REPO, fairseq_train, run_in_process, tiny_batch, tiny_model

from fairseq_quant.cli import evaluate
from fairseq_quant.cli import sensitivity as sensitivity_cli
from fairseq_quant.core.quant_measure import QuantMeasure
from fairseq_quant.ptq import sensitivity
from fairseq_quant.ptq.loader import load_model_and_task
from fairseq_quant.ptq.sensitivity import Group, recipe_for, sensitivity_groups

pytestmark = pytest.mark.filterwarnings("ignore:.pin_memory. argument is set as true")

LAYER_COLUMNS = ["q W", "q A", "k W", "k A", "v W", "v A", "attn_in A", "probs A", "out W", "out A", "fc1 W", "fc1 A",
                 "fc2 W", "fc2 A", "attn_res A", "y A"]
N_GROUPS = 2 * 16 + 3  # quant_roberta_tiny: 2 layers x 16 groups, token embeddings, head weights, head inputs


@pytest.fixture(scope="module")
def fp32_checkpoint(tiny_data, tmp_path_factory) -> str:
    """A plain FP32 quant_roberta_tiny fine-tuned with the real fairseq-train (48 updates: past always
    predicting one class, so some quantized groups flip predictions)."""
    save = tmp_path_factory.mktemp("sensitivity_fp32")
    fairseq_train(tiny_data, save, "--max-update", "48")
    return str(save / "checkpoint_last.pt")


def quantizers(model) -> dict:
    return {n: q for n, q in model.named_modules() if isinstance(q, QuantMeasure)}


def test_tiny_model_has_16_groups_per_layer_plus_embeddings_and_head():
    groups = sensitivity_groups(tiny_model())
    assert len(groups) == N_GROUPS
    assert [f"{g.component} {g.kind}" for g in groups[:16]] == LAYER_COLUMNS
    assert [g.layer for g in groups] == [0] * 16 + [1] * 16 + ["emb", "head", "head"]
    assert groups[16 + 1].patterns == ("encoder.sentence_encoder.layers.1.self_attn.q_proj.output_quant",)
    assert groups[-1].label == "head A" and groups[2].label == "layer 0 k W"


def test_quantizing_one_group_turns_on_only_its_quantizers_and_changes_the_output():
    model = tiny_model().eval()
    tokens = tiny_batch()
    with torch.no_grad():
        fp32 = model(tokens, features_only=True, classification_head_name="sentence_classification_head")[0]
    expected = {
        "layer 1 attn_in A": {"encoder.sentence_encoder.layers.1.self_attn.input_quant"},
        "layer 0 probs A": {"encoder.sentence_encoder.layers.0.self_attn.probs_quant"},
        "layer 0 out A": {"encoder.sentence_encoder.layers.0.self_attn.out_proj.input_quant"},
        "layer 1 y A": {"encoder.sentence_encoder.layers.1.ffn_residual_quant"},
        "emb W": {"encoder.sentence_encoder.embed_tokens.weight_quant"},
        "head W": {"classification_heads.sentence_classification_head.dense.weight_quant",
                     "classification_heads.sentence_classification_head.out_proj.weight_quant"},
    }
    seen = set()
    for group in sensitivity_groups(model):
        model.set_quant_recipe(recipe_for(group, 4, 3))
        active = {n: q for n, q in quantizers(model).items() if q.active}
        assert 1 <= len(active) <= 2, group
        assert not seen & set(active), f"{group.label} shares quantizers with another group"
        seen |= set(active)
        if group.label in expected:
            assert set(active) == expected[group.label]
        for q in active.values():
            assert q.spec.mode == "quantize" and q.spec.is_int
            assert (q.role == "weight") == (group.kind == "W")
            assert q.spec.bits == (4 if group.kind == "W" else 3)
        with torch.no_grad():
            out = model(tokens, features_only=True, classification_head_name="sentence_classification_head")[0]
        assert not torch.equal(out, fp32), f"quantizing {group.label} changed nothing"
    model.set_quant_recipe(recipe_for(None, 4, 3))
    assert not any(q.active for q in quantizers(model).values())


def rows_of(*drops) -> list[dict]:
    rows = [dict(layer=None, component="baseline", kind="FP32", metric=0.9, drop=0.0, n=10)]
    names = [(0, "q", "W"), (0, "fc1", "A"), (1, "probs", "A"), (1, "fc2", "W"), ("emb", "emb", "W")]
    for (layer, comp, kind), drop in zip(names, drops):
        rows.append(dict(layer=layer, component=comp, kind=kind, metric=0.9 - drop, drop=drop, n=10))
    return rows


def test_markdown_sorts_by_drop_and_compares_attention_with_feed_forward():
    text = sensitivity.markdown(rows_of(0.01, 0.05, -0.01, 0.03, 0.2), "accuracy", "title")
    assert "FP32 baseline accuracy: 90.00 (10 sentences)" in text
    # attention: q W 1, probs A -1 -> mean 0; feed-forward: fc1 A 5, fc2 W 3 -> mean 4 (points)
    assert "attention 0.00 (2 groups), feed-forward 4.00 (2 groups)" in text
    assert "Most sensitive: emb W (20.00), layer 0 fc1 A (5.00), layer 1 fc2 W (3.00)." in text
    table = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert table[0] == ["| layer", "component", "kind", "accuracy", "drop |"]
    assert [float(r[-1].rstrip(" |")) for r in table[1:]] == [20.0, 5.0, 3.0, 1.0, -1.0]


def test_heatmap_grid_has_layers_as_rows_and_blanks_where_a_row_has_no_group():
    rows, cols, grid = sensitivity.heatmap_grid(rows_of(0.01, 0.05, -0.01, 0.03, 0.2))
    assert rows == ["0", "1", "emb"]
    assert cols == ["q W", "probs A", "fc1 A", "fc2 W", "emb W"]
    assert grid[0, 0] == pytest.approx(1.0) and grid[1, 1] == pytest.approx(-1.0) and grid[2, 4] == pytest.approx(20)
    assert np.isnan(grid[0, 1]) and np.isnan(grid[2, 0])


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def check_outputs(out_dir, n_sentences: int, changed: bool = False) -> list[dict]:
    """The three files of a run: CSV with the baseline and one row per group, drops = baseline - metric,
    markdown sorted by drop, a real PNG."""
    rows = read_csv(os.path.join(out_dir, "sensitivity.csv"))
    assert list(rows[0]) == ["layer", "component", "kind", "metric", "drop"]
    assert rows[0]["component"] == "baseline" and rows[0]["layer"] == "" and float(rows[0]["drop"]) == 0.0
    assert len(rows) == 1 + N_GROUPS
    assert [f"{r['component']} {r['kind']}" for r in rows[1:17]] == LAYER_COLUMNS
    assert [r["layer"] for r in rows[1:]] == ["0"] * 16 + ["1"] * 16 + ["emb", "head", "head"]
    baseline = float(rows[0]["metric"])
    for r in rows[1:]:
        k = float(r["metric"]) * n_sentences  # an accuracy over the n sentences: k right of n
        assert k == pytest.approx(round(k), abs=1e-6) and 0 <= round(k) <= n_sentences
        assert float(r["drop"]) == pytest.approx(baseline - float(r["metric"]), abs=1e-12)
    if changed:  # quantizing some group does change predictions (W4A4 on the tiny model)
        assert any(float(r["drop"]) != 0.0 for r in rows[1:])
    text = open(os.path.join(out_dir, "sensitivity.md")).read()
    assert f"({n_sentences} sentences)" in text
    drops = [float(line.split(" | ")[-1].rstrip(" |")) for line in text.splitlines()
             if line.startswith("| ") and line[2].isalnum() and "component" not in line]
    assert len(drops) == N_GROUPS and drops == sorted(drops, reverse=True)
    assert sorted(drops) == pytest.approx(sorted(100 * float(r["drop"]) for r in rows[1:]), abs=0.006)
    image = matplotlib.image.imread(os.path.join(out_dir, "sensitivity.png"))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 400 and image.shape[2] in (3, 4)
    return rows


def run_cli(capsys, module, *argv: str) -> tuple[int, str, str]:
    return run_in_process(capsys, module.cli_main, *argv)


def test_fp32_baseline_equals_evaluate_and_each_row_is_one_group(fp32_checkpoint, tiny_data, tmp_path, capsys):
    common = ("--checkpoint", fp32_checkpoint, "--data", str(tiny_data), "--cpu")
    code, out, err = run_cli(capsys, evaluate, *common)
    assert code == 0, err
    fp32 = json.loads(out.strip().splitlines()[-1])
    assert fp32["quant"] == "FP32" and fp32["n"] == 64
    code, out, err = run_cli(capsys, sensitivity_cli, *common, "--bitsw", "4", "--bitsin", "4", "--calib-batches", "2",
                             "--out", str(tmp_path / "s"))
    assert code == 0, err
    rows = check_outputs(tmp_path / "s", 64, changed=True)
    assert float(rows[0]["metric"]) == pytest.approx(fp32["accuracy"], abs=1e-12)
    assert out.startswith("**quant_roberta_tiny on bin (valid): accuracy drop, one group at a time in W4A4")
    assert "group 35/35 head A" in err  # progress, one line per group


def test_run_sensitivity_scores_the_first_sentences_and_leaves_the_model_fp32(fp32_checkpoint, tiny_data):
    model, task, _ = load_model_and_task(fp32_checkpoint, str(tiny_data))
    model.eval()
    name, metric_fn = sensitivity.metric_for(str(tiny_data), regression=False)
    assert name == "accuracy"
    groups = [Group(0, "fc1", "A", ("*.layers.0.fc1.input_quant",)), Group("emb", "emb", "W", ("*embed_tokens*",))]
    rows = sensitivity.run_sensitivity(model, task, weight_bits=2, input_bits=2, calib_batches=1, batch_size=8,
                                       split="valid", calib_split="train", seed=1, device=torch.device("cpu"),
                                       metric_fn=metric_fn, max_sentences=20, groups=groups)
    assert [r["n"] for r in rows] == [20, 20, 20]
    assert [(r["layer"], r["component"], r["kind"]) for r in rows] == [(None, "baseline", "FP32"), (0, "fc1", "A"),
                                                                       ("emb", "emb", "W")]
    assert all(r["drop"] == rows[0]["metric"] - r["metric"] for r in rows)
    assert not any(q.active for q in quantizers(model).values())
    assert len(task.dataset("valid")) == 64  # the task itself still has the whole split


@pytest.mark.parametrize("flags, message", [
    (("--bitsw", "17"), "argument --bitsw: invalid bit width '17'"),
    (("--bitsin", "1"), "argument --bitsin: invalid bit width '1'"),
    (("--max-sentences", "0"), "argument --max-sentences: expected a positive integer"),
    (("--calib-batches", "-1"), "argument --calib-batches: expected a non-negative integer"),
    (("--split", "test"), "--split/--calib-split: "),
])
def test_bad_flags_exit_2_naming_the_flag(fp32_checkpoint, tiny_data, capsys, flags, message):
    code, _, err = run_cli(capsys, sensitivity_cli, "--checkpoint", fp32_checkpoint, "--data", str(tiny_data), *flags)
    assert code == 2 and message in err, err


def test_missing_checkpoint_exits_2(tiny_data, tmp_path, capsys):
    code, _, err = run_cli(capsys, sensitivity_cli, "--checkpoint", str(tmp_path / "nope.pt"), "--data", str(tiny_data))
    assert code == 2 and "--checkpoint: no such file" in err


def experiment1(*args: str, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(REPO / "scripts" / "experiment1.bash"), *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd=cwd)


def test_experiment1_runs_end_to_end(fp32_checkpoint, tiny_data, tmp_path):
    proc = experiment1(fp32_checkpoint, str(tiny_data), "--bits", "4,8", "--calib-batches", "1", "--max-sentences",
                       "40", "--out", "r", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = os.listdir(tmp_path / "r")
    assert run.endswith("-sensitivity")
    check_outputs(tmp_path / "r" / run, 40)
    assert "one group at a time in W4A8, 1 calibration batches" in proc.stdout
    assert "| layer | component | kind | accuracy | drop |" in proc.stdout


@pytest.mark.parametrize("args, message", [
    ((), "expected CHECKPOINT DATA"),
    (("{ckpt}", "{data}", "--bits", "4,17"), "--bits: bit widths go from 2 to 16, got '4,17'"),
    (("{ckpt}", "{data}", "--bits", "w4"), "--bits expects N or W,I"),
    (("{ckpt}", "{data}", "--max-sentences", "0"), "--max-sentences must be an integer >= 1"),
    (("{ckpt}", "{data}", "--frobnicate"), "unrecognized arguments: --frobnicate"),
    (("nope.pt", "{data}"), "--checkpoint: no such file: nope.pt"),
])
def test_experiment1_refuses_bad_arguments_before_running(tiny_data, tmp_path, args, message, capsys, monkeypatch):
    args = [a.format(ckpt=__file__, data=tiny_data) for a in args]
    if len(args) < 3:  # the script's own check, and one refusal through the whole script
        proc = experiment1(*args, cwd=tmp_path)
        code, err = proc.returncode, proc.stderr
    else:  # the script is `fairseq-quant-experiment sensitivity --checkpoint C D ...`: its cli_main, in process
        from fairseq_quant.cli.experiment import cli_main

        monkeypatch.chdir(tmp_path)
        code, _, err = run_in_process(capsys, cli_main, "sensitivity", "--checkpoint", *args)
    assert code == 2 and message in err, err
    assert not (tmp_path / "runs").exists()

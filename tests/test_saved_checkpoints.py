"""Checkpoints written before the options/spec redesign (tests/fixtures, made by commit e8b2d20's code: fairseq-train
8 updates on the tiny task) still load and evaluate to the same numbers: flags with points (W8A8, y at 16 bits, C at
6, residual sums), a saved FP8 recipe, and cyclic precision with learned ranges at its evaluation bits."""
import json

import pytest
import torch
from helpers import HEAD, REPO, json_line, run_in_process

from fairseq_quant.cli.evaluate import cli_main
from fairseq_quant.ptq.loader import load_model_and_task

FIXTURES = REPO / "tests" / "fixtures"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_checkpoint_of_the_previous_layout_evaluates_to_the_same_numbers(name, tiny_data, capsys):
    ckpt = str(FIXTURES / f"{name}.pt")
    code, out, err = run_in_process(capsys, cli_main, "--checkpoint", ckpt, "--data", str(tiny_data))
    assert code == 0, err
    result, expected = json_line(out), EXPECTED[name]
    assert (result["accuracy"], result["f1"], result["quant"]) == (expected["accuracy"], expected["f1"],
                                                                  expected["quant"])
    model, task, _ = load_model_and_task(ckpt, str(tiny_data))
    model.eval()
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(4, len(task.source_dictionary), (4, 10), generator=g)
    tokens[:, 0] = 0
    with torch.no_grad():
        logits = model(tokens, features_only=True, classification_head_name=HEAD)[0]
    assert logits.flatten().tolist() == pytest.approx(expected["logits"], abs=1e-6)

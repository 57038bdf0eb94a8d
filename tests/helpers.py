"""Small builders shared by the tests: tiny dictionaries, args and quant_roberta models."""
from __future__ import annotations

import argparse
from types import SimpleNamespace

import torch
from fairseq.data import Dictionary

import fairseq_quant  # noqa: F401  (registers the model)
from fairseq_quant.plugin.quant_roberta import QuantRobertaModel, quant_roberta_tiny_architecture

VOCAB = 40


def tiny_dictionary(n: int = VOCAB) -> Dictionary:
    d = Dictionary()
    for i in range(n):
        d.add_symbol(f"w{i}")
    return d


def tiny_args(flags: list[str] = ()) -> argparse.Namespace:
    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)  # as fairseq parses model args
    QuantRobertaModel.add_args(parser)
    args = parser.parse_args(list(flags))
    args.max_positions = 64
    args.dropout = 0.0
    args.attention_dropout = 0.0
    quant_roberta_tiny_architecture(args)
    return args


def tiny_model(flags: list[str] = (), num_classes: int = 2, seed: int = 0, **training_args) -> QuantRobertaModel:
    """A tiny quant_roberta with a 2-class head; ``training_args`` (e.g. ``max_update=30``) are set on its args."""
    torch.manual_seed(seed)
    args = tiny_args(flags)
    for key, value in training_args.items():
        setattr(args, key, value)
    task = SimpleNamespace(source_dictionary=tiny_dictionary(), max_positions=lambda: 64)
    model = QuantRobertaModel.build_model(args, task)
    model.register_classification_head("sentence_classification_head", num_classes=num_classes)
    return model


def tiny_batch(batch: int = 4, length: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, VOCAB + 4, (batch, length), generator=g)
    tokens[:, 0] = 0  # <s>
    tokens[-1, -3:] = 1  # some padding
    return tokens


HEAD = "sentence_classification_head"


def calibrated(flags: list[str], seed: int = 0) -> QuantRobertaModel:
    """``tiny_model(flags)`` whose running ranges three training-mode passes recorded, in evaluation mode."""
    model = tiny_model(flags, seed=seed)
    model.train()
    with torch.no_grad():
        for s in range(3):
            model(tiny_batch(seed=s), features_only=True, classification_head_name=HEAD)
    return model.eval()


def run_in_process(capsys, cli_main, *argv: str) -> tuple[int, str, str]:
    """A command's ``cli_main`` in this process (its code path without the interpreter start-up): (exit code,
    stdout, stderr)."""
    try:
        cli_main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def json_line(out: str) -> dict:
    """The one JSON line a command printed."""
    import json

    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert len(lines) == 1, out
    return json.loads(lines[0])

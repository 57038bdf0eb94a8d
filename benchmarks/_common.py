"""Shared by the kernel benchmarks (gemm.py, e2e_inference.py, int8_training.py): the common flags, timing
(``triton.testing.do_bench`` medians on CUDA, a perf_counter loop elsewhere), the markdown table, the JSON file
and a quant_roberta builder. Nothing here touches CUDA at import time."""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from types import SimpleNamespace

import torch

import fairseq_quant  # noqa: F401  (registers the model; importing fairseq leaves the root logger at DEBUG)

HEAD = "sentence_classification_head"


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The flags every benchmark takes; also quiets the loggers fairseq's import left verbose."""
    logging.basicConfig(level=logging.WARNING, force=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and 1-2 repeats (a quick CPU check)")
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE as JSON")


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench_ms(fn, device: str, repeats: int = 5) -> float:
    """Median milliseconds per call of ``fn``: ``triton.testing.do_bench`` on CUDA (after one warm-up call, so
    autotuning and compilation are not timed), else ``repeats`` perf_counter-timed calls after one warm-up."""
    fn()
    sync(device)
    if device == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, return_mode="median"))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e6):
            return f"{value:.{digits}g}"
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.{digits}f}"
    return str(value)


def print_table(rows: list[dict], columns: list[str]) -> None:
    """``rows`` as a markdown table of ``columns`` (missing values print as ``-``)."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(fmt(row.get(c)) for c in columns) + " |")


def write_json(path: str | None, payload: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)


def build_roberta(flags: list[str], device: str, smoke: bool, seed: int = 0, vocab: int = 50265,
                  num_classes: int = 2):
    """quant_roberta (RoBERTa-base; with ``smoke`` the 2-layer, 64-wide tiny architecture) with a classification
    head and ``flags`` (the model's own command-line flags), on ``device``, in float32 and train mode. Fake
    dictionary symbols: speed does not depend on the weights."""
    from fairseq.data import Dictionary

    from fairseq_quant.plugin.quant_roberta import (
        QuantRobertaModel,
        quant_roberta_base_architecture,
        quant_roberta_tiny_architecture,
    )

    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)  # as fairseq parses model args
    QuantRobertaModel.add_args(parser)
    args = parser.parse_args(flags)
    args.max_positions = 64 if smoke else 512
    (quant_roberta_tiny_architecture if smoke else quant_roberta_base_architecture)(args)
    d = Dictionary()
    for i in range((64 if smoke else vocab) - len(d)):
        d.add_symbol(f"w{i}")
    torch.manual_seed(seed)
    task = SimpleNamespace(source_dictionary=d, max_positions=lambda: args.max_positions)
    model = QuantRobertaModel.build_model(args, task)
    model.register_classification_head(HEAD, num_classes=num_classes)
    return model.to(device).train()


def set_module_path(model, on: bool) -> None:
    """Make every attention take fairseq's module-by-module path (as deployed / INT8-trained models do) or not."""
    for module in model.modules():
        if hasattr(module, "module_path"):
            module.module_path = on


def random_tokens(model, batch: int, length: int, seed: int) -> torch.Tensor:
    """Random (synthetic) sentences for ``model``: ``<s>`` then tokens drawn from its dictionary, no padding."""
    vocab = model.encoder.sentence_encoder.embed_tokens.num_embeddings
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, vocab, (batch, length), generator=g)
    tokens[:, 0] = 0
    return tokens.to(next(model.parameters()).device)

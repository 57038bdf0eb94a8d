#!/usr/bin/env python3
"""One training step (forward + backward) of quant_roberta_base: FP32 vs W8A8 fake quantization, as a ratio.

Both variants are the same model and batch, measured in the same run, alternating, median of ``--iters`` steps
after ``--warmup``. On a GPU, steps are timed with CUDA events; ``--compile`` wraps the model in torch.compile.

    python benchmarks/qat_step.py                       # CPU, batch 4 x 128
    python benchmarks/qat_step.py --device cuda --batch 32 --length 128 [--compile]
"""
from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch
from fairseq.data import Dictionary

import fairseq_quant  # noqa: F401  (registers the model)
from fairseq_quant.plugin.quant_roberta import QuantRobertaModel, quant_roberta_base_architecture

HEAD = "sentence_classification_head"


def build(flags: list[str], vocab: int, device: str, seed: int = 0) -> QuantRobertaModel:
    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)
    QuantRobertaModel.add_args(parser)
    args = parser.parse_args(flags)
    args.max_positions = 512
    quant_roberta_base_architecture(args)
    d = Dictionary()
    for i in range(vocab - len(d)):
        d.add_symbol(f"w{i}")
    torch.manual_seed(seed)
    model = QuantRobertaModel.build_model(args, SimpleNamespace(source_dictionary=d, max_positions=lambda: 512))
    model.register_classification_head(HEAD, num_classes=2)
    return model.to(device).train()


def step(model, tokens: torch.Tensor, target: torch.Tensor) -> None:
    logits = model(tokens, classification_head_name=HEAD)[0]
    loss = torch.nn.functional.cross_entropy(logits.float(), target)
    loss.backward()
    model.zero_grad(set_to_none=True)


def timed(fn, device: str) -> float:
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="sentences per step (default 4 on CPU, 32 on GPU)")
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--vocab", type=int, default=50265)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--bf16", action="store_true", help="autocast to bfloat16 (GPU)")
    opts = p.parse_args()
    batch = opts.batch or (32 if opts.device == "cuda" else 4)
    variants = {"fp32": [], "w8a8": ["--quantw", "--quantin", "--bitsw", "8", "--bitsin", "8"]}
    models = {name: build(flags, opts.vocab, opts.device) for name, flags in variants.items()}
    if opts.compile:
        models = {name: torch.compile(m) for name, m in models.items()}
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, opts.vocab, (batch, opts.length), generator=g).to(opts.device)
    tokens[:, 0] = 0
    target = torch.randint(0, 2, (batch,), generator=g).to(opts.device)
    ctx = torch.autocast(opts.device, dtype=torch.bfloat16) if opts.bf16 else torch.autocast(opts.device, enabled=False)
    times = {name: [] for name in models}
    with ctx:
        for i in range(opts.warmup + opts.iters):
            for name, model in models.items():  # alternate, so drift affects both alike
                t = timed(lambda model=model: step(model, tokens, target), opts.device)
                if i >= opts.warmup:
                    times[name].append(t)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    spread = {name: (min(ts), max(ts)) for name, ts in times.items()}
    what = f"quant_roberta_base, batch {batch} x {opts.length}, {opts.device}" + (", compiled" if opts.compile else "")
    print(f"# one training step (forward + backward), {what}; median of {opts.iters}")
    print("| variant | median s/step | min | max |")
    print("|---|---|---|---|")
    for name in models:
        print(f"| {name} | {med[name]:.4f} | {spread[name][0]:.4f} | {spread[name][1]:.4f} |")
    print(f"ratio w8a8 / fp32: {med['w8a8'] / med['fp32']:.3f}")


if __name__ == "__main__":
    main()

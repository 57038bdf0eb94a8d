#!/usr/bin/env python3
"""Fine-tuning throughput with INT8 mixed-precision training (``--int8-training``) vs BF16 autocast.

RoBERTa-base (quant_roberta_base) with a 2-class classification head, AdamW, ``--batch`` x ``--length`` tokens
per step (default 32 x 128), ``--warmup`` steps (default 3) then ``--steps`` timed ones (default 20), every step
under ``torch.autocast(device, dtype=torch.bfloat16)``. The data are synthetic: random tokens and random labels
(a pool of 4 batches, cycled), the same for every case, as are the seed and the initial weights. Cases: BF16
autocast (the baseline), the same with fairseq's module-by-module attention (the path INT8 training makes
attention take, so that difference shows on its own), and ``--int8-training`` fwd, fwd_dgrad, all, and all with
stochastic rounding of the gradients. ``ratio`` = tokens/s / the baseline's tokens/s (>1: faster, measured in
the same run); ``peak GiB`` is ``torch.cuda.max_memory_allocated`` over the case (model, optimizer state and
activations; reset between cases; n/a on CPU); ``final loss`` is the last step's loss (a sanity check: it
should stay close to the baseline's). Step times are medians, each step synchronized.

    python benchmarks/int8_training.py --json int8_training.json       # GPU, 32 x 128, 20 steps
    python benchmarks/int8_training.py --batch 64 --steps 50
    python benchmarks/int8_training.py --smoke --device cpu            # tiny model, batch 2 x 16, 2 steps
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch
import torch.nn.functional as F
from _common import (
    HEAD,
    add_common_args,
    build_roberta,
    device_name,
    print_table,
    random_tokens,
    set_module_path,
    sync,
    write_json,
)

BASELINE = "bf16 autocast"
CASES = {  # name -> (the model's flags, module-path attention)
    BASELINE: ([], False),
    "bf16 autocast, module-path attention": ([], True),
    "int8 fwd": (["--int8-training", "fwd"], False),
    "int8 fwd_dgrad": (["--int8-training", "fwd_dgrad"], False),
    "int8 all": (["--int8-training", "all"], False),
    "int8 all, stochastic rounding": (["--int8-training", "all", "--int8-stochastic-rounding"], False),
}


def run_case(flags: list[str], module_path: bool, opts, batches: list) -> dict:
    """Train a fresh model for warmup + steps; its median step time, final loss and peak memory."""
    if opts.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = build_roberta(flags, opts.device, opts.smoke, seed=opts.seed)
    if module_path:
        set_module_path(model, True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr)
    times, loss = [], None
    for step in range(opts.warmup + opts.steps):
        tokens, target = batches[step % len(batches)]
        sync(opts.device)
        t = time.perf_counter()
        with torch.autocast(opts.device, dtype=torch.bfloat16):
            logits = model(tokens, features_only=True, classification_head_name=HEAD)[0]
        loss = F.cross_entropy(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(opts.device)
        if step >= opts.warmup:
            times.append(time.perf_counter() - t)
    result = {"step_ms": statistics.median(times) * 1e3, "final loss": loss.item()}
    result["peak GiB"] = torch.cuda.max_memory_allocated() / 2**30 if opts.device == "cuda" else "n/a"
    del model, optimizer
    gc.collect()
    if opts.device == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--batch", type=int, default=None, help="sentences per step (default 32; smoke 2)")
    p.add_argument("--length", type=int, default=None, help="tokens per sentence (default 128; smoke 16)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20; smoke 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; smoke 1)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    opts = p.parse_args()
    opts.batch = opts.batch or (2 if opts.smoke else 32)
    opts.length = opts.length or (16 if opts.smoke else 128)
    opts.steps = opts.steps or (2 if opts.smoke else 20)
    opts.warmup = opts.warmup if opts.warmup is not None else (1 if opts.smoke else 3)

    probe = build_roberta([], "cpu", opts.smoke)  # only for the vocabulary the batches are drawn from
    g = torch.Generator().manual_seed(opts.seed)
    batches = [(random_tokens(probe, opts.batch, opts.length, seed=opts.seed + i).to(opts.device),
                torch.randint(0, 2, (opts.batch,), generator=g).to(opts.device)) for i in range(4)]
    del probe

    rows = []
    for name, (flags, module_path) in CASES.items():
        r = run_case(flags, module_path, opts, batches)
        tokens_per_s = opts.batch * opts.length / (r["step_ms"] * 1e-3)
        ratio = tokens_per_s / rows[0]["tokens/s"] if rows else 1.0
        rows.append({"case": name, "ms/step": r["step_ms"], "tokens/s": tokens_per_s, "ratio": ratio,
                     "peak GiB": r["peak GiB"], "final loss": r["final loss"], "flags": " ".join(flags)})

    name = device_name(opts.device)
    arch = "quant_roberta_tiny" if opts.smoke else "quant_roberta_base"
    print(f"# {arch} fine-tuning (AdamW, bf16 autocast), batch {opts.batch} x {opts.length}, on {name}; median of "
          f"{opts.steps} steps after {opts.warmup}; ratio = tokens/s / {BASELINE} tokens/s (>1: faster)")
    print_table(rows, ["case", "ms/step", "tokens/s", "ratio", "peak GiB", "final loss", "flags"])
    write_json(opts.json, {"benchmark": "int8_training", "device": name, "arch": arch, "batch": opts.batch,
                           "length": opts.length, "steps": opts.steps, "warmup": opts.warmup,
                           "baseline": BASELINE, "rows": rows})


if __name__ == "__main__":
    main()

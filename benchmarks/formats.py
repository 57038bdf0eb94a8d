#!/usr/bin/env python3
"""Rounding one 4096 x 3072 float32 tensor to each number format, as a ratio to INT8 fake quantization.

The baseline is ``fake_quant_int`` with a per-tensor scale from the tensor's amax (``amax / 127``, symmetric
-127..127), the path the QAT layers take; the formats of ``fairseq_quant.core.formats`` are unscaled. Every case runs
once to warm up (and build posit tables), then ``--repeats`` rounds alternate over all cases; the median of each
is printed with its ratio to the baseline measured in the same run.

    python benchmarks/formats.py                     # CPU
    python benchmarks/formats.py --device cuda --repeats 20
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from fairseq_quant.core.formats import fake_quant_int, get_format

BASELINE = "int8 fake_quant_int (amax scale)"


def int8_fake_quant(x: torch.Tensor) -> torch.Tensor:
    scale = x.abs().amax().clamp_min(1e-12) / 127
    return fake_quant_int(x, scale, None, -127, 127)


def cases(x: torch.Tensor, generator: torch.Generator) -> dict:
    """Name -> a call rounding ``x``."""
    out = {BASELINE: functools.partial(int8_fake_quant, x)}
    for name in ["int8", "fp8_e4m3", "fp8_e5m2", "e3m2", "e2m1", "posit8_1", "posit16_1"]:
        out[name] = functools.partial(get_format(name).quantize, x)
    for name in ["int8", "fp8_e4m3", "posit8_1"]:
        out[f"{name} stochastic"] = functools.partial(get_format(name).quantize, x, "stochastic", generator)
    return out


def seconds(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=3072)
    args = parser.parse_args()

    generator = torch.Generator(args.device).manual_seed(0)
    x = torch.randn(args.rows, args.cols, generator=generator, device=args.device) * 3
    calls = cases(x, generator)
    for fn in calls.values():
        fn()
    times = {name: [] for name in calls}
    for _ in range(args.repeats):
        for name, fn in calls.items():
            times[name].append(seconds(fn, args.device))
    base = statistics.median(times[BASELINE])
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"{args.rows} x {args.cols} float32 on {where}; median of {args.repeats}")
    print(f"{'format':<34}{'ms':>10}{'x int8 fake quant':>20}")
    for name, ts in times.items():
        median = statistics.median(ts)
        print(f"{name:<34}{median * 1e3:>10.1f}{median / base:>20.2f}")


if __name__ == "__main__":
    main()

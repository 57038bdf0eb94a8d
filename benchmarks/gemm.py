#!/usr/bin/env python3
"""GEMM throughput at RoBERTa's linear-layer shapes: our Triton INT8/FP8 ``scaled_mm`` against BF16 and PyTorch.

For each M x K x N (M = batch x length tokens, K inputs, N outputs; the weight is N x K like an nn.Linear's) the
cases are: BF16 ``torch.matmul`` (the baseline), ``torch._int_mm`` (int8 -> int32, no epilogue),
``torch._scaled_mm`` in FP8 e4m3 (row-wise scales, bf16 out, no bias; per-tensor scales where row-wise ones are
unsupported, noted), ours ``scaled_mm`` INT8 and FP8 (bf16 out, scales and bias fused in the epilogue) and ours
with the activation quantization (``quantize_rows`` with dynamic row-wise scales + ``scaled_mm`` from a bf16
input: the work of a deployed layer per call, which reads one calibrated scale instead). ``ratio`` = BF16 ms /
this ms (>1: faster than BF16, measured in the same run); ``vs _int_mm`` likewise against ``torch._int_mm``.
Each shape also checks that ours INT8 equals ``scaled_mm(..., backend="torch")`` bit for bit (else how many
elements differ, by how much), that its int32 sums equal ``torch._int_mm``'s, and how far
ours FP8 is from its torch path. Timing: median of ``triton.testing.do_bench`` on CUDA, of a perf_counter loop
on CPU.

    python benchmarks/gemm.py                                   # GPU, RoBERTa-base and -large shapes
    python benchmarks/gemm.py --shapes 16384x768x3072 --json gemm.json
    python benchmarks/gemm.py --smoke --device cpu              # a quick check of the script itself
"""
from __future__ import annotations

import argparse

import torch
from _common import add_common_args, bench_ms, device_name, print_table, write_json

from fairseq_quant.kernels import quantize_rows, scaled_mm, uses_triton

SHAPES = "16384x768x2304,16384x768x3072,16384x3072x768,4096x768x3072,16384x1024x4096,16384x4096x1024"
SMOKE_SHAPES = "128x64x96,64x128x64"
BASELINE, INT_MM = "bf16 torch.matmul", "torch._int_mm"
INT8_ROWS = (INT_MM, "ours int8 scaled_mm", "ours int8 quantize+mm")


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    shapes = []
    for item in text.split(","):
        parts = item.lower().split("x")
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(f"a shape is MxKxN, got {item!r}")
        shapes.append(tuple(int(p) for p in parts))
    return shapes


def torch_fp8(x8, xs, w8, ws) -> tuple:
    """``torch._scaled_mm`` with row-wise scales, or per-tensor ones where those fail: (call, note)."""
    def rowwise():
        return torch._scaled_mm(x8, w8.t(), scale_a=xs[:, None], scale_b=ws[None, :], out_dtype=torch.bfloat16)

    def tensorwise():
        return torch._scaled_mm(x8, w8.t(), scale_a=xs.max(), scale_b=ws.max(), out_dtype=torch.bfloat16)

    errors = []
    for fn, note in ((rowwise, "row-wise scales"), (tensorwise, "per-tensor scales (row-wise failed)")):
        try:
            fn()
            return fn, note
        except (RuntimeError, TypeError, ValueError, NotImplementedError) as e:
            errors.append(str(e).splitlines()[0][:120])
    return None, "unsupported: " + " / ".join(errors)


def shape_cases(M: int, K: int, N: int, device: str) -> tuple[dict, dict, dict]:
    """(name -> call or None, name -> note, checks) for one shape."""
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(M, K, generator=g, device=device).to(torch.bfloat16)
    w = (torch.randn(N, K, generator=g, device=device) * K**-0.5).to(torch.bfloat16)
    bias = torch.randn(N, generator=g, device=device).to(torch.bfloat16)
    xq, xs = quantize_rows(x)
    wq, ws = quantize_rows(w)
    x8, xs8 = quantize_rows(x, "fp8")
    w8, ws8 = quantize_rows(w, "fp8")
    fp8_call, fp8_note = torch_fp8(x8, xs8, w8, ws8)
    path = "triton" if uses_triton(xq) else "torch fallback"

    def int8_quantized():
        q, s = quantize_rows(x)
        return scaled_mm(q, s, wq, ws, bias, out_dtype=torch.bfloat16)

    def fp8_quantized():
        q, s = quantize_rows(x, "fp8")
        return scaled_mm(q, s, w8, ws8, bias, out_dtype=torch.bfloat16)

    calls = {
        BASELINE: lambda: torch.matmul(x, w.t()),
        INT_MM: lambda: torch._int_mm(xq, wq.t()),
        "torch._scaled_mm fp8": fp8_call,
        "ours int8 scaled_mm": lambda: scaled_mm(xq, xs, wq, ws, bias, out_dtype=torch.bfloat16),
        "ours fp8 scaled_mm": lambda: scaled_mm(x8, xs8, w8, ws8, bias, out_dtype=torch.bfloat16),
        "ours int8 quantize+mm": int8_quantized,
        "ours fp8 quantize+mm": fp8_quantized,
    }
    notes = {INT_MM: "int32 out, no epilogue", "torch._scaled_mm fp8": fp8_note + ("" if fp8_call is None else
                                                                                ", bf16 out, no bias")}
    for name in calls:
        if name.startswith("ours"):
            notes[name] = f"{path}, bf16 out + bias"
    one = torch.ones(1, device=device)  # unit scales, float32 out: the int32 sums themselves (all < 2**24 here)
    sums = scaled_mm(xq, one, wq, one, out_dtype=torch.float32)
    ours = scaled_mm(xq, xs, wq, ws, bias, out_dtype=torch.bfloat16)
    ref = scaled_mm(xq, xs, wq, ws, bias, out_dtype=torch.bfloat16, backend="torch")
    ours8 = scaled_mm(x8, xs8, w8, ws8, bias, out_dtype=torch.float32)
    ref8 = scaled_mm(x8, xs8, w8, ws8, bias, out_dtype=torch.float32, backend="torch")
    checks = {"int32_sums_exact": bool(torch.equal(sums, torch._int_mm(xq, wq.t()).float())),
              "int8_exact": bool(torch.equal(ours, ref)),
              "int8_max_abs_diff": (ours.float() - ref.float()).abs().max().item(),
              "int8_elements_differing": int((ours != ref).sum()),
              "fp8_max_rel_diff": ((ours8 - ref8).abs().max() / ref8.abs().max().clamp_min(1e-30)).item()}
    return calls, notes, checks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--shapes", type=parse_shapes, default=None, help=f"MxKxN,... (default {SHAPES})")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per case on CPU (default 5, smoke 2)")
    opts = p.parse_args()
    shapes = opts.shapes or parse_shapes(SMOKE_SHAPES if opts.smoke else SHAPES)
    repeats = opts.repeats or (2 if opts.smoke else 5)
    rows, checks = [], {}
    for M, K, N in shapes:
        shape = f"{M}x{K}x{N}"
        calls, notes, checks[shape] = shape_cases(M, K, N, opts.device)
        ms = {name: bench_ms(fn, opts.device, repeats) for name, fn in calls.items() if fn is not None}
        for name in calls:
            t = ms.get(name)
            row = {"shape": shape, "case": name, "ms": t, "note": notes.get(name, "")}
            if t is not None:
                row["TFLOP/s"] = 2 * M * N * K / (t * 1e-3) / 1e12
                row["ratio"] = ms[BASELINE] / t
                if name in INT8_ROWS:
                    row["vs _int_mm"] = ms[INT_MM] / t
            rows.append(row)
        del calls
        if opts.device == "cuda":
            torch.cuda.empty_cache()

    name = device_name(opts.device)
    print(f"# GEMM M x K x N on {name}; median ms; ratio = {BASELINE} ms / ms (>1: faster)")
    print_table(rows, ["shape", "case", "ms", "TFLOP/s", "ratio", "vs _int_mm", "note"])
    for shape, c in checks.items():
        int8 = "exact" if c["int8_exact"] else (f"DIFFERS in {c['int8_elements_differing']} elements (max |diff| "
                                                f"{c['int8_max_abs_diff']:.3g})")
        print(f"check {shape}: ours int8 vs scaled_mm(backend='torch'): {int8}; int32 sums vs torch._int_mm: "
              f"{'exact' if c['int32_sums_exact'] else 'DIFFER'}; ours fp8 vs torch path: max rel diff "
              f"{c['fp8_max_rel_diff']:.2g}")
    write_json(opts.json, {"benchmark": "gemm", "device": name, "baseline": BASELINE, "rows": rows,
                           "checks": checks})


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""End-to-end inference: RoBERTa-base sentence classification in BF16 vs deployed INT8 / FP8 (``deploy``).

One forward pass (eval mode, no grad) of quant_roberta_base with a 2-class head over ``--batch`` x ``--length``
random tokens (default 128 x 128). Cases: BF16 eager (the baseline), BF16 eager with fairseq's module-by-module
attention (the attention path deployed models take, so that difference shows on its own), BF16 compiled, and
the deployed INT8 (``--quantw --quantin``) and FP8 (e4m3, amax scaling) models, eager and compiled
(``--compile-mode``; a compile failure is reported as a row). A deployed model is built with its quantization
flags (default grids: per-channel weights, per-tensor asymmetric inputs), cast to bf16, calibrated by two
train-mode forward passes over other random tokens, put in eval mode and deployed: its linear layers run
``quantize_rows`` + ``scaled_mm`` (the attention products stay as in the fake-quantized model).
``max abs dlogit`` compares logits on the benchmark batch: a deployed model against its fake-quantized twin (the
same model before ``deploy``), a compiled model against its eager self, the module-path baseline against the
baseline. ``ratio`` = BF16 eager ms / this ms (>1: faster, measured in the same run). Timing: median of
``triton.testing.do_bench`` on CUDA, of a perf_counter loop on CPU.

    python benchmarks/e2e_inference.py --json e2e.json                 # GPU, 128 x 128, compiled too
    python benchmarks/e2e_inference.py --compile-mode default          # faster compilation
    python benchmarks/e2e_inference.py --no-compile                    # eager only
    python benchmarks/e2e_inference.py --deployed int8                 # BF16 and INT8 only
    python benchmarks/e2e_inference.py --smoke --device cpu            # tiny model, batch 2 x 16, eager only
"""
from __future__ import annotations

import argparse
import copy

import torch
from _common import (
    HEAD,
    add_common_args,
    bench_ms,
    build_roberta,
    device_name,
    print_table,
    random_tokens,
    set_module_path,
    write_json,
)

BASELINE = "bf16 eager"
INT8 = ["--quantw", "--quantin"]
FP8 = INT8 + ["--formatw", "fp8_e4m3", "--formatin", "fp8_e4m3", "--formatw-scaling", "amax",
              "--formatin-scaling", "amax"]


def forward(model, tokens):
    def fn():
        with torch.no_grad():
            return model(tokens, features_only=True, classification_head_name=HEAD)[0]
    return fn


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def deployed(flags: list[str], opts) -> tuple:
    """(deployed model, its fake-quantized twin, a note on what was deployed)."""
    from fairseq_quant.deploy import deploy

    model = build_roberta(flags, opts.device, opts.smoke).to(torch.bfloat16)  # range buffers stay float32
    with torch.no_grad():  # calibration: train-mode passes record the ranges
        for seed in (1, 2):
            model(random_tokens(model, opts.batch, opts.length, seed), features_only=True,
                  classification_head_name=HEAD)
    model.eval()
    twin = copy.deepcopy(model)
    report = deploy(model, cpu_reference=True)  # on a CPU: the torch._int_mm reference path, timed as it is
    kept = sum(r.startswith("kept") for r in report.values())
    return model, twin, f"{len(report) - kept} linears deployed, {kept} kept"


def compiled(model, tokens, mode: str) -> tuple:
    """(forward call of the compiled model, error note): compiles on the first call, here."""
    torch._dynamo.reset()
    try:
        fn = forward(torch.compile(model, mode=mode), tokens)
        fn()
        return fn, None
    except Exception as e:  # report and go on: a row says what failed
        torch._dynamo.reset()
        return None, f"compile failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e) else ''}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--batch", type=int, default=None, help="sentences per batch (default 128; smoke 2)")
    p.add_argument("--length", type=int, default=None, help="tokens per sentence (default 128; smoke 16)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also time torch.compile'd models (default: on CUDA only)")
    p.add_argument("--compile-mode", default="max-autotune-no-cudagraphs")
    p.add_argument("--deployed", default="int8,fp8", help="which deployed models to time (default int8,fp8; "
                   "'' for none): split a long compiled run in two")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per case on CPU (default 5, smoke 2)")
    opts = p.parse_args()
    opts.batch = opts.batch or (2 if opts.smoke else 128)
    opts.length = opts.length or (16 if opts.smoke else 128)
    do_compile = opts.device == "cuda" if opts.compile is None else opts.compile
    repeats = opts.repeats or (2 if opts.smoke else 5)

    rows = []

    def add(case, fn, ref=None, note=""):
        row = {"case": case, "ms": None, "note": note}
        if fn is not None:
            row["ms"] = bench_ms(fn, opts.device, repeats)
            row["seq/s"] = opts.batch / (row["ms"] * 1e-3)
            row["ratio"] = rows[0]["ms"] / row["ms"] if rows else 1.0
            if ref is not None:
                row["max abs dlogit"] = max_diff(fn(), ref)
        rows.append(row)

    def add_compiled(case, model, ref):
        if not do_compile:
            return add(case, None, note="skipped (no --compile)")
        fn, error = compiled(model, tokens, opts.compile_mode)
        add(case, fn, ref, error or f"mode {opts.compile_mode}, vs eager")

    model = build_roberta([], opts.device, opts.smoke).to(torch.bfloat16).eval()
    tokens = random_tokens(model, opts.batch, opts.length, seed=0)
    base = forward(model, tokens)()
    add(BASELINE, forward(model, tokens))
    set_module_path(model, True)
    add("bf16 eager, module-path attention", forward(model, tokens), base, "vs bf16 eager")
    set_module_path(model, False)
    add_compiled("bf16 compiled", model, base)
    del model
    for kind, flags in (("int8", INT8), ("fp8", FP8)):
        if kind not in opts.deployed.split(","):
            continue
        model, twin, note = deployed(flags, opts)
        fake = forward(twin, tokens)()
        del twin
        add(f"{kind} deployed eager", forward(model, tokens), fake, f"{note}; vs fake-quant twin")
        add_compiled(f"{kind} deployed compiled", model, forward(model, tokens)())
        del model
        if opts.device == "cuda":
            torch.cuda.empty_cache()

    name = device_name(opts.device)
    arch = "quant_roberta_tiny" if opts.smoke else "quant_roberta_base"
    print(f"# {arch} forward, batch {opts.batch} x {opts.length}, on {name}; median ms; "
          f"ratio = {BASELINE} ms / ms (>1: faster)")
    print_table(rows, ["case", "ms", "seq/s", "ratio", "max abs dlogit", "note"])
    write_json(opts.json, {"benchmark": "e2e_inference", "device": name, "arch": arch, "batch": opts.batch,
                           "length": opts.length, "baseline": BASELINE, "rows": rows})


if __name__ == "__main__":
    main()

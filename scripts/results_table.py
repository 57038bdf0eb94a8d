#!/usr/bin/env python3
"""Render the CSV rows that evaluate.py appends (``--csv``) as a markdown table.

    python scripts/results_table.py results.csv [--metrics accuracy,f1] [--latency]
"""
import argparse
import csv
import sys


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", help="CSV written by evaluate.py --csv")
    p.add_argument("--metrics", default=None, help="comma-separated metric columns (default: those present of "
                   "accuracy, f1, mcc, pearson, spearman)")
    p.add_argument("--latency", action="store_true", help="add what executed each run (backend) and its median "
                   "milliseconds per batch")
    opts = p.parse_args()
    try:
        rows = list(csv.DictReader(open(opts.csv, newline="")))
    except FileNotFoundError:
        sys.exit(f"results_table.py: error: no such file: {opts.csv}")
    if not rows:
        sys.exit(f"results_table.py: error: {opts.csv} has no rows")
    known = ["accuracy", "f1", "mcc", "pearson", "spearman"]
    metrics = opts.metrics.split(",") if opts.metrics else [m for m in known if m in rows[0]]
    missing = [m for m in metrics if m not in rows[0]]
    if missing:
        sys.exit(f"results_table.py: error: --metrics {','.join(missing)} not in {opts.csv}; "
                 f"its columns: {', '.join(rows[0])}")
    metrics = [m for m in metrics if any(r[m] != "" for r in rows)]
    tasks = any(r.get("task") for r in rows)
    if opts.latency and "ms_per_batch" not in rows[0]:
        sys.exit(f"results_table.py: error: --latency: {opts.csv} has no ms_per_batch column (an older evaluate.py "
                 f"wrote it)")
    head = ["run", "precision"] + (["task", "official metric"] if tasks else []) + metrics
    if opts.latency:
        head += ["executed by", "ms / batch"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r.get("tag", ""), r["quant"]]
        if tasks:
            official = r.get("metric", "")
            cells += [r.get("task", ""), f"{official} {100 * float(r[official]):.1f}" if official else ""]
        cells += [f"{100 * float(r[m]):.1f}" if r[m] != "" else "" for m in metrics]
        if opts.latency:
            backend = {"fake": "PyTorch" if r["quant"] == "FP32" else "PyTorch (fake quantization)",
                       "triton": "Triton kernels",
                       "onnxruntime": "ONNX Runtime" if r["quant"] == "FP32" else "ONNX Runtime, INT8"}.get(
                           r["backend"], r["backend"])
            cells += [backend, f"{float(r['ms_per_batch']):.1f}" if r["ms_per_batch"] else ""]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

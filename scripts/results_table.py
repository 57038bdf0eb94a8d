#!/usr/bin/env python3
"""Render the CSV rows that evaluate.py appends (``--csv``) as a markdown table (``fairseq_quant.data.tables``).

    python scripts/results_table.py results.csv [--metrics accuracy,f1] [--latency]
"""
import argparse
import sys

from fairseq_quant.data.tables import TableError, read_results, results_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", help="CSV written by evaluate.py --csv")
    p.add_argument("--metrics", default=None, help="comma-separated metric columns (default: those present of "
                   "accuracy, f1, mcc, pearson, spearman)")
    p.add_argument("--latency", action="store_true", help="add what executed each run (backend) and its median "
                   "milliseconds per batch")
    opts = p.parse_args()
    try:
        rows = read_results(opts.csv)
        print(results_table(rows, opts.metrics.split(",") if opts.metrics else None, opts.latency, source=opts.csv))
    except TableError as e:
        sys.exit(f"results_table.py: error: {e}")


if __name__ == "__main__":
    main()

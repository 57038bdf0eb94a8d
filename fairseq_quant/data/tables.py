"""Markdown tables of results: one renderer for the rows evaluate.py appends to a CSV file (``--csv``), as a list
of runs or pivoted (a tag ``row|column`` puts the official metric in that cell), and the markdown primitive the
other reports use."""
from __future__ import annotations

import csv

__all__ = ["TableError", "markdown_table", "read_results", "results_table"]

METRICS = ("accuracy", "f1", "mcc", "pearson", "spearman")
_BACKENDS = {"triton": "Triton kernels"}


class TableError(ValueError):
    """A results file that cannot be rendered as asked; the message names the file or column."""


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """``| a | b |`` lines: the header, its separator and one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def read_results(path: str) -> list[dict]:
    """The rows of an evaluate.py CSV file (TableError when it is missing or empty)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise TableError(f"no such file: {path}") from None
    if not rows:
        raise TableError(f"{path} has no rows")
    return rows


def _executed_by(row: dict) -> str:
    fp32 = row["quant"] == "FP32"
    if row["backend"] == "fake":
        return "PyTorch" if fp32 else "PyTorch (fake quantization)"
    if row["backend"] == "onnxruntime":
        return "ONNX Runtime" if fp32 else "ONNX Runtime, INT8"
    return _BACKENDS.get(row["backend"], row["backend"])


def _pct(value: str) -> str:
    return f"{100 * float(value):.1f}" if value != "" else ""


def results_table(rows: list[dict], metrics: list[str] | None = None, latency: bool = False,
                  pivot: list[tuple[str, str]] | None = None, row_names: dict | None = None, row_title: str = "run",
                  source: str = "results") -> str:
    """Markdown of evaluate.py rows (``read_results``), metrics in %.

    List form: one line per row, ``run`` (its tag), ``precision``, the task and its official metric when the data
    name one, the ``metrics`` (default: those present of accuracy, f1, mcc, pearson, spearman) and, with
    ``latency``, what executed it and its median milliseconds per batch. ``pivot=[(column, title), ...]``: rows
    tagged ``name|column`` become one line per name (``row_names`` renames them, under ``row_title``) with the
    official metric in each column (an empty cell is ``—``)."""
    if pivot is not None:
        metric = next((r["metric"] for r in rows if r.get("metric")), "accuracy")
        cells: dict[str, dict[str, str]] = {}
        for r in rows:
            name, _, column = r["tag"].partition("|")
            cells.setdefault(name, {})[column] = _pct(r[metric])
        names = row_names or {}
        header = [row_title] + [f"{title} ({metric})" if i == 0 else title for i, (_, title) in enumerate(pivot)]
        return markdown_table(header, [[names.get(n, n)] + [c.get(col, "—") for col, _ in pivot]
                                       for n, c in cells.items()])
    metrics = metrics or [m for m in METRICS if m in rows[0]]
    missing = [m for m in metrics if m not in rows[0]]
    if missing:
        raise TableError(f"--metrics {','.join(missing)} not in {source}; its columns: {', '.join(rows[0])}")
    if latency and "ms_per_batch" not in rows[0]:
        raise TableError(f"--latency: {source} has no ms_per_batch column (an older evaluate.py wrote it)")
    metrics = [m for m in metrics if any(r[m] != "" for r in rows)]
    tasks = any(r.get("task") for r in rows)
    header = ["run", "precision"] + (["task", "official metric"] if tasks else []) + metrics
    header += ["executed by", "ms / batch"] if latency else []
    lines = []
    for r in rows:
        cells = [r.get("tag", ""), r["quant"]]
        if tasks:
            official = r.get("metric", "")
            cells += [r.get("task", ""), f"{official} {_pct(r[official])}" if official else ""]
        cells += [_pct(r[m]) for m in metrics]
        if latency:
            cells += [_executed_by(r), f"{float(r['ms_per_batch']):.1f}" if r["ms_per_batch"] else ""]
        lines.append(cells)
    return markdown_table(header, lines)

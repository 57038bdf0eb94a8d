"""Per-layer sensitivity to post-training quantization: which layers and which parts (attention or feed-forward,
weights or inputs) lose the most when quantized alone.

Each group of quantization points (one layer's q/k/v/out/fc1/fc2 weights, their GEMM inputs, the attention input,
the softmax probabilities, the token embeddings, the classification head) is quantized on its own, everything else
in floating point; its input ranges are calibrated on a few training batches, and the task's metric is compared
with the FP32 model's. Written as a CSV file, a markdown table (largest drop first) and a heatmap.

    fairseq-quant-sensitivity --checkpoint CKPT --data DATA_BIN [--bitsw 8 --bitsin 8] [--out DIR]
"""
from __future__ import annotations

import csv
import fnmatch
import logging
import re
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from fairseq.data import BaseWrapperDataset

from ..core.points import layer_points, model_points
from ..core.quant_measure import QuantMeasure
from ..core.recipe import QuantRecipe
from .calibrate import calibrate
from .loader import official_metric, predict, score

__all__ = [
    "Group",
    "metric_for",
    "recipe_for",
    "run_sensitivity",
    "sensitivity_groups",
    "write_csv",
    "write_heatmap",
    "write_markdown",
]

logger = logging.getLogger(__name__)

# the groups come from the table of points (core.points): per transformer layer (component, kind, path under the
# layer), attention against feed-forward components, and outside the layers (label, component, kind, patterns)
_SWEPT = tuple(p for p in layer_points() if p.sweep)
LAYER_POINTS = tuple((p.component, p.kind, p.path) for p in _SWEPT)
ATTENTION = tuple(dict.fromkeys(p.component for p in _SWEPT if p.block == "attention"))
FEED_FORWARD = tuple(dict.fromkeys(p.component for p in _SWEPT if p.block == "feed_forward"))
OTHER_POINTS = tuple((c, c, k, tuple(p.pattern for p in model_points() if (p.component, p.kind) == (c, k)))
                     for c, k in sorted(dict.fromkeys((p.component, p.kind) for p in model_points()),
                                        key=lambda ck: (ck[0] != "emb", ck[1] != "W")))  # emb, head W, head A
_LAYER_RE = re.compile(r"^(.*\blayers)\.(\d+)\.self_attn\.q_proj\.weight_quant$")
CSV_COLUMNS = ("layer", "component", "kind", "metric", "drop")


@dataclass(frozen=True)
class Group:
    """Quantization points quantized together: ``layer`` (index, ``"emb"`` or ``"head"``), ``component`` (q, k, v,
    out, fc1, fc2, attn_in, probs, attn_res, y, emb, head), ``kind`` (``"W"`` weights, ``"A"`` inputs) and the glob
    patterns of their quantizer paths (``patterns``, as a recipe's ``points`` keys)."""

    layer: int | str
    component: str
    kind: str
    patterns: tuple[str, ...]

    @property
    def label(self) -> str:
        where = f"layer {self.layer}" if isinstance(self.layer, int) else self.layer
        return f"{where} {self.component} {self.kind}" if self.component != self.layer else f"{where} {self.kind}"


def quantizer_names(model: torch.nn.Module) -> list[str]:
    """Paths of every QuantMeasure of ``model``, in module order."""
    return [n for n, m in model.named_modules() if isinstance(m, QuantMeasure)]


def sensitivity_groups(model: torch.nn.Module) -> list[Group]:
    """The groups of a quant_roberta ``model`` (any encoder whose layers hold ``self_attn.{q,k,v,out}_proj`` and
    ``fc1``/``fc2``): for each layer in order its 16 groups (``LAYER_POINTS``), then the token embeddings and the
    head's weights and inputs (``OTHER_POINTS``) where the model has them. Every group names at least one quantizer;
    a 2-layer model with a head has 2 * 16 + 3 = 35."""
    names = quantizer_names(model)
    layers = []
    for name in names:
        m = _LAYER_RE.match(name)
        if m:
            layers.append((m.group(1), int(m.group(2))))
    groups = [Group(i, comp, kind, (f"{prefix}.{i}.{path}",))
              for prefix, i in layers for comp, kind, path in LAYER_POINTS]
    groups += [Group(layer, comp, kind, patterns) for layer, comp, kind, patterns in OTHER_POINTS]
    return [g for g in groups if any(fnmatch.fnmatchcase(n, p) for p in g.patterns for n in names)]


def recipe_for(group: Group | None, weight_bits: int, input_bits: int) -> QuantRecipe:
    """The recipe that quantizes only ``group``'s points (int weights per channel, int inputs per tensor with
    running ranges); ``None``: everything off (FP32)."""
    if group is None:
        return QuantRecipe.from_dict({"ops": []})
    return QuantRecipe.from_dict({
        "weight": {"format": f"int{weight_bits}", "granularity": "channel"},
        "input": {"format": f"int{input_bits}"},
        "ops": [],  # nothing but the named points
        "points": {pattern: {} for pattern in group.patterns},
    })


class _FirstItems(BaseWrapperDataset):
    """The first ``n`` items (in file order) of a dataset; its batches keep the dataset's own order."""

    def __init__(self, dataset, n: int):
        super().__init__(dataset)
        self.n = min(n, len(dataset))

    def __len__(self) -> int:
        return self.n

    def ordered_indices(self):
        order = self.dataset.ordered_indices()
        return order[order < self.n]


class _FirstSentences:
    """A view of a task whose ``split`` holds only its first ``n`` sentences; everything else (and the task
    itself) is left as it is."""

    def __init__(self, task, split: str, n: int):
        self._task, self._split, self._n = task, split, n

    def dataset(self, split: str):
        dataset = self._task.dataset(split)
        return _FirstItems(dataset, self._n) if split == self._split else dataset

    def __getattr__(self, name):
        return getattr(self._task, name)


def metric_for(data: str, regression: bool) -> tuple[str, Callable[[np.ndarray, np.ndarray], float]]:
    """The metric evaluate.py reports as the task's: the official GLUE metric for data made by
    ``fairseq-quant-glue`` (``glue_task.json``: mcc for CoLA, f1 for MRPC ...), otherwise accuracy, or Pearson
    correlation for regression. Returns ``(name, fn)`` with ``fn(preds, targets) -> fraction``."""
    name = official_metric(data, regression)
    return name, lambda preds, targets: score(preds, targets, regression)[name]


def run_sensitivity(model, task, *, weight_bits: int, input_bits: int, calib_batches: int, batch_size: int,
                    split: str, calib_split: str, seed: int, device: torch.device,
                    metric_fn: Callable[[np.ndarray, np.ndarray], float], max_sentences: int | None = None,
                    groups: list[Group] | None = None) -> list[dict]:
    """Quantize each group of ``model`` (a quant_roberta from ``loader.load_model_and_task``, on ``device`` in
    eval mode) alone at ``weight_bits``/``input_bits``, calibrate its input ranges on ``calib_batches`` batches of
    ``calib_split`` and score ``split`` (its first ``max_sentences`` sentences, or all) with ``metric_fn``.

    Returns one dict per evaluation, the FP32 baseline first: ``{"layer": None, "component": "baseline",
    "kind": "FP32", ...}``, then per group ``{"layer", "component", "kind", "metric", "drop", "seconds", "n"}``
    with ``drop = baseline - metric`` (fractions), the time the group took (calibration and evaluation) and the
    number of sentences scored. The model is left in FP32 (every quantizer off).
    """
    groups = sensitivity_groups(model) if groups is None else groups
    if max_sentences is not None:
        task = _FirstSentences(task, split, max_sentences)

    def score() -> tuple[float, int]:
        head = task.cfg.classification_head_name
        preds, targets, _ = predict(lambda t: model(t, features_only=True, classification_head_name=head)[0], task,
                                    split, batch_size, seed, model.max_positions(), device)
        return float(metric_fn(preds, targets)), len(targets)

    try:
        model.set_quant_recipe(recipe_for(None, weight_bits, input_bits))
        baseline, n = score()
        rows = [dict(layer=None, component="baseline", kind="FP32", metric=baseline, drop=0.0, seconds=0.0, n=n)]
        for i, group in enumerate(groups):
            start = time.perf_counter()
            model.set_quant_recipe(recipe_for(group, weight_bits, input_bits))
            if calib_batches > 0:
                calibrate(model, task, calib_split, calib_batches, batch_size, seed, device)
            metric, n = score()
            rows.append(dict(layer=group.layer, component=group.component, kind=group.kind, metric=metric,
                             drop=baseline - metric, seconds=time.perf_counter() - start, n=n))
            logger.info(f"group {i + 1}/{len(groups)} {group.label}: {metric:.4f} (drop {baseline - metric:+.4f})")
    finally:
        model.set_quant_recipe(recipe_for(None, weight_bits, input_bits))
    return rows


# -- writers ----------------------------------------------------------------------------------------------------

def write_csv(rows: list[dict], path: str) -> None:
    """``rows`` (from ``run_sensitivity``) as CSV with ``CSV_COLUMNS``; metric and drop as fractions, the baseline
    row with an empty layer."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow(["" if r["layer"] is None else r["layer"], r["component"], r["kind"], r["metric"],
                             r["drop"]])


def summary(rows: list[dict], top: int = 3) -> str:
    """One line: mean drop of attention groups vs feed-forward groups and the ``top`` most sensitive groups
    (in metric points)."""
    groups = [r for r in rows if r["component"] != "baseline"]

    def mean(components) -> str:
        drops = [100 * r["drop"] for r in groups if r["component"] in components]
        return f"{np.mean(drops):.2f} ({len(drops)} groups)" if drops else "n/a"

    worst = sorted(groups, key=lambda r: -r["drop"])[:top]
    named = ", ".join(f"{_label(r)} ({100 * r['drop']:.2f})" for r in worst)
    return (f"Mean drop in points: attention {mean(ATTENTION)}, feed-forward {mean(FEED_FORWARD)}. "
            f"Most sensitive: {named}.")


def _label(row: dict) -> str:
    return Group(row["layer"], row["component"], row["kind"], ()).label


def markdown(rows: list[dict], metric_name: str, title: str) -> str:
    """The markdown report: a heading line, the summary and a table of the groups sorted by drop (largest first),
    metric and drop in points (percent)."""
    base = rows[0]
    groups = sorted(rows[1:], key=lambda r: -r["drop"])  # stable: ties keep the model's order
    lines = [f"**{title}**", "",
             f"FP32 baseline {metric_name}: {100 * base['metric']:.2f} ({base['n']} sentences). {summary(rows)}",
             "",
             f"| layer | component | kind | {metric_name} | drop |", "|---|---|---|---:|---:|"]
    lines += [f"| {r['layer']} | {r['component']} | {r['kind']} | {100 * r['metric']:.2f} | {100 * r['drop']:.2f} |"
              for r in groups]
    return "\n".join(lines) + "\n"


def write_markdown(rows: list[dict], path: str, metric_name: str, title: str) -> str:
    """Write ``markdown(...)`` to ``path``; returns the text."""
    text = markdown(rows, metric_name, title)
    with open(path, "w") as f:
        f.write(text)
    return text


def heatmap_grid(rows: list[dict]) -> tuple[list[str], list[str], np.ndarray]:
    """``(row labels, column labels, drops)``: rows are the layers (then emb, head), columns component x kind in
    ``LAYER_POINTS`` order (then emb W, head W, head A), drops in points with NaN where a row has no such group."""
    groups = [r for r in rows if r["component"] != "baseline"]
    order = [(c, k) for c, k, _ in LAYER_POINTS] + [(c, k) for _, c, k, _ in OTHER_POINTS]
    cols = [ck for ck in order if any((r["component"], r["kind"]) == ck for r in groups)]
    layers = list(dict.fromkeys(r["layer"] for r in groups))
    grid = np.full((len(layers), len(cols)), np.nan)
    for r in groups:
        grid[layers.index(r["layer"]), cols.index((r["component"], r["kind"]))] = 100 * r["drop"]
    return [str(x) for x in layers], [f"{c} {k}" for c, k in cols], grid


def write_heatmap(rows: list[dict], path: str, title: str) -> None:
    """A PNG heatmap of the drops (``heatmap_grid``), annotated with their values, red = worse than FP32."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    row_labels, col_labels, grid = heatmap_grid(rows)
    span = max(float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 0.0, 0.5)
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * len(col_labels), 1.6 + 0.45 * len(row_labels)))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu_r", vmin=-span, vmax=span, aspect="auto")
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
    ax.set_xlabel("component, W = weights, A = inputs")
    ax.set_ylabel("layer")
    for (i, j), value in np.ndenumerate(grid):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7,
                    color="white" if abs(value) > 0.6 * span else "black")
    fig.colorbar(image, ax=ax, label="drop (points)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

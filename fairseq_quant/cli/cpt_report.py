"""The CPT report: fairseq-train logs -> a markdown table (final metric, bit operations relative to static
8-bit) and a PNG plot of the bit schedules.

Each log is a ``fairseq-train --log-format simple`` log of a ``quant_roberta`` run: its ``train_inner`` lines carry
``wbits``, ``inbits`` and the cumulative ``macs`` and ``bitops`` (``bitops.py``), its ``valid`` lines the metrics.
Runs are grouped by name (``NAME=LOG``; without a name, the file name less a ``-seedN`` suffix), and a group's
seeds are averaged. The bit-operations ratio of a run is ``bitops / (64 * macs)``: its total over what the same
GEMMs cost with 8-bit weights and 8-bit inputs.

    python scripts/cpt_report.py static8=run/static8-seed1.log cpt=run/cpt-seed1.log ... --out run/report
"""
from __future__ import annotations

import argparse
import bisect
import logging
import os
import re
import statistics
import sys
from dataclasses import dataclass, field

__all__ = ["CRITERIA", "RunLog", "parse_log", "phase_table", "report_table", "plot_schedules", "main"]

STATIC8 = 64.0  # 8-bit weights x 8-bit inputs


class ReportError(ValueError):
    """A log that cannot be reported; the message names the file and what was expected."""


@dataclass
class RunLog:
    """What a training log says: the bit schedule, the bit-operations account and the validations."""

    path: str
    updates: list[int] = field(default_factory=list)  # the num_updates of each train_inner line
    wbits: list[int] = field(default_factory=list)
    inbits: list[int] = field(default_factory=list)
    macs: float = 0.0
    bitops: float = 0.0
    bw_macs: float = 0.0  # the backward GEMMs' account (logs from before it: 0)
    bw_bitops: float = 0.0
    valid: list[dict[str, float]] = field(default_factory=list)
    train: list[dict[str, float]] = field(default_factory=list)  # each train_inner line's loss (and accuracy)
    best_metric: str = "loss"  # the run's --best-checkpoint-metric, and whether it is maximised
    maximize: bool = False
    final_update: int = 0  # the run's last update (its last epoch summary's num_updates, if later than the lines)

    @property
    def length(self) -> int:
        """Updates the run made: the last train_inner line's, or its last epoch summary's where that is later
        (a run whose length is no multiple of --log-interval logs its last updates there only)."""
        return max(self.final_update, self.updates[-1])

    @property
    def bitops_vs_static8(self) -> float:
        return self.bitops / (STATIC8 * self.macs)

    @property
    def changing(self) -> dict[str, list[int]]:
        """The bit sequences that change over the run, by role (``weight``, ``input``); empty for a static run."""
        return {kind: b for kind, b in (("weight", self.wbits), ("input", self.inbits)) if len(set(b)) > 1}

    @property
    def backward_vs_static8(self) -> float | None:
        """Backward bit operations over those of static 8-bit operands with 32-bit gradients (32 x 8 a MAC)."""
        return self.bw_bitops / (32 * 8 * self.bw_macs) if self.bw_macs else None


_TRAIN_INNER = re.compile(r"\| train_inner \| .*?(\w+=.*)$")
_BEST = re.compile(r"'best_checkpoint_metric': '(\w+)'")
_MAXIMIZE = re.compile(r"'maximize_best_checkpoint_metric': (True|False)")
_EPOCH = re.compile(r"\| train \| epoch \d+ \| (.*)$")  # an epoch's summary: the account at its end
_VALID = re.compile(r"\| valid \| .*valid on '[^']*' subset \| (.*)$")


def _fields(text: str) -> dict[str, float]:
    """The numeric ``key value`` fields of a ``--log-format simple`` summary (``a 1 | b 2.5 | ...``)."""
    values = {}
    for part in text.split(" | "):
        key, _, value = part.strip().partition(" ")
        try:
            values[key] = float(value)
        except ValueError:
            pass
    return values


def parse_log(path: str) -> RunLog:
    """Read a ``--log-format simple`` fairseq-train log. Raises ``ReportError`` when it has no bit account."""
    if not os.path.isfile(path):
        raise ReportError(f"{path}: no such file")
    run = RunLog(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = _BEST.search(line)
            if m:
                run.best_metric = m.group(1)
                run.maximize = _MAXIMIZE.search(line).group(1) == "True" if _MAXIMIZE.search(line) else False
            m = _TRAIN_INNER.search(line)
            if m:
                kv = dict(re.findall(r"(\w+)=([^,\s]+)", m.group(1)))
                if "bitops" in kv:
                    run.updates.append(int(kv["num_updates"]))
                    run.wbits.append(int(float(kv["wbits"])))
                    run.inbits.append(int(float(kv["inbits"])))
                    run.macs, run.bitops = float(kv["macs"]), float(kv["bitops"])
                    if "bw_bitops" in kv:
                        run.bw_macs, run.bw_bitops = float(kv["bw_macs"]), float(kv["bw_bitops"])
                    run.train.append({k: float(kv[k]) for k in ("loss", "accuracy") if k in kv})
                continue
            m = _EPOCH.search(line)
            if m:
                kv = _fields(m.group(1))
                if "bitops" in kv and "num_updates" in kv:  # cumulative totals, logged as their last value
                    run.final_update = int(kv["num_updates"])
                    run.macs, run.bitops = kv["macs"], kv["bitops"]
                    if "bw_bitops" in kv:
                        run.bw_macs, run.bw_bitops = kv["bw_macs"], kv["bw_bitops"]
                continue
            m = _VALID.search(line)
            if m:
                run.valid.append(_fields(m.group(1)))
    if not run.updates:
        raise ReportError(f"{path}: no train_inner lines with wbits/inbits/macs/bitops; expected the log of a "
                          f"fairseq-train run of a quant_roberta model with --log-format simple")
    if not run.valid:
        raise ReportError(f"{path}: no validation lines ('valid on ... subset'); did the run validate?")
    return run


def _group_name(spec: str) -> tuple[str, str]:
    if "=" in spec and not os.path.exists(spec):
        name, path = spec.split("=", 1)
        return name, path
    stem = os.path.splitext(os.path.basename(spec))[0]
    return re.sub(r"[-_]seed\d+$", "", stem), spec


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def report_table(groups: dict[str, list[RunLog]], metric: str | None = None) -> str:
    """Markdown: per group, the seeds, the final and best validation metric (mean ± std over seeds), the mean
    weight/input bits of training, and total training bit operations relative to static 8-bit. ``metric``
    defaults to the first run's --best-checkpoint-metric; "best" follows its direction."""
    first = next(iter(groups.values()))[0]
    metric = metric or first.best_metric
    lines = [f"| run | seeds | updates | final {metric} | best {metric} | mean W/A bits | bit ops vs static 8-bit "
             f"| backward bit ops vs static 8-bit |", "|---|---|---|---|---|---|---|---|"]
    for name, runs in groups.items():
        for run in runs:
            if metric not in run.valid[-1]:
                raise ReportError(f"{run.path}: no {metric!r} in its validation lines; they have "
                                  f"{', '.join(run.valid[-1])}")
        final = [r.valid[-1][metric] for r in runs]
        maximize = first.maximize if metric == first.best_metric else "loss" not in metric
        pick = max if maximize else min
        best = [pick(v[metric] for v in r.valid if metric in v) for r in runs]
        wmean = statistics.mean(statistics.mean(r.wbits) for r in runs)
        imean = statistics.mean(statistics.mean(r.inbits) for r in runs)
        ratio = statistics.mean(r.bitops_vs_static8 for r in runs)
        backward = [r.backward_vs_static8 for r in runs]
        bw = f"{statistics.mean(backward):.3f}" if None not in backward else "—"
        lines.append(f"| {name} | {len(runs)} | {runs[0].length} | {_mean_std(final)} | {_mean_std(best)} | "
                     f"{wmean:.2f} / {imean:.2f} | {ratio:.3f} | {bw} |")
    return "\n".join(lines)


def _phases(run: RunLog) -> list[str | None]:
    """Each train_inner line's place in its cycle: ``bottom`` (the bits that cycle within the lowest quarter of
    their range), ``top`` (the highest quarter) or None (between). Bits that do not change are left out."""
    spans = [(b, min(b), max(b) - min(b)) for b in run.changing.values()]
    places = []
    for i in range(len(run.updates)):
        level = statistics.mean((b[i] - lo) / span for b, lo, span in spans)
        places.append("bottom" if level <= 0.25 else "top" if level >= 0.75 else None)
    return places


def phase_table(groups: dict[str, list[RunLog]], metric: str | None = None) -> str:
    """Markdown: per group, the training accuracy (the loss where none is logged) over all its train_inner lines,
    and for a cyclic group that and the validation metric at the bottom and at the top of the cycles (see
    ``_phases``); each is the mean over a run's lines, then mean ± std over the seeds. A validation is placed by
    the last train_inner line up to its update (the bits of the updates just before it; exact when it validates
    at a multiple of --log-interval). A static group's "all lines" is the reference for both ends of a cycle."""
    first = next(iter(groups.values()))[0]
    metric = metric or first.best_metric
    key = "accuracy" if all("accuracy" in t for t in first.train) else "loss"
    lines = [f"| run | training {key}, all lines | training {key}, bottom | training {key}, top | {metric} at the "
             f"bottom (validations) | {metric} at the top (validations) |", "|---|---|---|---|---|---|"]
    for name, runs in groups.items():
        cells: dict[str, list[float]] = {"all": [], "train bottom": [], "train top": [], "valid bottom": [],
                                         "valid top": []}
        counts = {"bottom": 0, "top": 0}
        cyclic = bool(runs[0].changing)
        for run in runs:
            cells["all"].append(statistics.mean(t[key] for t in run.train if key in t))
            if not cyclic:
                continue
            places = _phases(run)

            def at(update: float, places=places, run=run) -> str | None:  # the last train_inner line up to it
                i = bisect.bisect_right(run.updates, update) - 1
                return places[i] if i >= 0 else None

            for where in ("bottom", "top"):
                train = [t[key] for t, p in zip(run.train, places) if p == where and key in t]
                valid = [v[metric] for v in run.valid if metric in v and at(v.get("num_updates", -1)) == where]
                if train:
                    cells[f"train {where}"].append(statistics.mean(train))
                if valid:
                    cells[f"valid {where}"].append(statistics.mean(valid))
                counts[where] += len(valid)
        c = {k: _mean_std(v) if v else "—" for k, v in cells.items()}
        valid = f"{c['valid bottom']} ({counts['bottom']}) | {c['valid top']} ({counts['top']})" if cyclic else "— | —"
        lines.append(f"| {name} | {c['all']} | {c['train bottom']} | {c['train top']} | {valid} |")
    return "\n".join(lines)


CRITERIA = {"rise": 10.0, "fraction": 0.9}  # the precision range test's criteria, with their default thresholds


def precision_range(run: RunLog, threshold: float | None = None, criterion: str = "rise") -> tuple[int, str]:
    """The precision range test (CPT's way of choosing the lower bound) on the log of a staircase run: the
    lowest bit width from which training works, and a markdown table of each width's phase. The climbing bits are
    the weights' and the inputs' together, or one of them while the other stays put (a bound for that role).

    Each width's phase is the updates trained at it. Its training accuracy (sentence prediction logs one; else
    its loss) is the mean over the phase's second half, where the run has had time to adapt to the width. The
    bound depends on ``criterion``:

    - ``rise`` (the default, the CPT paper's): the lowest width whose accuracy rises over the width below it by
      more than ``threshold`` points (default 10; loss: falls by more than ``threshold``), the width from which
      training starts to converge; the top width if none does. The lowest width is compared with the first half
      of its own phase (the start of the run), so a bottom width that already trains is the bound.
    - ``fraction``: the lowest width from which every phase reaches ``threshold`` (default 0.9) of the top
      phase's accuracy (loss: at most its loss / ``threshold``). The top phase is at the highest width, the one
      known to train.

    Raises ``ReportError`` for a log that is not a staircase run, ValueError for an unknown criterion."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    threshold = CRITERIA[criterion] if threshold is None else threshold
    if not run.train or len(run.train) != len(run.wbits):
        raise ReportError(f"{run.path}: no train_inner lines with a training loss; run it with --log-interval 1")
    rising = list(run.changing.items())
    if not rising or any(y < x for _, b in rising for x, y in zip(b, b[1:])):
        raise ReportError(f"{run.path}: its bits do not rise step by step (a staircase schedule run: "
                          f"fairseq-quant-experiment precision-range)")
    if len(rising) == 2 and run.wbits != run.inbits:
        raise ReportError(f"{run.path}: its weight and input bits both rise, but not together")
    climbing = rising[0][1]
    if len(rising) == 2:
        label = "bits (W = A)"
    else:
        other = run.inbits if rising[0][0] == "weight" else run.wbits
        label = f"{rising[0][0]} bits ({'inputs' if rising[0][0] == 'weight' else 'weights'} at {other[0]})"
    key = "accuracy" if all("accuracy" in t for t in run.train) else "loss"
    phases: dict[int, list[float]] = {}
    last: dict[int, int] = {}  # each phase's last update
    for bits, t, update in zip(climbing, run.train, run.updates):
        phases.setdefault(bits, []).append(t[key])
        last[bits] = update
    score = {b: statistics.mean(v[len(v) // 2:]) for b, v in phases.items()}
    widths = sorted(score)
    top = score[widths[-1]]
    sign = 1.0 if key == "accuracy" else -1.0  # a better phase: higher accuracy, lower loss
    if criterion == "fraction":
        works = {b: (s >= threshold * top) if key == "accuracy" else (s <= top / threshold) for b, s in score.items()}
        bound = widths[-1]
        for b in reversed(widths):
            if not works[b]:
                break
            bound = b
        column = f"within {threshold:g} of the top"
    else:
        first = phases[widths[0]]  # the lowest width: over the first half of its own phase, the run's start
        below = [statistics.mean(first[: max(len(first) // 2, 1)]), *(score[b] for b in widths[:-1])]
        works = {b: sign * (score[b] - ref) > threshold for b, ref in zip(widths, below)}
        bound = next((b for b in widths if works[b]), widths[-1])
        column = f"{'rises' if key == 'accuracy' else 'falls'} by more than {threshold:g} over the width below"
    lines = [f"| {label} | updates | training {key} (second half of the phase) | {column} |", "|---|---|---|---|"]
    for b, before in zip(widths, [0, *(last[w] for w in widths)]):
        mark = "yes" if works[b] else "no"
        lines.append(f"| {b} | {last[b] - before} | {score[b]:.3f} | {mark} |")
    return bound, "\n".join(lines)


def plot_schedules(groups: dict[str, list[RunLog]], path: str) -> None:
    """PNG: weight and input bits against the update, one line per group (its first seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, sharex=True, figsize=(8, 5))
    for name, runs in groups.items():
        run = runs[0]
        axes[0].step(run.updates, run.wbits, where="post", label=name)
        axes[1].step(run.updates, run.inbits, where="post", label=name)
    axes[0].set_ylabel("weight bits")
    axes[1].set_ylabel("input bits")
    axes[1].set_xlabel("update")
    axes[0].legend(loc="lower right", fontsize="small")
    fig.suptitle("bit schedules")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="cpt_report.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+", metavar="[NAME=]LOG", help="fairseq-train logs (--log-format simple)")
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/report.md and DIR/bit_schedules.png")
    p.add_argument("--metric", default=None,
                   help="validation metric to report (default: the run's --best-checkpoint-metric)")
    opts = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, force=True)  # fairseq's import leaves the root logger verbose
    groups: dict[str, list[RunLog]] = {}
    try:
        for spec in opts.logs:
            name, path = _group_name(spec)
            groups.setdefault(name, []).append(parse_log(path))
        table = report_table(groups, opts.metric)
        phases = phase_table(groups, opts.metric)
    except ReportError as e:
        p.error(str(e))
    os.makedirs(opts.out, exist_ok=True)
    plot = os.path.join(opts.out, "bit_schedules.png")
    plot_schedules(groups, plot)
    if any(runs[0].changing for runs in groups.values()):
        table += "\n\nAt the bottom and the top of the cycles (mean over the run's log lines there):\n\n" + phases
    with open(os.path.join(opts.out, "report.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    print(f"\n(report: {os.path.join(opts.out, 'report.md')}, plot: {plot})", file=sys.stderr)


if __name__ == "__main__":
    main()

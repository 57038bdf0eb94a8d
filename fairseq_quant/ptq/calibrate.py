"""Calibration: record the input ranges of a quantized model on a few batches of a split."""
from __future__ import annotations

import torch

from ..core.estimators import combine_ranges
from ..plugin.layers import quantizers
from .loader import batches, to_device

__all__ = ["AVERAGES", "calibrate"]

AVERAGES = ("running", "equal")


@torch.no_grad()
def calibrate(model, task, split: str, n_batches: int, batch_size: int, seed: int, device: torch.device,
              skip_padding: bool = False, average: str = "running") -> int:
    """Record the input ranges of ``model`` (a quant_roberta on ``device``) on ``n_batches`` batches of ``split``.

    Active quantizers with static ranges are reset, measure on floating-point activations (they in training mode,
    the rest of the model in evaluation mode), then quantize again, in evaluation mode. Each quantizer's estimator
    estimates each batch's range, and ``average`` says how the batches' ranges make the calibrated one:
    ``running``: the quantizer's running average, ``r <- M r + (1 - M) b`` with its momentum M (0.9 by default),
    the first batch starting it; after N batches batch k weighs ``(1 - M) M^(N-k)`` and the first ``M^(N-1)``
    (N = 16: the first 0.21, the second 0.02, the last 0.1). ``equal``: every batch counts the same: min-max
    ranges are the minimum and maximum over the batches, the other estimators' ranges their mean over the
    batches. ``skip_padding``: activations at padding positions are left out of the ranges. Returns the number of
    batches used (0 when no quantizer has static ranges)."""
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    qs = [q for q in quantizers(model) if q.active and not q.spec.dynamic]
    if not qs or n_batches <= 0:
        return 0
    saved = {q: q.spec for q in qs}
    deferred = {q: q.defer for q in qs}
    seen: dict = {q: [] for q in qs}
    for q in qs:
        q.reset_ranges()
        q.set_spec(q.spec.replace(mode="measure"))
        q.train()
        q.defer = average == "equal"  # each batch's statistics wait in q.pending
    used = 0
    head = task.cfg.classification_head_name
    try:
        for sample in batches(task, split, batch_size, seed, model.max_positions()):
            if used >= n_batches:
                break
            sample = to_device(sample, device)
            tokens = sample["net_input"]["src_tokens"]
            for q in qs:
                q.token_mask = tokens.ne(task.source_dictionary.pad()) if skip_padding else None
            model(**sample["net_input"], features_only=True, classification_head_name=head)
            for q in qs:
                if q.pending is not None:
                    seen[q].append(q.pending)
                    q.pending = None
            used += 1
        for q, stats in seen.items():
            if stats:
                q.commit(*combine_ranges(torch.stack([lo for lo, _ in stats]), torch.stack([hi for _, hi in stats]),
                                         q.across))
    finally:
        for q in qs:
            q.token_mask = None
            q.defer, q.pending = deferred[q], None
            q.set_spec(saved[q])
            q.eval()
    return used

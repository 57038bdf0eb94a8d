"""Calibration: record the input ranges of a quantized model on a few batches of a split."""
from __future__ import annotations

import torch

from ..plugin.layers import quantizers
from .loader import batches, to_device

__all__ = ["calibrate"]


@torch.no_grad()
def calibrate(model, task, split: str, n_batches: int, batch_size: int, seed: int, device: torch.device,
              skip_padding: bool = False) -> int:
    """Record the input ranges of ``model`` (a quant_roberta on ``device``) on ``n_batches`` batches of ``split``.

    Active quantizers with static ranges are reset, measure on floating-point activations (they in training mode,
    the rest of the model in evaluation mode), then quantize again, in evaluation mode. Each quantizer's estimator
    estimates each batch's range; the batches' ranges are averaged (its running average). ``skip_padding``:
    activations at padding positions are left out of the ranges. Returns the number of batches used (0 when no
    quantizer has static ranges)."""
    qs = [q for q in quantizers(model) if q.active and not q.spec.dynamic]
    if not qs or n_batches <= 0:
        return 0
    saved = {q: q.spec for q in qs}
    for q in qs:
        q.reset_ranges()
        q.set_spec(q.spec.replace(mode="measure"))
        q.train()
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
            used += 1
    finally:
        for q in qs:
            q.token_mask = None
            q.set_spec(saved[q])
            q.eval()
    return used

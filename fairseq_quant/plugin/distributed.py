"""Quantizer state identical on every data-parallel worker of fairseq's distributed training.

fairseq builds ``DistributedDataParallel`` with ``broadcast_buffers=False`` (``legacy_ddp`` never broadcasts), so
without this each worker's running ranges would follow its own shard of the data. With more than one worker every
``QuantMeasure`` defers its running-average update (``QuantMeasure.defer``): a training forward quantizes with its
own shard's update, as a single worker does, and at the end of the model's training forward ``RangeSync.flush``
gathers the batch statistics of every point that recorded one, with the forward's GEMM MACs, in **one**
``all_gather``. Each point combines them by its estimator's rule (``Estimator.across``: min-max takes the smallest
minimum and the largest maximum, the range of the whole global batch; percentile and MSE take the workers' mean)
and commits the same update on every worker. Learned (LSQ) scales start from the range combined the same way
(``QuantMeasure.combine``: one collective per learned point, at its first training step only). Embedding-group
ranges combine per dimension (min-max), so the groups and their permutation agree. Ranges from each batch
(``--dynamic-qparams``) are per batch by design: nothing is recorded, nothing is sent.

At every validation (the switch from training to evaluation) ``RangeSync.check`` all-gathers one checksum per
quantization point and logs that the state agrees on every worker, or raises naming the first point that differs.
"""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn

from ..core.estimators import combine_ranges
from ..core.quant_measure import QuantMeasure
from .layers import quantizers

__all__ = ["QuantStateMismatch", "RangeSync", "data_parallel_sync"]

logger = logging.getLogger(__name__)


class QuantStateMismatch(RuntimeError):
    """The quantizer state differs between data-parallel workers."""


def data_parallel_sync() -> RangeSync | None:
    """A ``RangeSync`` for fairseq's data-parallel group when training runs on more than one worker, else None."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    from fairseq.distributed import utils as distributed_utils

    group = distributed_utils.get_data_parallel_group()
    if distributed_utils.get_world_size(group) <= 1:
        return None
    return RangeSync(group)


class RangeSync:
    """Combines the quantizers' batch statistics over a process group (see the module docstring)."""

    def __init__(self, group=None):
        self.group = group
        self.world = dist.get_world_size(group)
        self.points: list[QuantMeasure] = []  # attached, in model order (the same on every worker)

    def attach(self, model: nn.Module) -> None:
        """Make every quantizer of ``model`` defer its updates to ``flush`` (call again after adding modules)."""
        known = set(self.points)
        for q in quantizers(model):
            q.defer, q.combine = True, self.combine
            if q not in known:
                self.points.append(q)

    def _gather(self, flat: torch.Tensor) -> torch.Tensor:
        """``world x n``: every worker's ``flat`` (the same length on every worker)."""
        if dist.get_backend(self.group) == "nccl" and flat.device.type != "cuda":
            flat = flat.cuda()
        rows = [torch.empty_like(flat) for _ in range(self.world)]
        dist.all_gather(rows, flat.contiguous(), group=self.group)
        return torch.stack(rows)

    def flush(self, counts: list[float]) -> list[float]:
        """Commit every pending batch statistic of the attached quantizers, combined over the workers, in one
        collective; returns ``counts`` (e.g. the forward's MACs) summed over the workers."""
        points = [q for q in self.points if q.pending is not None]
        device = points[0].running_min.device if points else torch.device("cpu")
        parts = [torch.tensor([float(len(points)), *counts], dtype=torch.float64, device=device)]
        for q in points:
            parts += [t.to(device, torch.float64).reshape(-1) for t in q.pending]
        rows = self._gather(torch.cat(parts)).to(device)
        if not bool((rows[:, 0] == len(points)).all()):
            raise QuantStateMismatch(f"quantizers recorded statistics at {rows[:, 0].tolist()} points on the "
                                     f"workers: the model's forward differs between workers")
        summed = rows[:, 1:1 + len(counts)].sum(0).tolist()
        offset = 1 + len(counts)
        for q in points:
            n = q.pending[0].numel()
            lo, hi = rows[:, offset:offset + n], rows[:, offset + n:offset + 2 * n]
            offset += 2 * n
            lo, hi = combine_ranges(lo, hi, q.across)
            q.commit(lo.float(), hi.float())
        return summed

    def combine(self, point: QuantMeasure, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``lo``/``hi`` combined over the workers by ``point``'s rule (learned scales start from it)."""
        n = lo.numel()
        rows = self._gather(torch.cat([lo.reshape(-1), hi.reshape(-1)]).double()).to(lo.device)
        clo, chi = combine_ranges(rows[:, :n], rows[:, n:], point.across)
        return clo.float().reshape(lo.shape), chi.float().reshape(hi.shape)

    def check(self, model: nn.Module) -> None:
        """All-gather one checksum per quantization point; log that every worker agrees, or raise naming the
        first point that differs."""
        names, sums = [], []
        for name, q in model.named_modules():
            if isinstance(q, QuantMeasure):
                names.append(name)
                sums.append(_checksum(q))
        if not sums:
            return
        rows = self._gather(torch.stack(sums))
        differ = (rows != rows[0]).any(0).nonzero()
        if differ.numel():
            name = names[int(differ[0])]
            raise QuantStateMismatch(f"quantizer state differs between the {self.world} data-parallel workers, "
                                     f"first at {name}")
        logger.info(f"quantizer state identical on all {self.world} workers ({len(names)} points)")


def _checksum(q: QuantMeasure) -> torch.Tensor:
    """A float64 summary of a point's state that changes when any value or its position changes."""
    device = q.running_min.device
    total = torch.zeros((), dtype=torch.float64, device=device)
    tensors = [*q.buffers(recurse=False), *q.parameters(recurse=False)]
    for k, t in enumerate(tensors):
        v = t.detach().double().reshape(-1)
        weights = torch.arange(1, v.numel() + 1, dtype=torch.float64, device=device)
        total = total + (k + 1) * (torch.nan_to_num(v, nan=-7.0) * weights).sum()
    return total

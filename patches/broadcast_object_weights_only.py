"""Fix: on ranks > 0, fairseq's distributed ``--restore-file`` (and any resume) fails under torch >= 2.6.

The bug: rank 0 loads the checkpoint (through the allowlisted loader of ``checkpoint_weights_only``) and sends it
to the other ranks with ``distributed.utils.broadcast_object``, whose ``_broadcast_object_slow`` ``torch.save``s
the object into a byte tensor and ``torch.load``s it on the receiving ranks with the ``weights_only=True`` default.
By then the state's ``cfg`` is an OmegaConf ``DictConfig``, which no allowlist of plain data covers:
``UnpicklingError: Weights only load failed ... Unsupported global: GLOBAL omegaconf.dictconfig.DictConfig`` on
rank 1, and rank 0 dies with "Connection closed by peer".

The fix: the receiving ranks unpickle those bytes in full. They are not a file: they are the ``torch.save`` of an
object rank 0 of the same job already holds, which reached it through the allowlisted loader. Every file is still
loaded with ``weights_only=True``; only the in-job broadcast is unpickled in full. The sending side is fairseq's
own.
"""
from __future__ import annotations

import io

import torch

__all__ = ["apply"]

_PATCHED = "_fairseq_quant_broadcast_object_weights_only"


def apply() -> None:
    """Replace ``distributed.utils._broadcast_object_slow`` (idempotent)."""
    from fairseq.distributed import utils as distributed_utils

    original = distributed_utils._broadcast_object_slow
    if getattr(original, _PATCHED, False):
        return

    def broadcast_object_slow(obj, src_rank, group, dist_device):
        if distributed_utils.get_rank(group) == src_rank:
            return original(obj, src_rank, group, dist_device)
        length = torch.LongTensor([0]).to(dist_device)
        distributed_utils.broadcast(length, src=src_rank, group=group)
        buffer = torch.ByteTensor(int(length.item())).to(dist_device)
        distributed_utils.broadcast(buffer, src=src_rank, group=group)
        return torch.load(io.BytesIO(buffer.cpu().numpy()), map_location="cpu", weights_only=False)

    setattr(broadcast_object_slow, _PATCHED, True)
    distributed_utils._broadcast_object_slow = broadcast_object_slow

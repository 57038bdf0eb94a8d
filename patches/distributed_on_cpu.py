"""Fix: fairseq's distributed data-parallel training does not run on CPUs (gloo), however it is launched.

The fairseq bugs, each on a machine without CUDA:
- ``--distributed-no-spawn`` with an explicit ``--distributed-init-method``: fairseq wraps the model in
  ``DistributedDataParallel(device_ids=[device_id], output_device=device_id)``, which torch refuses for a CPU module
  ("device_ids and output_device arguments only work with single-device/multiple-device GPU modules or CPU
  modules" — a CPU module must pass ``None``).
- ``--distributed-world-size N`` alone (fairseq's own spawn): ``_infer_single_node_init`` asserts
  ``N <= torch.cuda.device_count()`` (0), and ``call_main`` spawns ``min(torch.cuda.device_count(), N)`` = 0
  processes.
- ``torchrun``: ``_infer_torch_distributed_launch_init`` computes ``rank % torch.cuda.device_count()``, a division
  by zero; and without ``--distributed-world-size`` (whose default is the number of GPUs, so 1) fairseq ignores the
  launcher's ``WORLD_SIZE`` and starts independent single-process trainings that write the same save directory.

The fix, active only where CUDA is not available (GPU machines keep fairseq's behaviour):
- the DDP class fairseq builds drops ``device_ids``/``output_device`` for a module whose parameters are on the CPU;
- with the launcher's variables (``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``) the world size and rank
  are the launcher's and the device id its ``LOCAL_RANK``;
- fairseq's own spawn starts ``--distributed-world-size`` processes on a ``tcp://localhost`` port.
"""
from __future__ import annotations

import os
import random

import torch

__all__ = ["apply"]

_PATCHED = "_fairseq_quant_distributed_on_cpu"
_LAUNCHER = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")


def _cpu_only() -> bool:
    return not torch.cuda.is_available()


class CpuDistributedDataParallel(torch.nn.parallel.DistributedDataParallel):
    """torch's DDP, with ``device_ids``/``output_device`` dropped for a module that lives on the CPU."""

    def __init__(self, module, device_ids=None, output_device=None, *args, **kwargs):
        if all(p.device.type == "cpu" for p in module.parameters()):
            device_ids = output_device = None
        super().__init__(module, device_ids, output_device, *args, **kwargs)


def _infer_init_method(original):
    def infer_init_method(cfg, force_distributed=False):
        if not _cpu_only() or cfg.distributed_init_method is not None or cfg.tpu or cfg.pipeline_model_parallel:
            return original(cfg, force_distributed)
        if all(key in os.environ for key in _LAUNCHER):  # torchrun / torch.distributed.launch
            cfg.distributed_init_method = "env://"
            cfg.distributed_world_size = int(os.environ["WORLD_SIZE"])
            cfg.distributed_rank = int(os.environ["RANK"])
            cfg.device_id = int(os.environ.get("LOCAL_RANK", 0))
            cfg.distributed_no_spawn = True
            return None
        if cfg.distributed_world_size == 1:
            return None
        if cfg.distributed_port <= 0:
            cfg.distributed_port = random.randint(10000, 60000)
        cfg.distributed_init_method = f"tcp://localhost:{cfg.distributed_port}"
        if not cfg.distributed_no_spawn:
            cfg.distributed_num_procs = cfg.distributed_world_size
        return None

    setattr(infer_init_method, _PATCHED, True)
    return infer_init_method


def _call_main(original, distributed_utils):
    def call_main(cfg, main, **kwargs):
        dt = cfg.distributed_training
        if not _cpu_only() or cfg.common.tpu:
            return original(cfg, main, **kwargs)
        if dt.distributed_init_method is None:
            distributed_utils.infer_init_method(dt)
        if dt.distributed_init_method is None or dt.distributed_no_spawn:
            return original(cfg, main, **kwargs)
        # fairseq's spawn, with one process per worker rather than per GPU
        kwargs["start_rank"] = dt.distributed_rank
        dt.distributed_rank = None  # assigned by distributed_main
        torch.multiprocessing.spawn(fn=distributed_utils.distributed_main, args=(main, cfg, kwargs),
                                    nprocs=dt.distributed_world_size, join=True)
        return None

    setattr(call_main, _PATCHED, True)
    return call_main


def apply() -> None:
    """Install the three fixes; idempotent."""
    from fairseq.distributed import utils as distributed_utils
    from fairseq.models import distributed_fairseq_model

    distributed_fairseq_model.DistributedDataParallel = CpuDistributedDataParallel
    if not getattr(distributed_utils.infer_init_method, _PATCHED, False):
        distributed_utils.infer_init_method = _infer_init_method(distributed_utils.infer_init_method)
    if not getattr(distributed_utils.call_main, _PATCHED, False):
        distributed_utils.call_main = _call_main(distributed_utils.call_main, distributed_utils)

"""Cyclic precision training in fairseq: the ``--cpt-config`` flags and the run length a schedule spans.

The schedule itself is pure (``schedule.py``); a model applies it with one call from ``set_num_updates``, which
fairseq's task calls before every training step with the number of updates done (see ``QuantRobertaModel``).
Outside training (validation, evaluate.py, the hub interface) the model uses the fixed evaluation precision.
"""
from __future__ import annotations

import logging
import math

from ..core.schedule import CPTConfig, CPTConfigError, CyclicPrecisionScheduler, load_cpt_config, parse_eval_bits

__all__ = ["check_cpt_args", "cpt_config_from_args", "total_updates", "CyclicPrecision"]

logger = logging.getLogger(__name__)

LOW_WEIGHT_BITS = 3  # at and below: min-max weight ranges lose most of a weight's values (docs/cpt.md)


def cpt_config_from_args(args) -> CPTConfig | None:
    """The CPT config of a model's ``args``: the copy saved with a checkpoint (``cpt_schedule``) when there is
    one, so a trained model loads without its JSON file; otherwise ``--cpt-config`` read now."""
    saved = getattr(args, "cpt_schedule", None)
    if saved:
        import json

        return CPTConfig.from_dict(json.loads(saved), source="the checkpoint's cpt_schedule")
    path = getattr(args, "cpt_config", None)
    return load_cpt_config(path) if path else None


def check_cpt_args(args, config: CPTConfig) -> None:
    """The rules of ``--cpt-config`` against the other flags, each naming them (``CPTConfigError``)."""
    if getattr(args, "quant_recipe", None) or getattr(args, "quant_recipe_json", None):
        raise CPTConfigError("--cpt-config cycles the bit widths of --bitsw/--bitsin: it cannot be combined "
                             "with --quant-recipe")
    floats = [f"--{k} {getattr(args, k)}" for k in ("formatw", "formatin") if getattr(args, k, "int") != "int"]
    if floats:
        raise CPTConfigError(f"--cpt-config cycles integer bit widths: it cannot be combined with "
                             f"{' '.join(floats)}")
    if not (args.quantw or args.quantin):
        raise CPTConfigError("--cpt-config cycles the bit widths of quantized weights and inputs: it needs "
                             "--quantw and/or --quantin")
    parse_eval_bits(getattr(args, "cpt_eval_bits", "max"), config)
    max_update, max_epoch = getattr(args, "max_update", 0) or 0, getattr(args, "max_epoch", 0) or 0
    if max_update <= 0 and max_epoch <= 0:
        raise CPTConfigError("--cpt-config needs the length of the run: give --max-update or --max-epoch")
    if max_epoch <= 0 and max_update < config.num_cyclic_period:
        raise CPTConfigError(f"num_cyclic_period ({config.num_cyclic_period}) in the --cpt-config file exceeds "
                             f"--max-update ({max_update}): each cycle needs at least one update")


def total_updates(args, task, model) -> int:
    """The number of updates the run will make: ``--max-update``, or, when ``--max-epoch`` is given, the updates
    per epoch (batches of the training set on this data-parallel rank, grouped by ``--update-freq``) summed over
    the epochs, capped by ``--max-update`` when both are given (``args`` passed the model's ``check_args``).
    Assumes every epoch has as many batches as the first (true of fairseq's fixed-size batching of a single
    training set)."""
    max_update = getattr(args, "max_update", 0) or 0
    max_epoch = getattr(args, "max_epoch", 0) or 0
    if max_epoch <= 0:  # the model's check_args made sure one of the two is given
        return max_update
    import torch.distributed as dist
    from fairseq import utils
    from fairseq.distributed import utils as distributed_utils

    distributed = dist.is_available() and dist.is_initialized()

    subset = getattr(args, "train_subset", "train")
    if subset not in task.datasets:
        task.load_dataset(subset, epoch=1)
    itr = task.get_batch_iterator(
        dataset=task.dataset(subset),
        max_tokens=getattr(args, "max_tokens", None),
        max_sentences=getattr(args, "batch_size", None),
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions(),
                                                  getattr(args, "max_tokens", None)),
        ignore_invalid_inputs=True,
        required_batch_size_multiple=getattr(args, "required_batch_size_multiple", 8),
        seed=getattr(args, "seed", 1),
        num_shards=distributed_utils.get_data_parallel_world_size() if distributed else 1,
        shard_id=distributed_utils.get_data_parallel_rank() if distributed else 0,
        epoch=1,
        disable_iterator_cache=True,
    )
    batches = len(itr)
    update_freq = list(getattr(args, "update_freq", [1]) or [1])
    rounding = math.floor if getattr(args, "skip_remainder_batch", False) else math.ceil
    total = sum(rounding(batches / update_freq[min(e, len(update_freq) - 1)]) for e in range(max_epoch))
    if max_update > 0:
        total = min(total, max_update)
    logger.info(f"cyclic precision: {batches} batches per epoch, update_freq {update_freq}, {max_epoch} epochs "
                f"-> {total} updates")
    return total


class CyclicPrecision:
    """Which bits a CPT model uses when: the schedule's in training, fixed ``eval_bits`` otherwise.

    ``total`` is a callable giving the run's length; it is called once, at the first training update (the training
    set is loaded by then). ``minmax_weights``: the quantized weights take min-max ranges (``--estimatorw
    minmax``); cycled down to ``LOW_WEIGHT_BITS`` or fewer, the first training update warns about it (once per run,
    and never where a CPT checkpoint is only loaded for evaluation).
    """

    def __init__(self, config: CPTConfig, eval_bits: tuple[int, int], total, minmax_weights: bool = False):
        self.config = config
        self.eval_bits = eval_bits
        self._total = total
        self._minmax_weights = minmax_weights
        self._scheduler: CyclicPrecisionScheduler | None = None

    @property
    def scheduler(self) -> CyclicPrecisionScheduler:
        if self._scheduler is None:
            self._scheduler = CyclicPrecisionScheduler(self.config, self._total())
            offset = f" ({self.config.input_offset:g} of a cycle ahead)" if self.config.input_offset else ""
            logger.info(f"cyclic precision over {self._scheduler.total_updates} updates: weights "
                        f"{self.config.wbit_min}-{self.config.wbit_max} bits, inputs {self.config.inbit_min}-"
                        f"{self.config.inbit_max} bits{offset}, {self.config.num_cyclic_period} cycles; evaluation at "
                        f"W{self.eval_bits[0]}A{self.eval_bits[1]}")
            if self._minmax_weights and self.config.wbit_min <= LOW_WEIGHT_BITS:
                logger.warning(f"--cpt-config cycles the weights down to {self.config.wbit_min} bits with min-max "
                               f"ranges (--estimatorw minmax), which round most of a weight row to zero there; "
                               f"--estimatorw mse_grid (clipping searched when the bits change) is the recommended "
                               f"setting (docs/cpt.md)")
        return self._scheduler

    def bits(self, training: bool, update: int | None) -> tuple[int, int]:
        """(weight bits, input bits) in this mode; before the first update of training, the evaluation bits."""
        if not training or update is None:
            return self.eval_bits
        return self.scheduler.bits_at(update)

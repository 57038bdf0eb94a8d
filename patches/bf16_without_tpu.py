"""Fix for fairseq's "``--bf16`` implies ``--tpu``", which crashes ``--bf16`` runs on machines without torch_xla.

The fairseq bug: ``fairseq.options.parse_args_and_arch`` sets ``args.tpu = True`` whenever ``--bf16`` (or
``--memory-efficient-bf16``) is given. ``Trainer.__init__`` then asks ``utils.get_tpu_device()`` for its device,
and where torch_xla is not installed ``fairseq.utils.xm`` is None, so ``fairseq-train --bf16`` on a GPU, and
``--cpu --bf16`` too, fail with ``AttributeError: 'NoneType' object has no attribute 'xla_device'``.

The fix wraps ``parse_args_and_arch``: when ``tpu`` was only implied by bf16 (``--tpu`` is not among the arguments
it parsed) and fairseq could not import torch_xla, ``tpu`` goes back to False, so training runs in bf16 on the
CUDA or CPU device. Explicit ``--tpu``, and machines that have torch_xla, keep fairseq's behaviour.

Why this seam: every config is derived from that namespace. ``convert_namespace_to_omegaconf`` resolves the
``II("common.tpu")`` fields into plain copies (``distributed_training.tpu``, ``optimizer.tpu``, ``criterion.tpu``,
``model.tpu``), so resetting ``cfg.common.tpu`` later, in ``call_main``, would leave those True. And
``--user-dir`` imports the plugin in ``options.get_parser``, before ``fairseq_cli`` calls
``options.parse_args_and_arch``, so the wrapper already serves the ``fairseq-train`` run that imports it. A script
that passes ``--user-dir`` only in ``input_args`` must ``import fairseq_quant`` before it parses.
"""
from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable

from fairseq import utils

from . import wrap_parse_args_and_arch

__all__ = ["apply"]

logger = logging.getLogger(__name__)

_PATCHED = "_fairseq_quant_bf16_without_tpu"


def _without_implied_tpu(parse_args_and_arch: Callable) -> Callable:
    """Wrap fairseq's ``parse_args_and_arch`` so that bf16 no longer turns on ``tpu`` where there is no XLA."""

    @functools.wraps(parse_args_and_arch)
    def wrapper(
        parser: argparse.ArgumentParser,
        input_args: list[str] | None = None,
        parse_known: bool = False,
        suppress_defaults: bool = False,
        modify_parser: Callable[[argparse.ArgumentParser], None] | None = None,
    ):
        result = parse_args_and_arch(parser, input_args, parse_known, suppress_defaults, modify_parser)
        args = result[0] if parse_known else result
        argv = sys.argv[1:] if input_args is None else input_args
        implied = getattr(args, "bf16", False) and getattr(args, "tpu", False) and "--tpu" not in argv
        if implied and utils.xm is None:
            args.tpu = False
            logger.info("--bf16 without torch_xla: not switching to TPU (fairseq's 'bf16 implies --tpu'), tpu=False")
        return result

    return wrapper


def apply() -> None:
    """Replace ``fairseq.options.parse_args_and_arch`` by the wrapper; idempotent (the original is ``__wrapped__``)."""
    wrap_parse_args_and_arch(_without_implied_tpu, _PATCHED)

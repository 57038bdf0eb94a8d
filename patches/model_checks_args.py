"""Fix: fairseq gives a model no place to reject a combination of its flags as a command-line error.

The fairseq gap: a model's ``add_args`` can validate one flag at a time (argparse ``type``/``choices``), but a
combination (``--cpt-config`` without ``--quantw``/``--quantin``, a schedule longer than ``--max-update``) can
only be refused later, in ``build_model``, where ``fairseq-train`` dies with a Python traceback instead of a usage
error.

The fix wraps ``fairseq.options.parse_args_and_arch``: once fairseq has parsed the arguments and filled in the
architecture's defaults, it calls the model class's ``check_args(args)`` classmethod if the model has one, and turns
a ``ValueError`` from it into ``parser.error(message)`` — ``fairseq-train: error: ...``, exit status 2, as for any
bad flag. Models without ``check_args`` are untouched; ``suppress_defaults`` parses (which see only part of the
arguments) are not checked.
"""
from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

from . import wrap_parse_args_and_arch

__all__ = ["apply"]

_PATCHED = "_fairseq_quant_model_checks_args"


def _with_model_check(parse_args_and_arch: Callable) -> Callable:
    """Wrap ``parse_args_and_arch`` so that the chosen model's ``check_args`` runs as part of parsing."""

    @functools.wraps(parse_args_and_arch)
    def wrapper(parser: argparse.ArgumentParser, *rest, **kwargs):
        result = parse_args_and_arch(parser, *rest, **kwargs)
        parse_known = kwargs.get("parse_known", rest[1] if len(rest) > 1 else False)
        suppress_defaults = kwargs.get("suppress_defaults", rest[2] if len(rest) > 2 else False)
        args = result[0] if parse_known else result
        if not suppress_defaults:
            from fairseq.models import ARCH_MODEL_REGISTRY

            check = getattr(ARCH_MODEL_REGISTRY.get(getattr(args, "arch", None)), "check_args", None)
            if check is not None:
                try:
                    check(args)
                except ValueError as e:
                    parser.error(str(e))
        return result

    return wrapper


def apply() -> None:
    """Replace ``fairseq.options.parse_args_and_arch`` by the wrapper; idempotent."""
    wrap_parse_args_and_arch(_with_model_check, _PATCHED)

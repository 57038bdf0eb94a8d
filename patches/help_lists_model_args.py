"""Fix for fairseq's ``--help``, which never lists model- or task-specific options.

The fairseq bug: ``fairseq.options.parse_args_and_arch`` first calls ``parser.parse_known_args`` to learn
``--arch`` and ``--task``, and only then adds the chosen model's and task's options to the parser. With ``-h`` or
``--help`` that first call already prints the help and exits, so ``fairseq-train --arch roberta_base --help`` shows
neither RoBERTa's options (``--encoder-layers`` ...) nor a plugin model's (``--quantw`` ...).

The fix wraps ``parse_args_and_arch``: when help is asked for, it first runs fairseq's own parsing without the help
flag (quietly, to its end or to its first complaint, such as a missing data directory), which adds every group to
the parser, and then prints the parser's help and exits with status 0, as argparse does.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import sys
from collections.abc import Callable

from . import wrap_parse_args_and_arch

__all__ = ["apply"]

_PATCHED = "_fairseq_quant_help_lists_model_args"
HELP_FLAGS = ("-h", "--help")


def _complete_help(parse_args_and_arch: Callable) -> Callable:
    """Wrap ``parse_args_and_arch`` so that ``--help`` lists the options of the chosen model and task."""

    @functools.wraps(parse_args_and_arch)
    def wrapper(
        parser: argparse.ArgumentParser,
        input_args: list[str] | None = None,
        parse_known: bool = False,
        suppress_defaults: bool = False,
        modify_parser: Callable[[argparse.ArgumentParser], None] | None = None,
    ):
        argv = sys.argv[1:] if input_args is None else list(input_args)
        if not any(a in HELP_FLAGS for a in argv):
            return parse_args_and_arch(parser, input_args, parse_known, suppress_defaults, modify_parser)
        rest = [a for a in argv if a not in HELP_FLAGS]
        with contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(SystemExit):
            parse_args_and_arch(parser, rest, True, suppress_defaults, modify_parser)
        parser.print_help()
        parser.exit(0)

    return wrapper


def apply() -> None:
    """Replace ``fairseq.options.parse_args_and_arch`` by the wrapper; idempotent."""
    wrap_parse_args_and_arch(_complete_help, _PATCHED)

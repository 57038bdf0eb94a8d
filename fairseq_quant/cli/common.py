"""What every command of the plugin does first (evaluate.py, fairseq-quant-export, fairseq-quant-sensitivity)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

__all__ = ["add_calibration_args", "add_checkpoint_args", "checkpoint_command", "command_logging", "run_json_command"]


def _int_at_least(value: str, least: int, what: str) -> int:
    try:
        n = int(value, 10)
    except ValueError:
        n = least - 1
    if n < least:
        raise argparse.ArgumentTypeError(f"expected a {what} integer, got {value!r}")
    return n


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(value, 1, "positive")


def non_negative_int(value: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(value, 0, "non-negative")


def command_logging() -> None:
    """Warnings and errors on stderr, one line each. ``force``: importing fairseq (its wav2vec2 classification
    module) already configured the root logger at DEBUG."""
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.WARNING,
                        stream=sys.stderr, force=True)


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint FILE --data DATA_BIN``: the sentence-prediction checkpoint and the binarized data of its task
    (dictionaries, splits)."""
    parser.add_argument("--checkpoint", required=True, metavar="FILE", help="checkpoint (.pt) written by fairseq-train")
    parser.add_argument("--data", required=True, metavar="DATA_BIN",
                        help="binarized data of its task (input0/, label/): dictionaries, the evaluated and "
                             "calibration splits")


def add_calibration_args(parser: argparse.ArgumentParser, without: str) -> None:
    """``--calib-batches N --calib-split SPLIT --calib-skip-padding --batch-size N``; ``without`` says what
    ``--calib-batches 0`` (the default) leaves the ranges at."""
    from ..ptq.calibrate import AVERAGES  # here: the commands that calibrate import fairseq anyway

    parser.add_argument("--calib-batches", type=int, default=0, metavar="N",
                        help=f"estimate the input ranges on N batches of --calib-split first (default 0: {without})")
    parser.add_argument("--calib-split", default="train", help="split used for calibration (default train)")
    parser.add_argument("--calib-average", choices=AVERAGES, default="running",
                        help="how the calibration batches' ranges combine: running (default: the quantizers' running "
                             "average, momentum --qparams-momentum, so later batches weigh more) or equal (min-max: "
                             "the min and max over the batches; other estimators: the mean of the batches' ranges)")
    parser.add_argument("--calib-skip-padding", action="store_true",
                        help="leave padding positions out of the calibrated activation ranges (default: counted)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="sentences per batch (default 32)")


def checkpoint_command(prog: str, description: str) -> argparse.ArgumentParser:
    """The parser of a command over one checkpoint and its data (``--checkpoint``, ``--data`` already added)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_checkpoint_args(parser)
    return parser


def run_json_command(parser: argparse.ArgumentParser, argv: list[str] | None, body: Callable[[argparse.Namespace],
                     dict], errors: tuple[type[Exception], ...]) -> None:
    """Parse ``argv``, run ``body(opts)`` and print its result as one JSON line (floats to 6 digits); an error
    of ``errors`` is a usage error (its message, exit status 2, no traceback)."""
    command_logging()
    opts = parser.parse_args(argv)
    try:
        result = body(opts)
    except errors as e:
        parser.error(str(e))
    print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.items()}), flush=True)

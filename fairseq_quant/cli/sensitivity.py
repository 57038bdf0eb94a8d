"""fairseq-quant-sensitivity: per-layer PTQ sensitivity of a sentence-prediction checkpoint (library: ptq.sensitivity).

    fairseq-quant-sensitivity --checkpoint CKPT --data DATA_BIN [--bitsw 8 --bitsin 8] [--out DIR]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

import numpy as np
import torch

from ..plugin.options import bits_type
from ..ptq.loader import LoadError, check_data_paths, glue_task, load_model_and_task
from ..ptq.sensitivity import metric_for, run_sensitivity, write_csv, write_heatmap, write_markdown
from .common import checkpoint_command, command_logging, non_negative_int, positive_int

logger = logging.getLogger('fairseq_quant.ptq.sensitivity')


# -- command line -----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = checkpoint_command(
        "fairseq-quant-sensitivity",
        "Post-training quantization sensitivity of a sentence-prediction checkpoint: quantize each layer's "
        "q/k/v/out/fc1/fc2 weights and inputs, attention input, softmax probabilities, the token embeddings and the "
        "head alone; report the metric drop of each against FP32 (OUT/sensitivity.csv, .md, .png). Prints the "
        "markdown table.")
    parser.add_argument("--split", default="valid", help="split to evaluate (default valid)")
    parser.add_argument("--calib-split", default="train", help="split that calibrates input ranges (default train)")
    parser.add_argument("--calib-batches", type=non_negative_int, default=8, metavar="N",
                        help="batches of --calib-split that calibrate each group's input ranges (default 8; 0: the "
                             "checkpoint's recorded ranges, or the current batch's)")
    parser.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                        help="sentences per batch (default 32)")
    parser.add_argument("--bitsw", type=bits_type, default=8, metavar="N", help="weight bits, 2..16 (default 8)")
    parser.add_argument("--bitsin", type=bits_type, default=8, metavar="N", help="input bits, 2..16 (default 8)")
    parser.add_argument("--max-sentences", type=positive_int, default=None, metavar="N",
                        help="evaluate on the first N sentences of --split only (faster; default all)")
    parser.add_argument("--out", metavar="DIR", help="where sensitivity.{csv,md,png} go (default: the "
                                                     "checkpoint's directory)")
    parser.add_argument("--seed", type=int, default=1, help="seed for batching (default 1)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    return parser


def cli_main(argv: list[str] | None = None) -> None:
    command_logging()
    logger.setLevel(logging.INFO)  # one progress line per group
    warnings.filterwarnings("ignore", message="'pin_memory' argument is set as true")  # fairseq's loader on CPU
    parser = build_parser()
    opts = parser.parse_args(argv)
    try:
        check_data_paths(opts.checkpoint, opts.data, [opts.split] + ([opts.calib_split] if opts.calib_batches else []))
        model, task, cfg = load_model_and_task(opts.checkpoint, opts.data)
    except LoadError as e:
        parser.error(str(e))
    out = opts.out or os.path.dirname(os.path.abspath(opts.checkpoint))
    os.makedirs(out, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() and not opts.cpu else "cpu")
    model.to(device).eval()
    metric_name, metric_fn = metric_for(opts.data, bool(task.cfg.regression_target))
    rows = run_sensitivity(model, task, weight_bits=opts.bitsw, input_bits=opts.bitsin,
                           calib_batches=opts.calib_batches, batch_size=opts.batch_size, split=opts.split,
                           calib_split=opts.calib_split, seed=opts.seed, device=device, metric_fn=metric_fn,
                           max_sentences=opts.max_sentences)
    glue = glue_task(opts.data)
    sentences = f"first {opts.max_sentences} sentences of " if opts.max_sentences else ""
    title = (f"{cfg.model.arch} on {glue or os.path.basename(os.path.normpath(opts.data))} "
             f"({sentences}{opts.split}): {metric_name} drop, one group at a time in W{opts.bitsw}A{opts.bitsin}, "
             f"{opts.calib_batches} calibration batches")
    write_csv(rows, os.path.join(out, "sensitivity.csv"))
    text = write_markdown(rows, os.path.join(out, "sensitivity.md"), metric_name, title)
    write_heatmap(rows, os.path.join(out, "sensitivity.png"), title)
    per_group = np.mean([r["seconds"] for r in rows[1:]]) if len(rows) > 1 else 0.0
    print(text, flush=True)
    print(f"{len(rows) - 1} groups, {per_group:.2f} s each; written to {os.path.join(out, 'sensitivity.{csv,md,png}')}",
          file=sys.stderr, flush=True)


if __name__ == "__main__":
    cli_main()

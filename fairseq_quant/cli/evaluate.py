"""evaluate.py: a sentence-prediction checkpoint + binarized data + split -> the task's metric, as one JSON line.

Post-training quantization uses the training flags (``--quantw --bitsw 4 ...``), which override what the
checkpoint was trained with; ranges come from the current batch or, with ``--calib-batches N``, from N batches of
the calibration split. Checkpoints of the plain ``roberta*`` architectures are evaluated as ``quant_roberta``
(same parameters), so they can be post-training quantized too. ``--backend`` chooses what executes the model: its
fake quantization in PyTorch, the Triton INT8/FP8 kernels (GPU), or ONNX Runtime (CPU) on its ONNX export.
Loading and calibration are ``fairseq_quant.ptq.loader`` and ``fairseq_quant.ptq.calibrate``.

    python scripts/evaluate.py --checkpoint FILE --data DATA_BIN --split valid [quantization flags]
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import statistics
import tempfile

import torch

from ..core.recipe import describe
from ..plugin.options import add_quant_args
from ..ptq.calibrate import calibrate
from ..ptq.loader import (
    LoadError,
    batches,
    check_data_paths,
    glue_task,
    load_model_and_task,
    official_metric,
    predict,
    quant_overrides,
    score,
    to_device,
)
from .common import add_calibration_args, checkpoint_command, run_json_command

logger = logging.getLogger("fairseq_quant.cli.evaluate")

__all__ = ["BACKENDS", "build_parser", "evaluate", "cli_main", "EvaluateError"]

BACKENDS = ("fake", "triton", "onnxruntime")


class EvaluateError(ValueError):
    """Bad input to evaluate.py; the message names the flag or file and what was expected."""


def build_parser() -> argparse.ArgumentParser:
    parser = checkpoint_command("evaluate.py", "Evaluate a fairseq (quant_)roberta sentence-prediction checkpoint, "
                                               "optionally with post-training quantization. Prints one JSON line.")
    parser.add_argument("--split", default="valid", help="split to evaluate (default valid)")
    add_calibration_args(parser, "the checkpoint's recorded ranges, or the current batch's where none are recorded")
    parser.add_argument("--adaround", action="store_true",
                        help="round the quantized weights with AdaRound (learned up/down rounding, layer by layer on "
                             "--adaround-batches batches of --calib-split) instead of to nearest; needs --quantw with "
                             "a symmetric or asymmetric integer grid")
    parser.add_argument("--adaround-batches", type=int, default=4, metavar="N",
                        help="calibration batches whose layer inputs AdaRound fits (default 4)")
    parser.add_argument("--adaround-iters", type=int, default=1000, metavar="N",
                        help="AdaRound optimisation steps per layer (default 1000)")
    parser.add_argument("--backend", choices=BACKENDS, default="fake",
                        help="fake: fake quantization (float arithmetic on quantized values); triton: the quantized "
                             "linear layers run in real INT8/FP8 with the Triton kernels (kernels.deploy; a GPU: on a "
                             "CPU the model keeps its fake quantization, with a warning); onnxruntime: the model "
                             "exported to ONNX with its Q/DQ scales (a temporary file, or --onnx) and run by ONNX "
                             "Runtime on the CPU, in integer kernels (default fake)")
    parser.add_argument("--onnx", metavar="MODEL.onnx",
                        help="with --backend onnxruntime: run this exported model (fairseq-quant-export) instead of "
                             "exporting the checkpoint; the checkpoint and data give the task")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="with --backend onnxruntime: ONNX Runtime's intra-op threads (default: one per core)")
    parser.add_argument("--csv", metavar="FILE", help="append a row with the results to this CSV file")
    parser.add_argument("--tag", default="", help="a label for this run, written to the JSON line and CSV row")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    parser.add_argument("--seed", type=int, default=1, help="seed for batching (default 1)")
    add_quant_args(parser, defaults=False, training=False)
    return parser


def _check_inputs(opts: argparse.Namespace) -> None:
    splits = [opts.split] + ([opts.calib_split] if opts.calib_batches > 0 else [])
    try:
        check_data_paths(opts.checkpoint, opts.data, splits)
    except LoadError as e:
        raise EvaluateError(str(e)) from None
    if opts.batch_size < 1 or opts.calib_batches < 0:
        raise EvaluateError("--batch-size must be >= 1 and --calib-batches >= 0")
    if getattr(opts, "adaround", False) and (opts.adaround_batches < 1 or opts.adaround_iters < 1):
        raise EvaluateError("--adaround-batches and --adaround-iters must be >= 1")
    if getattr(opts, "adaround", False) and not os.path.isfile(
            os.path.join(opts.data, "input0", f"{opts.calib_split}.idx")):
        raise EvaluateError(f"--adaround fits on --calib-split {opts.calib_split!r}, which {opts.data} does not have")
    onnx = getattr(opts, "onnx", None)
    if onnx is not None:
        if opts.backend != "onnxruntime":
            raise EvaluateError("--onnx runs an exported model with ONNX Runtime: it needs --backend onnxruntime")
        if not os.path.isfile(onnx):
            raise EvaluateError(f"--onnx: no such file: {onnx}")
        given = [k for k in quant_overrides(opts)] + (["calib_batches"] if opts.calib_batches else []) + (
            ["adaround"] if opts.adaround else [])
        if given:
            raise EvaluateError(f"--onnx runs {onnx} as it was exported: "
                                f"{', '.join('--' + k.replace('_', '-') for k in given)} cannot change it (export "
                                f"again with them, or leave --onnx out)")
    if getattr(opts, "threads", None) is not None and opts.threads < 1:
        raise EvaluateError("--threads must be >= 1")


def load_model(opts: argparse.Namespace):
    """``(model, task, cfg)`` of ``opts.checkpoint`` on ``opts.data`` with the command line's quantization flags."""
    try:
        return load_model_and_task(opts.checkpoint, opts.data, quant_overrides(opts))
    except LoadError as e:
        raise EvaluateError(str(e)) from None


def evaluate(opts: argparse.Namespace) -> dict:
    """Run an evaluation described by ``opts`` (from ``build_parser``); returns the result dictionary."""
    _check_inputs(opts)
    onnxruntime = opts.backend == "onnxruntime"  # a CPU runtime: the model is loaded, calibrated, exported there
    cuda = torch.cuda.is_available() and not opts.cpu and not onnxruntime
    device = torch.device("cuda" if cuda else "cpu")
    model, task, cfg = load_model(opts)
    model.to(device).eval()
    used = calibrate(model, task, opts.calib_split, opts.calib_batches, opts.batch_size, opts.seed, device,
                     opts.calib_skip_padding, opts.calib_average) if opts.calib_batches > 0 else 0
    adaround = run_adaround(model, task, opts, device) if opts.adaround else None
    deployed = run_deploy(model) if opts.backend == "triton" else None
    head = task.cfg.classification_head_name
    with tempfile.TemporaryDirectory(prefix="fairseq-quant-") as tmp:
        if onnxruntime:
            logits_of = run_onnxruntime(model, opts, head, os.path.join(tmp, "model.onnx"))
        else:
            def logits_of(tokens):
                return model(tokens, features_only=True, classification_head_name=head)[0]
        preds, targets, seconds = predict(logits_of, task, opts.split, opts.batch_size, opts.seed,
                                          model.max_positions(), device)
    result = score(preds, targets, bool(task.cfg.regression_target))
    glue = glue_task(opts.data)
    if glue is not None:
        result = {"task": glue, "metric": official_metric(opts.data, bool(task.cfg.regression_target)), **result}
    recipe = model.quant_recipe
    result.update(
        split=opts.split,
        n=int(len(targets)),
        quant=describe(recipe) if not opts.onnx else getattr(logits_of, "quant", None) or "as exported",
        calib_batches=used,
        checkpoint=opts.checkpoint,
    )
    result["backend"] = opts.backend
    # the forward of each batch (batching and metrics not counted), median and total
    result["ms_per_batch"] = 1e3 * statistics.median(seconds) if seconds else 0.0
    result["forward_seconds"] = sum(seconds)
    if opts.onnx:
        result["onnx"] = opts.onnx
    if deployed is not None:
        result["deployed_layers"] = deployed
    if adaround is not None:
        result["quant"] += "+AdaRound"
        result["adaround_mse_ratio"] = adaround
    result["tag"] = opts.tag
    return result


def run_onnxruntime(model, opts: argparse.Namespace, head: str, tmp_path: str):
    """``--backend onnxruntime``: the model exported to ``tmp_path`` (or ``--onnx``) in an ONNX Runtime session;
    returns its ``src_tokens -> logits``."""
    from ..deploy import ExportError, export_onnx
    from ..deploy.runtime import OrtClassifier

    path = opts.onnx
    if path is None:
        try:
            export_onnx(model, tmp_path, head=head)
        except ExportError as e:
            raise EvaluateError(f"--backend onnxruntime: {e}") from None
        path = tmp_path
    try:
        return OrtClassifier(path, opts.threads)
    except Exception as e:  # ONNX Runtime's own message: not an ONNX file, or not an exported classifier
        raise EvaluateError(f"--onnx {path}: ONNX Runtime cannot run it as an exported classifier: {e}") from None


def run_deploy(model) -> int:
    """``--backend triton``: the model's quantized linear layers in real INT8/FP8 (on a GPU, or in Triton's
    interpreter); returns how many. On a CPU the model keeps its fake quantization (``deploy`` warns)."""
    from ..deploy.triton import DeployError, deploy

    try:
        report = deploy(model)
    except DeployError as e:
        raise EvaluateError(f"--backend triton: {e}") from None
    return sum(1 for r in report.values() if not r.startswith("kept"))


def run_adaround(model, task, opts, device) -> float:
    """AdaRound the model's quantized weights on ``--adaround-batches`` batches of ``--calib-split`` (after the
    input ranges are calibrated, so W4A8 fits with quantized inputs). Returns the mean over layers of the
    reconstruction MSE of AdaRound relative to round-to-nearest."""
    from ..ptq.adaround import adaround_model

    w = model.quant_recipe.weight
    if w.mode != "quantize" or not w.is_int:
        raise EvaluateError("--adaround rounds quantized integer weights: give --quantw (with --formatw int)")
    head = task.cfg.classification_head_name
    inputs = []
    for sample in batches(task, opts.calib_split, opts.batch_size, opts.seed, model.max_positions()):
        if len(inputs) >= opts.adaround_batches:
            break
        inputs.append(to_device(sample, device)["net_input"])
    # layers without an active weight quantizer (e.g. an off classifier) keep their weights
    skip = {n for n, m in model.named_modules() if getattr(m, "weight_quant", None) is not None
            and not m.weight_quant.active}
    try:
        reports = adaround_model(
            model, inputs, lambda b: model(**b, features_only=True, classification_head_name=head),
            bits=w.bits, signed=w.signed, symmetric=w.symmetric, per_channel=w.per_channel,
            iters=opts.adaround_iters, seed=opts.seed, skip=lambda name: name in skip, log=logger.info)
    except ValueError as e:
        raise EvaluateError(f"--adaround: {e}") from None
    ratios = [r["mse_adaround"] / r["mse_nearest"] for r in reports.values() if r["mse_nearest"] > 0]
    return sum(ratios) / max(len(ratios), 1)


CSV_COLUMNS = ("tag", "task", "metric", "accuracy", "f1", "mcc", "pearson", "spearman", "quant", "calib_batches",
               "split", "n", "checkpoint", "backend", "ms_per_batch")


def append_csv(path: str, result: dict) -> None:
    """Append ``result`` to the CSV file ``path`` in the fixed ``CSV_COLUMNS`` (empty where a metric does not
    apply), so runs of different tasks share one file; the header is written when the file is new."""
    row = {k: result.get(k, "") for k in CSV_COLUMNS}
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    if not new:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if header != list(row):
            raise EvaluateError(f"--csv {path}: its columns {header} differ from this run's {list(row)}; "
                                f"use another file")
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def cli_main(argv: list[str] | None = None) -> None:
    def body(opts: argparse.Namespace) -> dict:
        result = evaluate(opts)
        if opts.csv:
            append_csv(opts.csv, result)
        return result

    run_json_command(build_parser(), argv, body, (EvaluateError,))


if __name__ == "__main__":
    cli_main()




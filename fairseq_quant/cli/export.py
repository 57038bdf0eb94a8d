"""fairseq-quant-export: a sentence-prediction checkpoint -> an ONNX model with its calibrated Q/DQ scales.

    fairseq-quant-export --checkpoint CKPT --data DATA_BIN --out MODEL.onnx [quantization flags or --quant-recipe]
        [--calib-batches N] [--fp32 | --ort-dynamic] [--force]

The checkpoint is loaded as evaluate.py loads it (its quantization, or the flags given here as post-training
quantization), its ranges calibrated on ``--calib-batches`` batches where asked, and written by ``export_onnx``.
Prints one JSON line: the file, its opset and its quantization points by ONNX type.
"""
from __future__ import annotations

import argparse
import os
import tempfile

from ..core.recipe import describe
from ..deploy.onnx_export import export_onnx
from ..deploy.qdq import ExportError
from ..plugin.options import add_quant_args
from ..ptq.calibrate import calibrate
from ..ptq.loader import LoadError, check_data_paths, load_model_and_task, quant_overrides
from .common import add_calibration_args, checkpoint_command, run_json_command

__all__ = ["build_parser", "cli_main", "export_checkpoint"]


def build_parser() -> argparse.ArgumentParser:
    parser = checkpoint_command(
        "fairseq-quant-export",
        "Export a fairseq (quant_)roberta sentence-prediction checkpoint to ONNX: every active integer (or FP8) "
        "quantization point becomes QuantizeLinear/DequantizeLinear with the scale and zero point of the "
        "fake-quantized model, so ONNX Runtime runs it in integer kernels. Input src_tokens (batch x length, int64, "
        "right-padded as fairseq pads), output the head's logits.")
    parser.add_argument("--out", required=True, metavar="MODEL.onnx", help="the ONNX file to write")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.add_argument("--fp32", action="store_true", help="export the floating-point model (every quantizer off)")
    parser.add_argument("--ort-dynamic", action="store_true",
                        help="write ONNX Runtime's own quantize_dynamic of the FP32 export instead (int8 weights, "
                             "activation ranges computed at run time): the baseline without this plugin")
    add_calibration_args(parser, "the checkpoint's recorded ranges; a model without any is refused")
    parser.add_argument("--seed", type=int, default=1, help="seed for batching (default 1)")
    add_quant_args(parser, defaults=False, training=False)
    return parser


def export_checkpoint(opts: argparse.Namespace) -> dict:
    """Export as ``opts`` (from ``build_parser``) say; returns the JSON line's dictionary. Raises ExportError or
    LoadError naming the flag, file or point."""
    import torch

    if opts.calib_batches < 0 or opts.batch_size < 1:
        raise ExportError("--calib-batches must be >= 0 and --batch-size >= 1")
    overrides = quant_overrides(opts)
    floating = opts.fp32 or opts.ort_dynamic
    if opts.fp32 and opts.ort_dynamic:
        raise ExportError("--fp32 and --ort-dynamic are two different exports: choose one")
    if floating and (overrides or opts.calib_batches):
        given = [f"--{k.replace('_', '-')}" for k in overrides] + (["--calib-batches"] if opts.calib_batches else [])
        flag = "--fp32" if opts.fp32 else "--ort-dynamic"
        raise ExportError(f"{flag} exports the floating-point model: {', '.join(given)} do not apply")
    if os.path.exists(opts.out) and not opts.force:
        raise ExportError(f"--out {opts.out} exists; give --force to overwrite it")
    check_data_paths(opts.checkpoint, opts.data, [opts.calib_split] if opts.calib_batches else [])
    model, task, _ = load_model_and_task(opts.checkpoint, opts.data, overrides)
    model.eval()
    used = calibrate(model, task, opts.calib_split, opts.calib_batches, opts.batch_size, opts.seed,
                     torch.device("cpu"), opts.calib_skip_padding, opts.calib_average)
    head = task.cfg.classification_head_name
    if opts.ort_dynamic:
        from ..deploy.runtime import quantize_dynamic_peer

        out_dir = os.path.dirname(os.path.abspath(opts.out))
        if not os.path.isdir(out_dir):
            raise ExportError(f"--out {opts.out}: no such directory {out_dir}")
        with tempfile.TemporaryDirectory(prefix="fairseq-quant-") as tmp:
            fp32 = os.path.join(tmp, "fp32.onnx")
            report = export_onnx(model, fp32, head=head, fp32=True)
            _copy(quantize_dynamic_peer(fp32, os.path.join(tmp, "dynamic.onnx")), opts.out)
        return {"out": os.path.abspath(opts.out), "opset": report.opset, "quant": "ORT dynamic INT8",
                "points": {}, "calib_batches": 0, "checkpoint": opts.checkpoint}
    report = export_onnx(model, opts.out, head=head, fp32=opts.fp32, force=opts.force)
    quant = "FP32" if opts.fp32 else describe(model.quant_recipe)
    return {"out": report.path, "opset": report.opset, "quant": quant, "points": dict(report.points),
            "calib_batches": used, "checkpoint": opts.checkpoint}


def _copy(src: str, dst: str) -> None:
    """``src`` to ``dst`` through a temporary file beside ``dst`` (never a half-written ``dst``)."""
    import shutil

    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(dst) + ".", suffix=".tmp", dir=os.path.dirname(
        os.path.abspath(dst)))
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        os.remove(tmp)
        raise


def cli_main(argv: list[str] | None = None) -> None:
    run_json_command(build_parser(), argv, export_checkpoint, (ExportError, LoadError))


if __name__ == "__main__":
    cli_main()

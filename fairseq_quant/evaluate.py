"""evaluate.py: a sentence-prediction checkpoint + binarized data + split -> the task's metric, as one JSON line.

Post-training quantization uses the training flags (``--quantw --bitsw 4 ...``), which override what the
checkpoint was trained with; ranges come from the current batch or, with ``--calib-batches N``, from N batches of
the calibration split. Checkpoints of the plain ``roberta*`` architectures are evaluated as ``quant_roberta``
(same parameters), so they can be post-training quantized too.

    python scripts/evaluate.py --checkpoint FILE --data DATA_BIN --split valid [quantization flags]
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys

import torch
from fairseq import checkpoint_utils, tasks
from omegaconf import open_dict

from .glue import STAMP, get_task, task_metric
from .layers import quantizers
from .metrics import classification_metrics, regression_metrics
from .recipe import QUANT_DEFAULTS, QuantRecipe, add_quant_args

logger = logging.getLogger("fairseq_quant.evaluate")

__all__ = ["build_parser", "evaluate", "cli_main", "EvaluateError"]


class EvaluateError(ValueError):
    """Bad input to evaluate.py; the message names the flag or file and what was expected."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evaluate.py",
        description="Evaluate a fairseq (quant_)roberta sentence-prediction checkpoint, optionally with "
        "post-training quantization. Prints one JSON line.",
    )
    parser.add_argument("--checkpoint", required=True, metavar="FILE", help="checkpoint (.pt) written by fairseq-train")
    parser.add_argument("--data", required=True, metavar="DATA_BIN", help="binarized data (input0/, label/)")
    parser.add_argument("--split", default="valid", help="split to evaluate (default valid)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="sentences per batch (default 32)")
    parser.add_argument("--calib-batches", type=int, default=0, metavar="N",
                        help="estimate input ranges on N batches of --calib-split before evaluating (default 0: "
                             "use the checkpoint's recorded ranges, or the current batch's where none are recorded)")
    parser.add_argument("--calib-split", default="train", help="split used for calibration (default train)")
    parser.add_argument("--calib-skip-padding", action="store_true",
                        help="leave padding positions out of the calibrated activation ranges (default: counted)")
    parser.add_argument("--adaround", action="store_true",
                        help="round the quantized weights with AdaRound (learned up/down rounding, layer by layer on "
                             "--adaround-batches batches of --calib-split) instead of to nearest; needs --quantw with "
                             "a symmetric or asymmetric integer grid")
    parser.add_argument("--adaround-batches", type=int, default=4, metavar="N",
                        help="calibration batches whose layer inputs AdaRound fits (default 4)")
    parser.add_argument("--adaround-iters", type=int, default=1000, metavar="N",
                        help="AdaRound optimisation steps per layer (default 1000)")
    parser.add_argument("--backend", choices=["fake", "triton"], default="fake",
                        help="fake: fake quantization (float arithmetic on quantized values); triton: the quantized "
                             "linear layers run in real INT8/FP8 (fairseq_quant.kernels.deploy) -- Triton kernels on a "
                             "GPU, torch._int_mm on the CPU (default fake)")
    parser.add_argument("--csv", metavar="FILE", help="append a row with the results to this CSV file")
    parser.add_argument("--tag", default="", help="a label for this run, written to the JSON line and CSV row")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    parser.add_argument("--seed", type=int, default=1, help="seed for batching (default 1)")
    add_quant_args(parser, defaults=False, training=False)
    return parser


def _check_inputs(opts: argparse.Namespace) -> None:
    if not os.path.isfile(opts.checkpoint):
        raise EvaluateError(f"--checkpoint: no such file: {opts.checkpoint}")
    for sub in ("input0",):
        if not os.path.isfile(os.path.join(opts.data, sub, "dict.txt")):
            raise EvaluateError(f"--data: {opts.data} is not binarized sentence-prediction data "
                                f"(expected {os.path.join(opts.data, sub, 'dict.txt')})")
    for split in [opts.split] + ([opts.calib_split] if opts.calib_batches > 0 else []):
        if not os.path.isfile(os.path.join(opts.data, "input0", f"{split}.idx")):
            raise EvaluateError(f"--split/--calib-split: {opts.data} has no split {split!r} "
                                f"(expected {os.path.join(opts.data, 'input0', split + '.idx')})")
    if opts.batch_size < 1 or opts.calib_batches < 0:
        raise EvaluateError("--batch-size must be >= 1 and --calib-batches >= 0")
    if getattr(opts, "adaround", False) and (opts.adaround_batches < 1 or opts.adaround_iters < 1):
        raise EvaluateError("--adaround-batches and --adaround-iters must be >= 1")
    if getattr(opts, "adaround", False) and not os.path.isfile(
            os.path.join(opts.data, "input0", f"{opts.calib_split}.idx")):
        raise EvaluateError(f"--adaround fits on --calib-split {opts.calib_split!r}, which {opts.data} does not have")


def _quant_overrides(opts: argparse.Namespace) -> dict:
    """The quantization flags given on the command line; quantizing a point overrides measuring it."""
    given = {k: getattr(opts, k) for k in QUANT_DEFAULTS if hasattr(opts, k)}
    for q, m in (("quantw", "measurew"), ("quantin", "measurein")):
        if given.get(q):
            given.setdefault(m, False)
    return given


def load_model_and_task(opts: argparse.Namespace):
    """Load the checkpoint as a quant_roberta model with the command line's quantization flags applied."""
    state = checkpoint_utils.load_checkpoint_to_cpu(opts.checkpoint)
    cfg = state.get("cfg")
    if cfg is None or cfg.get("model") is None:
        raise EvaluateError(
            f"--checkpoint {opts.checkpoint}: no model configuration inside; is it a fairseq checkpoint?"
        )
    arch = getattr(cfg.model, "_name", None) or getattr(cfg.model, "arch", None)
    if not arch or not (arch.startswith("roberta") or arch.startswith("quant_roberta")):
        raise EvaluateError(f"--checkpoint {opts.checkpoint}: architecture {arch!r} is not a RoBERTa "
                            f"(expected roberta* or quant_roberta*)")
    if cfg.task.get("_name") != "sentence_prediction":
        raise EvaluateError(f"--checkpoint {opts.checkpoint}: task {cfg.task.get('_name')!r}; evaluate.py "
                            f"evaluates sentence_prediction checkpoints")
    quant_arch = arch if arch.startswith("quant_") else "quant_" + arch
    from fairseq.models import ARCH_MODEL_REGISTRY

    if quant_arch not in ARCH_MODEL_REGISTRY:
        quant_arch = "quant_roberta"
    overrides = _quant_overrides(opts)
    with open_dict(cfg):
        cfg.model._name = quant_arch
        cfg.model.arch = quant_arch
        if overrides.get("quant_recipe"):
            # a recipe replaces every other quantization setting, the checkpoint's included
            for key, value in QUANT_DEFAULTS.items():
                setattr(cfg.model, key, value)
        if overrides:
            cfg.model.quant_recipe_json = None  # what is given here replaces the checkpoint's recipe
        if overrides and not overrides.get("quant_recipe"):
            cfg.model.quant_recipe = None
        for key, value in overrides.items():
            setattr(cfg.model, key, value)
        cfg.task.data = opts.data
        # a cyclic-precision checkpoint was saved with its evaluation precision in bitsw/bitsin: evaluate it as
        # a static model at that precision (or at the bits given here), without the schedule
        cfg.model.cpt_config = None
        cfg.model.cpt_schedule = None
        for key, value in QUANT_DEFAULTS.items():
            if getattr(cfg.model, key, None) is None:
                setattr(cfg.model, key, value)
    try:
        QuantRecipe.from_args(cfg.model)  # checks the flags and reads the recipe, before anything is built
    except ValueError as e:
        raise EvaluateError(str(e)) from None
    task = tasks.setup_task(cfg.task)
    _check_data_matches(opts, cfg, task, state["model"])
    model = task.build_model(cfg.model)
    model.load_state_dict(state["model"], strict=True, model_cfg=cfg.model)
    return model, task, cfg


def _glue_task(data: str) -> str | None:
    """The GLUE task named in ``DATA/glue_task.json`` (written by ``fairseq_quant.glue``), if any."""
    stamp = os.path.join(data, STAMP)
    if not os.path.isfile(stamp):
        return None
    with open(stamp) as f:
        return json.load(f).get("task")


def _check_data_matches(opts, cfg, task, model_state) -> None:
    glue = _glue_task(opts.data)
    if glue is not None and get_task(glue).regression != bool(cfg.task.regression_target):
        kind = "regression" if get_task(glue).regression else "classification"
        raise EvaluateError(
            f"--data {opts.data}: {glue} is a {kind} task, but the checkpoint was trained "
            f"{'with' if cfg.task.regression_target else 'without'} --regression-target: another task's checkpoint"
        )
    emb = model_state.get("encoder.sentence_encoder.embed_tokens.weight")
    if emb is not None and emb.shape[0] != len(task.source_dictionary):
        raise EvaluateError(
            f"--data {opts.data}: its dictionary has {len(task.source_dictionary)} symbols but the checkpoint's "
            f"embeddings have {emb.shape[0]}: the data belongs to another task or vocabulary"
        )
    head = cfg.task.get("classification_head_name", "sentence_classification_head")
    out = model_state.get(f"classification_heads.{head}.out_proj.weight")
    if out is None:
        raise EvaluateError(f"--checkpoint {opts.checkpoint}: no classification head {head!r}; "
                            f"was it fine-tuned for sentence prediction?")
    if not cfg.task.regression_target:
        labels = task.label_dictionary
        # fairseq-preprocess pads dictionaries with "madeupword" entries; the task adds "<mask>"
        n_labels = sum(1 for s in labels.symbols[labels.nspecial:] if not s.startswith("madeupword") and s != "<mask>")
        if n_labels != out.shape[0]:
            raise EvaluateError(
                f"--data {opts.data}: {n_labels} labels in label/dict.txt, but the checkpoint's head predicts "
                f"{out.shape[0]} classes: the data belongs to another task"
            )


def _batches(task, split: str, batch_size: int, seed: int, model):
    dataset = task.dataset(split)
    itr = task.get_batch_iterator(
        dataset=dataset,
        max_sentences=batch_size,
        max_positions=model.max_positions(),
        ignore_invalid_inputs=False,
        seed=seed,
    ).next_epoch_itr(shuffle=False)
    return itr


@torch.no_grad()
def calibrate(model, task, split: str, n_batches: int, batch_size: int, seed: int, device,
              skip_padding: bool = False) -> int:
    """Record input ranges on ``n_batches`` of ``split``: active non-dynamic quantizers are reset, measure
    (in training mode, the rest of the model in eval mode) on floating-point activations, then quantize again.
    Each quantizer's estimator estimates each batch's range; the batches' ranges are averaged (running average).
    ``skip_padding``: activations at padding positions are left out of the ranges. Returns the number of batches
    used."""
    qs = [q for q in quantizers(model) if q.active and not q.spec.dynamic]
    if not qs:
        return 0
    task.load_dataset(split)
    saved = {q: q.spec for q in qs}
    for q in qs:
        q.reset_ranges()
        q.set_spec(q.spec.replace(mode="measure"))
        q.train()
    used = 0
    head = task.cfg.classification_head_name
    for sample in _batches(task, split, batch_size, seed, model):
        if used >= n_batches:
            break
        sample = _to(sample, device)
        tokens = sample["net_input"]["src_tokens"]
        for q in qs:
            q.token_mask = tokens.ne(task.source_dictionary.pad()) if skip_padding else None
        model(**sample["net_input"], features_only=True, classification_head_name=head)
        used += 1
    for q in qs:
        q.token_mask = None
        q.set_spec(saved[q])
        q.eval()
    return used


def _to(sample, device):
    from fairseq import utils

    return utils.move_to_cuda(sample, device) if device.type == "cuda" else sample


@torch.no_grad()
def predict(model, task, split: str, batch_size: int, seed: int, device):
    """Predictions and targets over ``split``: ``(preds, targets)`` numpy arrays (class ids, or values)."""
    task.load_dataset(split)
    head = task.cfg.classification_head_name
    preds, targets = [], []
    for sample in _batches(task, split, batch_size, seed, model):
        sample = _to(sample, device)
        logits = model(**sample["net_input"], features_only=True, classification_head_name=head)[0].float()
        target = model.get_targets(sample, [logits]).view(-1)
        if task.cfg.regression_target:
            preds.append(logits.view(-1).cpu())
            targets.append(target.float().cpu())
        else:
            preds.append(logits.argmax(dim=-1).cpu())
            targets.append(target.cpu())
    return torch.cat(preds).numpy(), torch.cat(targets).numpy()


def evaluate(opts: argparse.Namespace) -> dict:
    """Run an evaluation described by ``opts`` (from ``build_parser``); returns the result dictionary."""
    _check_inputs(opts)
    device = torch.device("cuda" if torch.cuda.is_available() and not opts.cpu else "cpu")
    model, task, cfg = load_model_and_task(opts)
    model.to(device).eval()
    used = calibrate(model, task, opts.calib_split, opts.calib_batches, opts.batch_size, opts.seed, device,
                     opts.calib_skip_padding) if opts.calib_batches > 0 else 0
    adaround = run_adaround(model, task, opts, device) if opts.adaround else None
    deployed = run_deploy(model) if opts.backend == "triton" else None
    preds, targets = predict(model, task, opts.split, opts.batch_size, opts.seed, device)
    if task.cfg.regression_target:
        result = regression_metrics(preds, targets)
    else:
        # label ids -> label strings' order does not matter for these metrics
        result = classification_metrics(preds, targets)
    glue = _glue_task(opts.data)
    if glue is not None:
        result = {"task": glue, "metric": task_metric(glue)[0], **result}
    recipe = model.quant_recipe
    result.update(
        split=opts.split,
        n=int(len(targets)),
        quant=describe(recipe),
        calib_batches=used,
        checkpoint=opts.checkpoint,
    )
    result["backend"] = opts.backend
    if deployed is not None:
        result["deployed_layers"] = deployed
    if adaround is not None:
        result["quant"] += "+AdaRound"
        result["adaround_mse_ratio"] = adaround
    result["tag"] = opts.tag
    return result


def run_deploy(model) -> int:
    """``--backend triton``: the model's quantized linear layers in real INT8/FP8; returns how many."""
    from .kernels import DeployError, deploy

    try:
        report = deploy(model)
    except DeployError as e:
        raise EvaluateError(f"--backend triton: {e}") from None
    return sum(1 for r in report.values() if not r.startswith("kept"))


def run_adaround(model, task, opts, device) -> float:
    """AdaRound the model's quantized weights on ``--adaround-batches`` batches of ``--calib-split`` (after the
    input ranges are calibrated, so W4A8 fits with quantized inputs). Returns the mean over layers of the
    reconstruction MSE of AdaRound relative to round-to-nearest."""
    from .ptq.adaround import adaround_model

    w = model.quant_recipe.weight
    if w.mode != "quantize" or not w.is_int:
        raise EvaluateError("--adaround rounds quantized integer weights: give --quantw (with --formatw int)")
    task.load_dataset(opts.calib_split)
    head = task.cfg.classification_head_name
    batches = []
    for sample in _batches(task, opts.calib_split, opts.batch_size, opts.seed, model):
        if len(batches) >= opts.adaround_batches:
            break
        batches.append(_to(sample, device)["net_input"])
    # layers without an active weight quantizer (e.g. an off classifier) keep their weights
    skip = {n for n, m in model.named_modules() if getattr(m, "weight_quant", None) is not None
            and not m.weight_quant.active}
    try:
        reports = adaround_model(
            model, batches, lambda b: model(**b, features_only=True, classification_head_name=head),
            bits=w.bits, signed=w.signed, symmetric=w.symmetric, per_channel=w.per_channel,
            iters=opts.adaround_iters, seed=opts.seed, skip=lambda name: name in skip, log=logger.info)
    except ValueError as e:
        raise EvaluateError(f"--adaround: {e}") from None
    ratios = [r["mse_adaround"] / r["mse_nearest"] for r in reports.values() if r["mse_nearest"] > 0]
    return sum(ratios) / max(len(ratios), 1)


def describe(recipe: QuantRecipe) -> str:
    """Short name of a recipe: ``W8A8``, ``W4A32``, ``FP32``, ``W:fp8_e4m3 A:posit8_1``, with ``+act,norm`` for
    the operations beyond GEMMs and ``+points`` when a recipe names points."""
    def name(spec):
        if spec.mode != "quantize":
            return "32"
        return str(spec.bits) if spec.is_int else ":" + spec.grid_name

    w, a = name(recipe.weight), name(recipe.input)
    text = "FP32" if w == a == "32" else f"W{w}A{a}" if ":" not in w + a else f"W{w} A{a}"
    extra = [o for o in recipe.ops if o != "gemm"]
    if extra and recipe.input.mode == "quantize":
        text += "+" + ",".join(extra)
    if recipe.points:
        text += "+points"
    return text


CSV_COLUMNS = ("tag", "task", "metric", "accuracy", "f1", "mcc", "pearson", "spearman", "quant", "calib_batches",
               "split", "n", "checkpoint")


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
    # force: importing fairseq (its wav2vec2 classification module) already configured the root logger at DEBUG
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.WARNING,
                        stream=sys.stderr, force=True)
    parser = build_parser()
    opts = parser.parse_args(argv)
    try:
        result = evaluate(opts)
        if opts.csv:
            append_csv(opts.csv, result)
    except EvaluateError as e:
        parser.error(str(e))
    print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.items()}), flush=True)


if __name__ == "__main__":
    cli_main()




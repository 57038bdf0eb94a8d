"""Loading a sentence-prediction checkpoint for evaluation, calibration or export, and running it over a split.

``load_model_and_task(checkpoint, data, overrides)`` builds the checkpoint's model as ``quant_roberta*`` (plain
``roberta*`` checkpoints included: same parameters) with the quantization flags in ``overrides`` replacing what it
was trained with, on the binarized ``data``, after checking that the data belong to the checkpoint's task. The
functions below it batch a split as fairseq does and score predictions with the task's metric. Used by
evaluate.py, the sensitivity sweep and the ONNX exporter; errors are ``LoadError`` naming the flag or file.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping

import numpy as np
import torch
from fairseq import checkpoint_utils, tasks
from omegaconf import open_dict

from ..data.glue import STAMP, get_task, task_metric
from ..data.metrics import classification_metrics, regression_metrics
from ..plugin.options import QUANT_DEFAULTS, recipe_from_args

__all__ = [
    "LoadError",
    "batches",
    "check_data_paths",
    "glue_task",
    "load_model_and_task",
    "official_metric",
    "predict",
    "quant_overrides",
    "score",
    "to_device",
]


class LoadError(ValueError):
    """A checkpoint or data directory that cannot be loaded as asked; the message names the flag or file."""


def check_data_paths(checkpoint: str, data: str, splits: list[str]) -> None:
    """``checkpoint`` is a file and ``data`` binarized sentence-prediction data with every split in ``splits``
    (the flags named in the message are ``--checkpoint``, ``--data``, ``--split``/``--calib-split``)."""
    if not os.path.isfile(checkpoint):
        raise LoadError(f"--checkpoint: no such file: {checkpoint}")
    if not os.path.isfile(os.path.join(data, "input0", "dict.txt")):
        raise LoadError(f"--data: {data} is not binarized sentence-prediction data "
                        f"(expected {os.path.join(data, 'input0', 'dict.txt')})")
    for split in splits:
        if not os.path.isfile(os.path.join(data, "input0", f"{split}.idx")):
            raise LoadError(f"--split/--calib-split: {data} has no split {split!r} "
                            f"(expected {os.path.join(data, 'input0', split + '.idx')})")


def quant_overrides(opts) -> dict:
    """The quantization options present on ``opts`` (a namespace parsed with ``add_quant_args(defaults=False)``,
    which holds only the flags given); quantizing a point overrides measuring it."""
    given = {k: getattr(opts, k) for k in QUANT_DEFAULTS if hasattr(opts, k)}
    for q, m in (("quantw", "measurew"), ("quantin", "measurein")):
        if given.get(q):
            given.setdefault(m, False)
    return given


def load_model_and_task(checkpoint: str, data: str, overrides: Mapping | None = None):
    """``(model, task, cfg)``: the sentence-prediction ``checkpoint`` built as a quant_roberta model on ``data``,
    with the quantization options ``overrides`` (``quant_overrides``) replacing the checkpoint's. A cyclic-precision
    checkpoint is built at its saved evaluation precision, without the schedule. The model is on the CPU, in
    training mode (fairseq's default). Raises LoadError for a file that is not a RoBERTa sentence-prediction
    checkpoint, bad quantization flags, or data of another task or vocabulary."""
    overrides = dict(overrides or {})
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(checkpoint)
    except Exception as e:  # a file torch cannot read: its own message says why
        raise LoadError(f"--checkpoint {checkpoint}: not a readable fairseq checkpoint ({type(e).__name__}: {e})") \
            from None
    cfg = state.get("cfg")
    if cfg is None or cfg.get("model") is None:
        raise LoadError(f"--checkpoint {checkpoint}: no model configuration inside; is it a fairseq checkpoint?")
    arch = getattr(cfg.model, "_name", None) or getattr(cfg.model, "arch", None)
    if not arch or not (arch.startswith("roberta") or arch.startswith("quant_roberta")):
        raise LoadError(f"--checkpoint {checkpoint}: architecture {arch!r} is not a RoBERTa "
                        f"(expected roberta* or quant_roberta*)")
    if cfg.task.get("_name") != "sentence_prediction":
        raise LoadError(f"--checkpoint {checkpoint}: task {cfg.task.get('_name')!r}; only sentence_prediction "
                        f"checkpoints (a classification or regression head) are supported")
    quant_arch = arch if arch.startswith("quant_") else "quant_" + arch
    from fairseq.models import ARCH_MODEL_REGISTRY

    if quant_arch not in ARCH_MODEL_REGISTRY:
        quant_arch = "quant_roberta"
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
        cfg.task.data = data
        # a cyclic-precision checkpoint was saved with its evaluation precision in bitsw/bitsin: build it as a
        # static model at that precision (or at the bits given here), without the schedule
        cfg.model.cpt_config = None
        cfg.model.cpt_schedule = None
        for key, value in QUANT_DEFAULTS.items():
            if getattr(cfg.model, key, None) is None:
                setattr(cfg.model, key, value)
    try:
        recipe_from_args(cfg.model)  # checks the flags and reads the recipe, before anything is built
    except ValueError as e:
        raise LoadError(str(e)) from None
    task = tasks.setup_task(cfg.task)
    _check_data_matches(checkpoint, data, cfg, task, state["model"])
    model = task.build_model(cfg.model)
    model.load_state_dict(state["model"], strict=True, model_cfg=cfg.model)
    return model, task, cfg


def glue_task(data: str) -> str | None:
    """The GLUE task named in ``DATA/glue_task.json`` (written by ``fairseq-quant-glue``), if any."""
    stamp = os.path.join(data, STAMP)
    if not os.path.isfile(stamp):
        return None
    with open(stamp) as f:
        return json.load(f).get("task")


def _check_data_matches(checkpoint: str, data: str, cfg, task, model_state) -> None:
    glue = glue_task(data)
    if glue is not None and get_task(glue).regression != bool(cfg.task.regression_target):
        kind = "regression" if get_task(glue).regression else "classification"
        raise LoadError(
            f"--data {data}: {glue} is a {kind} task, but the checkpoint was trained "
            f"{'with' if cfg.task.regression_target else 'without'} --regression-target: another task's checkpoint"
        )
    emb = model_state.get("encoder.sentence_encoder.embed_tokens.weight")
    if emb is not None and emb.shape[0] != len(task.source_dictionary):
        raise LoadError(
            f"--data {data}: its dictionary has {len(task.source_dictionary)} symbols but the checkpoint's "
            f"embeddings have {emb.shape[0]}: the data belongs to another task or vocabulary"
        )
    head = cfg.task.get("classification_head_name", "sentence_classification_head")
    out = model_state.get(f"classification_heads.{head}.out_proj.weight")
    if out is None:
        raise LoadError(f"--checkpoint {checkpoint}: no classification head {head!r}; "
                        f"was it fine-tuned for sentence prediction?")
    if not cfg.task.regression_target:
        labels = task.label_dictionary
        # fairseq-preprocess pads dictionaries with "madeupword" entries; the task adds "<mask>"
        n_labels = sum(1 for s in labels.symbols[labels.nspecial:] if not s.startswith("madeupword") and s != "<mask>")
        if n_labels != out.shape[0]:
            raise LoadError(
                f"--data {data}: {n_labels} labels in label/dict.txt, but the checkpoint's head predicts "
                f"{out.shape[0]} classes: the data belongs to another task"
            )


def batches(task, split: str, batch_size: int, seed: int, max_positions):
    """fairseq's batches of ``split`` (loaded if needed), in order: at most ``batch_size`` sentences each, padded
    as the task pads them (right, with the dictionary's pad index)."""
    task.load_dataset(split)
    return task.get_batch_iterator(
        dataset=task.dataset(split),
        max_sentences=batch_size,
        max_positions=max_positions,
        ignore_invalid_inputs=False,
        seed=seed,
    ).next_epoch_itr(shuffle=False)


def to_device(sample, device: torch.device):
    """``sample`` (a fairseq batch) on ``device``."""
    from fairseq import utils

    return utils.move_to_cuda(sample, device) if device.type == "cuda" else sample


@torch.no_grad()
def predict(logits_of: Callable[[torch.Tensor], torch.Tensor], task, split: str, batch_size: int, seed: int,
            max_positions, device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Run ``logits_of(src_tokens) -> (batch, classes)`` over ``split``: ``(preds, targets, seconds)``, numpy
    arrays of class ids (or regression values) and the wall time of each call (the forward alone, not the
    batching)."""
    preds, targets, seconds = [], [], []
    for sample in batches(task, split, batch_size, seed, max_positions):
        sample = to_device(sample, device or torch.device("cpu"))
        start = time.perf_counter()
        logits = logits_of(sample["net_input"]["src_tokens"]).float()
        seconds.append(time.perf_counter() - start)
        target = sample["target"].view(-1)
        if task.cfg.regression_target:
            preds.append(logits.view(-1).cpu())
            targets.append(target.float().cpu())
        else:
            preds.append(logits.argmax(dim=-1).cpu())
            targets.append(target.cpu())
    return torch.cat(preds).numpy(), torch.cat(targets).numpy(), seconds


def score(preds: np.ndarray, targets: np.ndarray, regression: bool) -> dict:
    """Every metric of the task kind: accuracy, f1, mcc (classification) or pearson, spearman (regression)."""
    return regression_metrics(preds, targets) if regression else classification_metrics(preds, targets)


def official_metric(data: str, regression: bool) -> str:
    """The metric that counts for ``data``: the official GLUE metric where the data were made by
    ``fairseq-quant-glue`` (``glue_task.json``: mcc for CoLA, f1 for MRPC ...), otherwise accuracy, or Pearson
    correlation for regression."""
    glue = glue_task(data)
    return task_metric(glue)[0] if glue else "pearson" if regression else "accuracy"

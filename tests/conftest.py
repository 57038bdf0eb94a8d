"""Shared fixtures: tiny binarized sentence-prediction data and real fairseq-train runs on it (the helpers they
use, and every test shares, are in ``helpers.py``)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # the Triton kernels run in Triton's CPU interpreter (read when the kernels are defined, so set before any
    # test imports them); on a GPU they are compiled
    os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # scripts/test.sh starts one xdist worker per core: a second torch thread per worker only oversubscribes the
    # cores, which made small in-process models 10-100x slower
    torch.set_num_threads(1)

from helpers import PLAIN_ROBERTA, binarize, fairseq_train, rule_rows  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Binarized tiny task: splits train (256) and valid (64)."""
    root = tmp_path_factory.mktemp("tiny_data")
    return binarize(root, {"train": rule_rows(256, 0), "valid": rule_rows(64, 1)})


@pytest.fixture(scope="session")
def qat_run(tiny_data, tmp_path_factory) -> Path:
    """A real W8A8 quantization-aware fairseq-train run (12 updates); returns its save dir."""
    save = tmp_path_factory.mktemp("qat_run")
    proc = fairseq_train(tiny_data, save, "--max-update", "12", "--quantw", "--quantin", "--bitsw", "8",
                         "--bitsin", "8")
    (save / "train.log").write_text(proc.stdout + proc.stderr)
    return save


@pytest.fixture(scope="session")
def plain_roberta_run(tiny_data, tmp_path_factory) -> Path:
    """fairseq's own ``roberta`` architecture (no quantization), fine-tuned 4 updates; returns its save dir."""
    save = tmp_path_factory.mktemp("plain_roberta")
    fairseq_train(tiny_data, save, "--max-update", "4", *PLAIN_ROBERTA)
    return save

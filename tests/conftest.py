"""Shared fixtures: tiny binarized sentence-prediction data and a real fairseq-train run on it."""
from __future__ import annotations

import os
import random
import subprocess
import sys
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

from fairseq import options  # noqa: E402
from fairseq_cli import preprocess  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = REPO / "fairseq_quant"


def binarize(root: Path, splits: dict[str, list[tuple[str, str]]]) -> Path:
    """Write ``{split: [(sentence, label), ...]}`` as fairseq sentence-prediction binaries under ``root/bin``."""
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        (raw / f"{split}.input0").write_text("".join(s + "\n" for s, _ in rows))
        (raw / f"{split}.label").write_text("".join(lab + "\n" for _, lab in rows))
    others = [s for s in splits if s != "train"]
    for field in ("input0", "label"):
        flags = ["--only-source", "--workers", "1", "--destdir", str(root / "bin" / field),
                 "--trainpref", str(raw / f"train.{field}")]
        if others:
            flags += ["--validpref", ",".join(str(raw / f"{s}.{field}") for s in others)]
        preprocess.main(options.get_preprocessing_parser().parse_args(flags))
    return root / "bin"


def rule_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """Sentences over 20 words; label 1 when 'w0' occurs more often than 'w1' (learnable, with some noise)."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(20)]
    rows = []
    for _ in range(n):
        sent = rng.choices(words, k=rng.randint(4, 12))
        label = int(sent.count("w0") > sent.count("w1"))
        rows.append((" ".join(sent), str(label)))
    return rows


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Binarized tiny task: splits train (256) and valid (64)."""
    root = tmp_path_factory.mktemp("tiny_data")
    return binarize(root, {"train": rule_rows(256, 0), "valid": rule_rows(64, 1)})


TINY_TRAIN = [
    "--user-dir", str(PLUGIN_DIR), "--task", "sentence_prediction", "--num-classes", "2",
    "--arch", "quant_roberta_tiny", "--max-positions", "32", "--criterion", "sentence_prediction",
    "--init-token", "0", "--separator-token", "2", "--optimizer", "adam", "--lr", "1e-3",
    "--batch-size", "16", "--cpu", "--seed", "1", "--num-workers", "0", "--no-progress-bar", "--log-format", "simple",
    "--log-interval", "1", "--best-checkpoint-metric", "accuracy", "--maximize-best-checkpoint-metric",
    "--no-epoch-checkpoints",
]


def fairseq_train(data: Path, save_dir: Path, *flags: str, timeout: int = 300, env: dict | None = None
                  ) -> subprocess.CompletedProcess:
    """Run the real ``fairseq-train`` (as a subprocess, like a user) on ``data``; raises with its output on failure.
    ``env``: extra environment variables."""
    cmd = [sys.executable, "-m", "fairseq_cli.train", str(data), "--save-dir", str(save_dir), *TINY_TRAIN, *flags]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"fairseq-train failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def run_evaluate(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``scripts/evaluate.py`` as a user would (``env``: extra environment variables)."""
    cmd = [sys.executable, str(REPO / "scripts" / "evaluate.py"), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"evaluate.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def qat_run(tiny_data, tmp_path_factory) -> Path:
    """A real W8A8 quantization-aware fairseq-train run (12 updates); returns its save dir."""
    save = tmp_path_factory.mktemp("qat_run")
    proc = fairseq_train(tiny_data, save, "--max-update", "12", "--quantw", "--quantin", "--bitsw", "8",
                         "--bitsin", "8")
    (save / "train.log").write_text(proc.stdout + proc.stderr)
    return save


PLAIN_ROBERTA = ["--arch", "roberta", "--encoder-layers", "1", "--encoder-embed-dim", "32",
                 "--encoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2"]


@pytest.fixture(scope="session")
def plain_roberta_run(tiny_data, tmp_path_factory) -> Path:
    """fairseq's own ``roberta`` architecture (no quantization), fine-tuned 4 updates; returns its save dir."""
    save = tmp_path_factory.mktemp("plain_roberta")
    fairseq_train(tiny_data, save, "--max-update", "4", *PLAIN_ROBERTA)
    return save

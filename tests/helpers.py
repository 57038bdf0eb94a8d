"""What the tests share (the one module they import helpers from): tiny dictionaries, args and quant_roberta models,
tiny binarized data, a real fairseq-train and evaluate.py run as a user runs them, and small runners."""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from fairseq import options
from fairseq.data import Dictionary
from fairseq_cli import preprocess

import fairseq_quant  # noqa: F401  (registers the model)
from fairseq_quant.plugin.quant_roberta import QuantRobertaModel, quant_roberta_tiny_architecture

VOCAB = 40


def tiny_dictionary(n: int = VOCAB) -> Dictionary:
    d = Dictionary()
    for i in range(n):
        d.add_symbol(f"w{i}")
    return d


def tiny_args(flags: list[str] = ()) -> argparse.Namespace:
    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)  # as fairseq parses model args
    QuantRobertaModel.add_args(parser)
    args = parser.parse_args(list(flags))
    args.max_positions = 64
    args.dropout = 0.0
    args.attention_dropout = 0.0
    quant_roberta_tiny_architecture(args)
    return args


def tiny_model(flags: list[str] = (), num_classes: int = 2, seed: int = 0, **training_args) -> QuantRobertaModel:
    """A tiny quant_roberta with a 2-class head; ``training_args`` (e.g. ``max_update=30``) are set on its args."""
    torch.manual_seed(seed)
    args = tiny_args(flags)
    for key, value in training_args.items():
        setattr(args, key, value)
    task = SimpleNamespace(source_dictionary=tiny_dictionary(), max_positions=lambda: 64)
    model = QuantRobertaModel.build_model(args, task)
    model.register_classification_head("sentence_classification_head", num_classes=num_classes)
    return model


def tiny_batch(batch: int = 4, length: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, VOCAB + 4, (batch, length), generator=g)
    tokens[:, 0] = 0  # <s>
    tokens[-1, -3:] = 1  # some padding
    return tokens


HEAD = "sentence_classification_head"


def calibrated(flags: list[str], seed: int = 0) -> QuantRobertaModel:
    """``tiny_model(flags)`` whose running ranges three training-mode passes recorded, in evaluation mode."""
    model = tiny_model(flags, seed=seed)
    model.train()
    with torch.no_grad():
        for s in range(3):
            model(tiny_batch(seed=s), features_only=True, classification_head_name=HEAD)
    return model.eval()


def run_in_process(capsys, cli_main, *argv: str) -> tuple[int, str, str]:
    """A command's ``cli_main`` in this process (its code path without the interpreter start-up): (exit code,
    stdout, stderr)."""
    try:
        cli_main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def json_line(out: str) -> dict:
    """The one JSON line a command printed."""
    import json

    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert len(lines) == 1, out
    return json.loads(lines[0])


REPO = Path(__file__).resolve().parents[1]  # the repository (tests/ is in it)
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


def script_refuses(script: str, *args: str, out: Path, messages: tuple[str, ...]) -> None:
    """``bash scripts/SCRIPT ARGS --out OUT`` as a user runs it must stop with a usage error (exit 2) whose
    stderr holds every one of ``messages``, before anything runs (``OUT`` is not created)."""
    proc = subprocess.run(["bash", str(REPO / "scripts" / script), *args, "--out", str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    for message in messages:
        assert message in proc.stderr, proc.stderr
    assert not out.exists()


def run_evaluate(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``scripts/evaluate.py`` as a user would (``env``: extra environment variables)."""
    cmd = [sys.executable, str(REPO / "scripts" / "evaluate.py"), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"evaluate.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


PLAIN_ROBERTA = ["--arch", "roberta", "--encoder-layers", "1", "--encoder-embed-dim", "32",
                 "--encoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2"]



def accuracy_by_hand(checkpoint: str, data: str, flags: list[str] = (), calib_batches: int = 0,
                     skip_padding: bool = False) -> tuple[float, bool]:
    """``(accuracy, quantized)`` of ``checkpoint`` on ``data``'s valid split, computed here without evaluate.py's
    metric code: argmax of the logits against the targets, over fairseq's own batches. ``flags``: quantization flags
    as evaluate.py takes them, calibrated on ``calib_batches`` as it does. ``quantized``: whether the logits differ
    from the same model with every quantizer off (so a metric asserted against this one fails if quantization were
    silently off)."""
    from fairseq_quant.cli.evaluate import build_parser
    from fairseq_quant.core.recipe import QuantRecipe
    from fairseq_quant.ptq.calibrate import calibrate
    from fairseq_quant.ptq.loader import batches, load_model_and_task, quant_overrides

    opts = build_parser().parse_args(["--checkpoint", checkpoint, "--data", data, *flags])
    model, task, _ = load_model_and_task(checkpoint, data, quant_overrides(opts))
    model.eval()
    if calib_batches:
        calibrate(model, task, "train", calib_batches, 32, 1, torch.device("cpu"), skip_padding)
    head = task.cfg.classification_head_name
    right = total = 0
    differs = False
    fp32 = QuantRecipe.from_dict({"ops": []})
    recipe = model.quant_recipe
    with torch.no_grad():
        for sample in batches(task, "valid", 32, 1, model.max_positions()):
            tokens = sample["net_input"]["src_tokens"]
            logits = model(tokens, features_only=True, classification_head_name=head)[0]
            right += int((logits.argmax(-1) == sample["target"].view(-1)).sum())
            total += tokens.shape[0]
            model.set_quant_recipe(fp32)
            plain = model(tokens, features_only=True, classification_head_name=head)[0]
            model.set_quant_recipe(recipe)
            differs |= not torch.equal(plain, logits)
    return right / total, differs

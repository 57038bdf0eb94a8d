"""Tests for ``patches/bf16_without_tpu.py``: ``--bf16`` without torch_xla trains on the CPU/CUDA device, not TPU."""
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fairseq import options, tasks
from fairseq import utils as fairseq_utils
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.trainer import Trainer
from fairseq_cli import preprocess
from fairseq_quant_patches import bf16_without_tpu

import fairseq_quant  # noqa: F401  (applies every patch in order first: bf16's wrapper is the outermost)

PLUGIN_DIR = Path(__file__).resolve().parents[2] / "fairseq_quant"
TINY_ROBERTA = [
    "--task", "sentence_prediction", "--num-classes", "2", "--arch", "roberta", "--encoder-layers", "1",
    "--encoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2",
    "--max-positions", "32", "--criterion", "sentence_prediction", "--optimizer", "adam", "--lr", "1e-4",
    "--batch-size", "8",
]

pytestmark = pytest.mark.skipif(fairseq_utils.xm is not None, reason="the bug needs a machine without torch_xla")

bf16_without_tpu.apply()
PATCHED = options.parse_args_and_arch
ORIGINAL = PATCHED.__wrapped__


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sentence-classification data as fairseq's sentence_prediction task reads it: input0/ and label/, binarised."""
    root = tmp_path_factory.mktemp("bf16_data")
    rng = random.Random(0)
    words = [f"w{i}" for i in range(20)]
    for split, n in (("train", 240), ("valid", 40)):
        sentences = [" ".join(rng.choices(words, k=rng.randint(3, 10))) for _ in range(n)]
        (root / f"{split}.input0").write_text("\n".join(sentences) + "\n")
        (root / f"{split}.label").write_text("\n".join(str(rng.randint(0, 1)) for _ in range(n)) + "\n")
    for field in ("input0", "label"):
        args = options.get_preprocessing_parser().parse_args([
            "--only-source", "--workers", "1", "--destdir", str(root / field),
            "--trainpref", str(root / f"train.{field}"), "--validpref", str(root / f"valid.{field}"),
        ])
        preprocess.main(args)
    return root


def build_trainer(parse_args_and_arch, data_dir: Path) -> Trainer:
    """Parse ``--cpu --bf16`` training flags with ``parse_args_and_arch`` and build fairseq's Trainer from them."""
    args = parse_args_and_arch(options.get_training_parser(), [str(data_dir), *TINY_ROBERTA, "--cpu", "--bf16"])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    return Trainer(cfg, task, task.build_model(cfg.model), task.build_criterion(cfg.criterion))


def parse(*flags: str, parse_known: bool = False):
    """Training flags for the tiny model plus ``flags``, through the (patched) ``options.parse_args_and_arch``."""
    argv = ["unused_data_dir", *TINY_ROBERTA, *flags]
    return options.parse_args_and_arch(options.get_training_parser(), argv, parse_known=parse_known)


def test_unpatched_cpu_bf16_trainer_crashes_on_missing_xla(data_dir: Path) -> None:
    with pytest.raises(AttributeError, match="xla_device"):
        build_trainer(ORIGINAL, data_dir)


def test_patched_cpu_bf16_trainer_runs_on_cpu_in_bf16(data_dir: Path) -> None:
    trainer = build_trainer(PATCHED, data_dir)
    assert trainer.device == torch.device("cpu")
    assert not trainer.tpu
    assert not trainer.cfg.distributed_training.tpu and not trainer.cfg.optimizer.tpu
    assert {p.dtype for p in trainer.model.parameters()} == {torch.bfloat16}


def test_explicit_tpu_is_kept() -> None:
    assert parse("--bf16", "--tpu").tpu


def test_bf16_still_implies_tpu_where_torch_xla_is_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fairseq_utils, "xm", object())
    assert parse("--bf16").tpu


@pytest.mark.parametrize("flag", ["--bf16", "--memory-efficient-bf16"])
def test_bf16_without_xla_parses_to_no_tpu(flag: str) -> None:
    assert ORIGINAL(options.get_training_parser(), ["unused_data_dir", *TINY_ROBERTA, flag]).tpu
    args = parse(flag)
    assert args.bf16 and not args.tpu


def test_parse_known_result_has_tpu_reset() -> None:
    args, extra = parse("--bf16", "--not-a-fairseq-flag", parse_known=True)
    assert args.bf16 and not args.tpu and extra == ["--not-a-fairseq-flag"]


def test_apply_is_idempotent() -> None:
    bf16_without_tpu.apply()
    assert options.parse_args_and_arch is PATCHED
    # wrapped exactly once: the function inside carries no bf16 fix (other patches may sit below it)
    assert PATCHED.__wrapped__ is ORIGINAL and not hasattr(ORIGINAL, bf16_without_tpu._PATCHED)


def test_fairseq_train_cpu_bf16_with_plugin_saves_checkpoint(data_dir: Path, tmp_path: Path) -> None:
    save_dir = tmp_path / "save"
    command = [
        sys.executable, "-m", "fairseq_cli.train", str(data_dir), *TINY_ROBERTA, "--max-update", "2",
        "--cpu", "--bf16", "--save-dir", str(save_dir), "--user-dir", str(PLUGIN_DIR), "--no-progress-bar",
    ]
    result = subprocess.run(command, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert log.count("--bf16 without torch_xla") == 1
    assert "num_updates 2" in log
    assert (save_dir / "checkpoint_last.pt").is_file()

"""fairseq checkpoints load with ``weights_only=True`` through fairseq-quant's allowlist; other files are refused.

The checkpoints are real, written by fairseq for a one-layer RoBERTa on the tiny sentence-prediction data of
``conftest.tiny_data``: a modern one (``cfg``) by fairseq-train in this process; an old-style one like the
published ``roberta.base`` (``args`` Namespace, ``cfg`` None, torch's legacy non-zip format) re-saved from it;
and the one that ``fairseq-train --restore-file <old-style> --user-dir fairseq_quant`` writes in a fresh
process, with a best-checkpoint metric that fairseq stores as a numpy scalar.
"""
import argparse
import builtins
import os
import pickle
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from fairseq import checkpoint_utils, options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.distributed import utils as distributed_utils
from fairseq_cli import train
from fairseq_quant_patches import checkpoint_weights_only

import fairseq_quant  # noqa: F401  (applies the patches)
from fairseq_quant.plugin.checkpoint import (
    FAIRSEQ_SAFE_GLOBALS,
    UnsafeCheckpointError,
    load_checkpoint,
    raising_unsafe_checkpoint_error,
)

REPO = Path(__file__).resolve().parents[2]  # the repository
TINY_ROBERTA = [
    "--task", "sentence_prediction", "--num-classes", "2", "--arch", "roberta", "--encoder-layers", "1",
    "--encoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2",
    "--max-positions", "32", "--criterion", "sentence_prediction", "--optimizer", "adam", "--lr", "1e-4",
    "--batch-size", "8", "--max-update", "2", "--cpu", "--num-workers", "0", "--no-progress-bar", "--seed", "1",
]  # fmt: skip
HEAD = "sentence_classification_head"
EMBEDDINGS = "encoder.sentence_encoder.embed_tokens.weight"


@dataclass(frozen=True)
class Checkpoints:
    data: Path
    modern: Path  # written by fairseq-train: ``cfg`` (a plain container of the OmegaConf config), ``args`` None
    old_style: Path  # ``args`` Namespace, ``cfg`` None, legacy format: like the published roberta.base
    finetuned: Path  # fine-tuned from old_style by fairseq-train --restore-file; numpy best metric
    finetune_log: str


def _name(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


@pytest.fixture(scope="module")
def checkpoints(tiny_data, tmp_path_factory) -> Checkpoints:
    tmp = tmp_path_factory.mktemp("fairseq_checkpoints")
    pretrain = [str(tiny_data), *TINY_ROBERTA, "--save-dir", str(tmp / "pretrain")]
    pretrain += ["--best-checkpoint-metric", "accuracy", "--maximize-best-checkpoint-metric"]
    args = options.parse_args_and_arch(options.get_training_parser(), input_args=pretrain)
    distributed_utils.call_main(convert_namespace_to_omegaconf(args), train.main)
    modern = tmp / "pretrain" / "checkpoint_best.pt"

    state = load_checkpoint(modern)
    state["args"], state["cfg"] = args, None
    old_style = tmp / "roberta_base_like.pt"
    torch.save(state, old_style, _use_new_zipfile_serialization=False)

    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    finetune = subprocess.run(
        [sys.executable, "-m", "fairseq_cli.train", str(tiny_data), *TINY_ROBERTA,
         "--user-dir", str(REPO / "fairseq_quant"), "--save-dir", str(tmp / "finetune"),
         "--restore-file", str(old_style), "--reset-optimizer", "--reset-dataloader", "--reset-meters",
         "--report-acc-and-f1", "--best-checkpoint-metric", "acc_and_f1", "--maximize-best-checkpoint-metric"],
        cwd=tmp, env=dict(env, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    log = finetune.stdout + finetune.stderr
    assert finetune.returncode == 0, log[-4000:]
    return Checkpoints(tiny_data, modern, old_style, tmp / "finetune" / "checkpoint_best.pt", log)


class RunsCode:
    """A pickle payload that, if unpickled by plain pickle, calls ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.fixture(params=["os.system", "builtins.exec"])
def crafted(request, tmp_path):
    """A torch.save'd dict shaped like a checkpoint whose unpickling would create a marker file."""
    marker = tmp_path / "MARKER"
    if request.param == "os.system":
        payload, refused = RunsCode(os.system, f"touch {marker}"), _name(os.system)
    else:
        payload, refused = RunsCode(builtins.exec, f"open({str(marker)!r}, 'w').close()"), "builtins.exec"
    path = tmp_path / "crafted.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "extra_state": payload}, path)
    return path, marker, refused


@pytest.fixture
def nothing_allowlisted():
    """torch's weights_only defaults alone, for the duration of a test."""
    ours = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(ours)


def _globals_needed_to_load(path: Path) -> set:
    """Starting from torch's defaults, allow each global torch refuses (if it is ours) until ``path`` loads."""
    ours = {_name(g): g for g in FAIRSEQ_SAFE_GLOBALS}
    needed = set()
    while True:
        try:
            with raising_unsafe_checkpoint_error(path):
                torch.load(path, map_location="cpu", weights_only=True)
            return needed
        except UnsafeCheckpointError as error:
            missing = [name for name in error.unsafe_globals if name not in ours]
            assert not missing, f"fairseq wrote {missing}, not on the allowlist"
            new = {ours[name] for name in error.unsafe_globals} - needed
            assert new, f"allowed {error.unsafe_globals} but torch still refuses them"
            needed |= new
            torch.serialization.add_safe_globals(list(new))


def test_fairseq_train_restored_the_old_style_checkpoint(checkpoints):
    assert f"Loaded checkpoint {checkpoints.old_style}" in checkpoints.finetune_log


@pytest.mark.parametrize("which", ["modern", "old_style"])
def test_fairseq_checkpoint_needs_only_namespace_beyond_torch_defaults(checkpoints, nothing_allowlisted, which):
    # modern: cfg.model is a Namespace, as RoBERTa is configured through add_args; old_style: args
    assert _globals_needed_to_load(getattr(checkpoints, which)) == {argparse.Namespace}


def test_fairseq_checkpoint_with_numpy_best_metric_needs_exactly_the_allowlist(checkpoints, nothing_allowlisted):
    assert _globals_needed_to_load(checkpoints.finetuned) == set(FAIRSEQ_SAFE_GLOBALS)


def test_fairseq_train_stores_numpy_best_metric(checkpoints):
    extra_state = load_checkpoint(checkpoints.finetuned)["extra_state"]
    assert type(extra_state["best"]) is np.float64
    assert type(extra_state["val_loss"]) is np.float64


@pytest.mark.parametrize("which", ["modern", "old_style", "finetuned"])
def test_fairseq_loader_loads_checkpoint_with_weights_only(checkpoints, which):
    state = checkpoint_utils.load_checkpoint_to_cpu(str(getattr(checkpoints, which)))
    assert state["cfg"].model.arch == "roberta"
    assert state["cfg"].model.encoder_embed_dim == 16
    assert state["model"][EMBEDDINGS].shape[1] == 16


def test_load_checkpoint_returns_the_saved_modern_dict(checkpoints):
    state = load_checkpoint(checkpoints.finetuned)
    assert state["args"] is None
    assert isinstance(state["cfg"]["model"], argparse.Namespace)
    assert state["cfg"]["model"].encoder_layers == 1
    assert state["model"][EMBEDDINGS].dtype == torch.float32


def test_load_checkpoint_returns_the_saved_old_style_dict(checkpoints):
    state = load_checkpoint(checkpoints.old_style)
    assert state["cfg"] is None
    assert isinstance(state["args"], argparse.Namespace)
    assert state["args"].arch == "roberta"


@pytest.mark.parametrize("which", ["modern", "old_style", "finetuned"])
def test_load_model_ensemble_and_task_builds_the_saved_model(checkpoints, which):
    path = getattr(checkpoints, which)
    models, cfg, _ = checkpoint_utils.load_model_ensemble_and_task(
        [str(path)], arg_overrides={"data": str(checkpoints.data)}
    )
    saved = load_checkpoint(path)["model"]
    for name, tensor in models[0].state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert cfg.model.arch == "roberta"
    assert HEAD in models[0].classification_heads


def test_roberta_from_pretrained_loads_through_the_hub_interface(checkpoints):
    from fairseq.models.roberta import RobertaModel

    hub = RobertaModel.from_pretrained(
        str(checkpoints.finetuned.parent), "checkpoint_best.pt", str(checkpoints.data), bpe=None
    )
    tokens = torch.tensor([[0, 5, 6, 7, 2]])
    assert hub.predict(HEAD, tokens).shape == (1, 2)


@pytest.mark.parametrize("loader", ["load_checkpoint_to_cpu", "load_checkpoint", "load_model_ensemble_and_task"])
def test_crafted_checkpoint_is_refused_and_runs_nothing(crafted, loader):
    path, marker, refused = crafted
    load = {
        "load_checkpoint_to_cpu": lambda p: checkpoint_utils.load_checkpoint_to_cpu(str(p)),
        "load_checkpoint": load_checkpoint,
        "load_model_ensemble_and_task": lambda p: checkpoint_utils.load_model_ensemble_and_task([str(p)]),
    }[loader]
    with pytest.raises(UnsafeCheckpointError) as error:
        load(path)
    assert error.value.path == str(path)
    assert error.value.unsafe_globals == [refused]
    message = str(error.value)
    assert str(path) in message and refused in message and "not on fairseq-quant's allowlist" in message
    assert not marker.exists()


def test_crafted_legacy_format_checkpoint_is_refused_naming_the_global(tmp_path):
    marker, path = tmp_path / "MARKER", tmp_path / "crafted_legacy.pt"
    torch.save({"x": RunsCode(os.system, f"touch {marker}")}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError) as error:
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert error.value.unsafe_globals == [_name(os.system)]
    assert not marker.exists()


def test_numpy1_name_of_numpy_scalar_is_allowlisted(tmp_path):
    """numpy < 2 pickled scalars as numpy.core.multiarray.scalar; numpy 2 as numpy._core.multiarray.scalar."""
    numpy2, numpy1 = tmp_path / "numpy2.pt", tmp_path / "numpy1.pt"
    torch.save({"best": np.float64(0.25)}, numpy2)
    with zipfile.ZipFile(numpy2) as src, zipfile.ZipFile(numpy1, "w") as dst:
        for item in src.namelist():
            content = src.read(item)
            if item.endswith("data.pkl"):
                content = content.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
            dst.writestr(item, content)
    assert load_checkpoint(numpy1)["best"] == np.float64(0.25)


def test_missing_checkpoint_error_names_the_path(tmp_path):
    missing = tmp_path / "no_such_checkpoint.pt"
    with pytest.raises(FileNotFoundError, match="no_such_checkpoint.pt"):
        load_checkpoint(missing)
    with pytest.raises(FileNotFoundError, match="no_such_checkpoint.pt"):
        checkpoint_utils.load_checkpoint_to_cpu(str(missing))


def test_torch_load_still_defaults_to_weights_only(crafted):
    path, marker, _ = crafted
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)
    assert not marker.exists()


def test_unpatched_fairseq_loader_fails_on_its_own_checkpoint(checkpoints, nothing_allowlisted):
    unpatched = checkpoint_utils.load_checkpoint_to_cpu.__wrapped__
    with pytest.raises(pickle.UnpicklingError, match="argparse.Namespace"):
        unpatched(str(checkpoints.modern))


def test_apply_is_idempotent():
    patched = checkpoint_utils.load_checkpoint_to_cpu
    checkpoint_weights_only.apply()
    checkpoint_weights_only.apply()
    assert checkpoint_utils.load_checkpoint_to_cpu is patched
    assert patched.__wrapped__.__module__ == "fairseq.checkpoint_utils"
    assert patched.__name__ == "load_checkpoint_to_cpu"

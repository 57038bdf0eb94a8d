"""The example user dir (user_dir/): a user's own fairseq transformer opting in to quantization.

One real ``fairseq-train --user-dir <repo>/user_dir`` run (a subprocess, W8A8 QAT) and, alongside, one in-process FP32
run, on a tiny corpus from ``user_dir/toy_corpus.py`` binarised in-process; then the checkpoints are inspected and
decoded with fairseq-generate (in-process), with and without ``--model-overrides``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fairseq import checkpoint_utils, options, utils
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.models import ARCH_MODEL_REGISTRY
from fairseq_cli import generate as generate_cli
from fairseq_cli import preprocess
from fairseq_cli import train as train_cli

from fairseq_quant import QuantizedLinear, QuantizedMultiheadAttention, QuantMeasure

REPO = Path(__file__).resolve().parents[2]  # the repository
USER_DIR = REPO / "user_dir"
utils.import_user_module(argparse.Namespace(user_dir=str(USER_DIR)))  # as fairseq does for --user-dir
toy_corpus = importlib.import_module("user_dir.toy_corpus")
QuantTransformerModel = importlib.import_module("user_dir.quant_transformer").QuantTransformerModel

N_TEST = 20  # not a multiple of 8: fairseq drops such a tail batch unless --required-batch-size-multiple 1
QAT_UPDATES = 6
TRAIN = [
    "--user-dir", str(USER_DIR), "--task", "translation", "--source-lang", "src", "--target-lang", "tgt",
    "--arch", "quant_transformer_tiny", "--share-all-embeddings", "--optimizer", "adam", "--lr", "1e-3",
    "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--max-tokens", "512",
    "--cpu", "--seed", "1", "--num-workers", "0", "--log-format", "simple", "--log-interval", "1",
    "--no-epoch-checkpoints", "--no-save-optimizer-state", "--no-progress-bar",
]


@pytest.fixture(scope="module")
def toy_bin(tmp_path_factory) -> Path:
    """The toy corpus (200 train, 16 valid, N_TEST test pairs), binarised with a joined dictionary."""
    root = tmp_path_factory.mktemp("toy_translation")
    prefixes = toy_corpus.make_corpus(root / "raw", n_train=200, n_valid=16, n_test=N_TEST, seed=3)
    flags = ["--source-lang", "src", "--target-lang", "tgt", "--joined-dictionary", "--workers", "1",
             "--trainpref", str(prefixes["train"]), "--validpref", str(prefixes["valid"]),
             "--testpref", str(prefixes["test"]), "--destdir", str(root / "bin")]
    preprocess.main(options.get_preprocessing_parser().parse_args(flags))
    return root / "bin"


@pytest.fixture(scope="module")
def ckpts(toy_bin, tmp_path_factory) -> dict[str, Path]:
    """Checkpoints ``{"qat": ..., "fp32": ...}``: a real W8A8 QAT ``fairseq-train --user-dir <repo>/user_dir`` run
    (a subprocess), and meanwhile an FP32 run of the same model in-process (saving a second interpreter start)."""
    qat, fp32 = tmp_path_factory.mktemp("qat"), tmp_path_factory.mktemp("fp32")
    cmd = [sys.executable, "-m", "fairseq_cli.train", str(toy_bin), "--save-dir", str(qat), *TRAIN,
           "--max-update", str(QAT_UPDATES), "--quantw", "--quantin", "--bitsw", "8", "--bitsin", "8"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    log_path = qat / "train.log"  # a file, not a pipe: the child must not block on a full pipe meanwhile
    with open(log_path, "w") as log_file, subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                                           text=True, env=env, cwd=qat) as proc:
        args = options.parse_args_and_arch(
            options.get_training_parser(), [str(toy_bin), "--save-dir", str(fp32), *TRAIN, "--max-update", "3"]
        )
        train_cli.main(convert_namespace_to_omegaconf(args))
        proc.wait(timeout=300)
    log = log_path.read_text()
    assert proc.returncode == 0, f"fairseq-train failed:\n{log[-4000:]}"
    assert "QuantTransformerModel" in log  # fairseq logs the model it built
    return {"qat": qat / "checkpoint_last.pt", "fp32": fp32 / "checkpoint_last.pt"}


@pytest.fixture(scope="module")
def qat_ckpt(ckpts) -> Path:
    return ckpts["qat"]


@pytest.fixture(scope="module")
def fp32_ckpt(ckpts) -> Path:
    return ckpts["fp32"]


def load(ckpt: Path, **overrides):
    """The model of ``ckpt`` in eval mode and its task, loaded as fairseq-generate loads it."""
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(ckpt)], arg_overrides=overrides)
    return models[0].eval(), task


def first_test_batch(task, n: int = 8) -> dict:
    task.load_dataset("test")
    ds = task.dataset("test")
    return ds.collater([ds[i] for i in range(n)])


def generate(data: Path, ckpt: Path, results: Path, *flags: str) -> list[str]:
    """Run fairseq-generate (in-process) on the test split; returns the H- lines' text, in sentence order."""
    argv = [str(data), "--user-dir", str(USER_DIR), "--path", str(ckpt), "--gen-subset", "test", "--beam", "4",
            "--batch-size", "8", "--required-batch-size-multiple", "1", "--max-len-a", "1.2", "--max-len-b", "4",
            "--num-workers", "0", "--cpu", "--results-path", str(results), *flags]
    generate_cli.main(options.parse_args_and_arch(options.get_generation_parser(), argv))
    hyps = {}
    for line in (results / "generate-test.txt").read_text().splitlines():
        if line.startswith("H-"):
            sid, _score, *text = line[2:].split("\t")
            hyps[int(sid)] = text[0] if text else ""
    return [hyps[i] for i in sorted(hyps)] if sorted(hyps) == list(range(len(hyps))) else []


# --- the corpus -------------------------------------------------------------------------------------------------


def test_toy_translation_swaps_adjectives_moves_pp_and_verb():
    src = "a big old dog finds the cat under the green tree"
    expected = "a dog big old the tree green under the cat finds"
    assert toy_corpus.translate(src) == " ".join(toy_corpus.LEXICON[w] for w in expected.split())
    assert toy_corpus.translate("the cat sees the dog") == " ".join(
        toy_corpus.LEXICON[w] for w in ("the", "cat", "the", "dog", "sees"))
    with pytest.raises(ValueError, match="not a sentence"):
        toy_corpus.translate("the cat sees the")


def test_toy_corpus_is_deterministic_and_idempotent(tmp_path):
    a = toy_corpus.make_corpus(tmp_path / "a", n_train=50, n_valid=5, n_test=5, seed=7)
    b = toy_corpus.make_corpus(tmp_path / "b", n_train=50, n_valid=5, n_test=5, seed=7)
    toy_corpus.make_corpus(tmp_path / "c", n_train=50, n_valid=5, n_test=5, seed=8)
    files = [f"{s}.{side}" for s in toy_corpus.SPLITS for side in ("src", "tgt")]
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert (tmp_path / "a" / "train.src").read_bytes() != (tmp_path / "c" / "train.src").read_bytes()
    train = set(Path(f"{a['train']}.src").read_text().splitlines())
    test = Path(f"{a['test']}.src").read_text().splitlines()
    assert len(train) == 50 and len(test) == 5 and not train & set(test)
    # test and valid do not depend on the train size; a second call rewrites nothing
    d = toy_corpus.make_corpus(tmp_path / "d", n_train=80, n_valid=5, n_test=5, seed=7)
    assert Path(f"{d['test']}.tgt").read_bytes() == Path(f"{b['test']}.tgt").read_bytes()
    mtimes = [(tmp_path / "a" / f).stat().st_mtime_ns for f in files]
    toy_corpus.make_corpus(tmp_path / "a", n_train=50, n_valid=5, n_test=5, seed=7)
    assert [(tmp_path / "a" / f).stat().st_mtime_ns for f in files] == mtimes


# --- the model ---------------------------------------------------------------------------------------------------


def test_fairseq_train_builds_quant_transformer_and_records_ranges(qat_ckpt):
    assert {"quant_transformer", "quant_transformer_tiny"} <= set(ARCH_MODEL_REGISTRY)
    model, _ = load(qat_ckpt)
    assert isinstance(model, QuantTransformerModel)
    layer = model.decoder.layers[0]  # quant_transformer_tiny: 2+2 layers, 64 dims, ffn 128, 4 heads
    assert (len(model.encoder.layers), len(model.decoder.layers)) == (2, 2)
    assert (layer.fc1.in_features, layer.fc1.out_features, layer.self_attn.num_heads) == (64, 128, 4)
    assert model.quant_recipe.weight.mode == model.quant_recipe.input.mode == "quantize"
    attns = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedMultiheadAttention)}
    assert sorted(attns) == sorted(
        [f"encoder.layers.{i}.self_attn" for i in range(2)]
        + [f"decoder.layers.{i}.{a}" for i in range(2) for a in ("self_attn", "encoder_attn")]
    )
    # every input range was recorded once per training step, in all three kinds of attention
    for name, attn in attns.items():
        assert (attn.key_input_quant is not None) == name.endswith("encoder_attn")
        for q in (attn.input_quant, attn.key_input_quant, attn.k_proj.output_quant, attn.probs_quant):
            if q is not None:
                assert int(q.num_batches_tracked) == QAT_UPDATES, name
    # the decoder's output projection stays tied to the (shared) embeddings and is quantized for the projection
    proj = model.decoder.output_projection
    assert isinstance(proj, QuantizedLinear) and proj.weight is model.decoder.embed_tokens.weight
    assert model.encoder.embed_tokens is model.decoder.embed_tokens
    assert proj.weight_quant.running_min.shape == (proj.out_features,)  # per channel: one range per word


def test_every_quantizer_fires_once_in_a_forward(qat_ckpt):
    model, task = load(qat_ckpt)
    counts = {}
    for name, q in model.named_modules():
        if isinstance(q, QuantMeasure) and q.active:
            counts[name] = 0
            q.register_forward_hook(lambda m, i, o, name=name: counts.__setitem__(name, counts[name] + 1))
    with torch.no_grad():
        model(**first_test_batch(task)["net_input"])
    # active ones (--quantize-ops gemm), per layer: attention 10 (+1 for the enc-dec key/value input), fc1 and fc2 2
    # each; + the output projection
    assert len(counts) == 2 * 14 + 2 * (10 + 11 + 4) + 2
    assert counts == dict.fromkeys(counts, 1)


def test_incremental_decoding_matches_the_full_forward(qat_ckpt):
    """Cached keys/values (decoder self-attention) and static encoder keys (enc-dec attention) under quantization:
    with the recorded ranges, decoding one token at a time gives the teacher-forced logits."""
    model, task = load(qat_ckpt)
    net_input = first_test_batch(task)["net_input"]
    prev = net_input["prev_output_tokens"]
    with torch.no_grad():
        full, _ = model(**net_input)
        enc = model.encoder(net_input["src_tokens"], src_lengths=net_input["src_lengths"])
        state: dict = {}
        steps = [model.decoder(prev[:, : t + 1], encoder_out=enc, incremental_state=state)[0]
                 for t in range(prev.size(1))]
    mask = prev.ne(task.target_dictionary.pad())
    torch.testing.assert_close(torch.cat(steps, 1)[mask], full[mask], atol=1e-4, rtol=1e-4)


def test_model_overrides_reach_the_model(qat_ckpt, fp32_ckpt):
    model, _ = load(qat_ckpt, bitsw=4, bitsin=4)  # what fairseq-generate --model-overrides passes
    assert model.quant_recipe.weight.bits == model.quant_recipe.input.bits == 4
    assert {q.spec.bits for q in model.modules() if isinstance(q, QuantMeasure)} == {4}
    model, _ = load(qat_ckpt, quantw=False, quantin=False)
    assert not any(q.active for q in model.modules() if isinstance(q, QuantMeasure))
    # PTQ of the FP32 checkpoint: quantizers on, no ranges recorded (they come from the current batch)
    model, _ = load(fp32_ckpt, quantw=True, quantin=True, bitsw=8, bitsin=8)
    qs = [q for q in model.modules() if isinstance(q, QuantMeasure) and q.op == "gemm"]
    assert all(q.spec.mode == "quantize" for q in qs) and not any(int(q.num_batches_tracked) for q in qs)


@pytest.mark.parametrize("run, overrides", [
    ("qat", None),  # the ranges recorded in training
    ("qat", "{'bitsw': 4, 'bitsin': 4}"),
    ("fp32", "{'quantw': True, 'quantin': True, 'bitsw': 8, 'bitsin': 8}"),  # PTQ: ranges from the batch
])  # fmt: skip
def test_fairseq_generate_decodes_the_test_set(run, overrides, toy_bin, ckpts, tmp_path):
    ckpt = ckpts[run]
    flags = ["--model-overrides", overrides] if overrides else []
    hyps = generate(toy_bin, ckpt, tmp_path, *flags)
    assert len(hyps) == N_TEST  # one hypothesis per test sentence (none left in a dropped tail batch)
    words = set(toy_corpus.LEXICON) | set(toy_corpus.LEXICON.values())  # the joined dictionary's words
    assert any(hyps) and all(set(h.split()) <= words for h in hyps)

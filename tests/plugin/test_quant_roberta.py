"""fairseq's own RoBERTa checkpoints load into quant_roberta: through --restore-file and the hub interface,
including the old published format (args Namespace, ``decoder.*`` names, fused ``in_proj_weight``)."""
import argparse
import shutil

import pytest
import torch
from helpers import PLAIN_ROBERTA, fairseq_train

from fairseq_quant import QuantMeasure, QuantRobertaModel
from fairseq_quant.plugin.checkpoint import load_checkpoint

HEAD = "sentence_classification_head"


@pytest.fixture(scope="module")
def published_style(plain_roberta_run, tiny_data, tmp_path_factory):
    """The plain checkpoint rewritten the way ``roberta.base`` (fairseq 0.9) stores it, without a head."""
    state = load_checkpoint(str(plain_roberta_run / "checkpoint_last.pt"))
    args = argparse.Namespace(**{k: v for k, v in vars(state["cfg"]["model"]).items() if not k.startswith("_")})
    args.arch = "roberta"
    args.task = "masked_lm"
    model = {}
    for key, value in state["model"].items():
        if key.startswith("classification_heads."):
            continue
        key = key.replace("encoder.", "decoder.", 1).replace(".layernorm_embedding.", ".emb_layer_norm.")
        model[key] = value
    for layer in range(args.encoder_layers):
        p = f"decoder.sentence_encoder.layers.{layer}.self_attn."
        for kind in ("weight", "bias"):
            parts = [model.pop(f"{p}{proj}_proj.{kind}") for proj in ("q", "k", "v")]
            model[f"{p}in_proj_{kind}"] = torch.cat(parts, dim=0)
    out = tmp_path_factory.mktemp("published") / "model.pt"
    shutil.copy(tiny_data / "input0" / "dict.txt", out.parent / "dict.txt")  # shipped beside model.pt
    history = [{"criterion_name": "MaskedLmLoss", "optimizer_name": "MemoryEfficientFP16Optimizer",
                "lr_scheduler_state": {"best": 1.5}, "num_updates": 500000}]
    torch.save({"args": args, "model": model, "optimizer_history": history, "extra_state": {"epoch": 3}}, out)
    return out, state["model"]


def test_restore_file_initialises_missing_quantizer_state(published_style, tiny_data, tmp_path):
    path, original = published_style
    save = tmp_path / "ft"
    proc = fairseq_train(
        tiny_data, save, "--restore-file", str(path), "--reset-optimizer", "--reset-dataloader", "--reset-meters",
        "--reset-lr-scheduler", "--max-update", "1", "--lr", "1e-9", "--quantw", "--quantin",
        *[f if f != "roberta" else "quant_roberta" for f in PLAIN_ROBERTA],
    )
    log = proc.stdout + proc.stderr
    assert f"Loaded checkpoint {path}" in log
    tuned = load_checkpoint(str(save / "checkpoint_last.pt"))["model"]
    key = "encoder.sentence_encoder.layers.0.self_attn.k_proj.weight"
    torch.testing.assert_close(tuned[key], original[key], atol=1e-6, rtol=0)  # lr 1e-9: the restored weights
    assert tuned["encoder.sentence_encoder.layers.0.fc1.input_quant.num_batches_tracked"].item() == 1


def test_hub_interface_loads_published_checkpoint_as_quant_roberta(published_style, plain_roberta_run, tiny_data):
    path, _ = published_style
    hub = QuantRobertaModel.from_pretrained(str(path.parent), "model.pt", bpe=None).eval()  # fairseq: no dropout
    model = hub.model
    assert isinstance(model, QuantRobertaModel)
    assert sum(isinstance(m, QuantMeasure) and m.op == "gemm" for m in model.modules()) == 14
    assert all(m.num_batches_tracked.item() == 0 for m in model.modules() if isinstance(m, QuantMeasure))
    tokens = torch.tensor([[0, 5, 6, 7, 8, 9, 10, 11, 12, 2]])
    fp = hub.extract_features(tokens)
    errors = {}
    for bits in (8, 4):
        quantized = QuantRobertaModel.from_pretrained(str(path.parent), "model.pt", bpe=None,
                                                      quantw=True, quantin=True, bitsw=bits).eval()
        recipe = quantized.model.quant_recipe
        assert recipe.weight.bits == bits and recipe.input.mode == "quantize"
        q = quantized.extract_features(tokens)
        assert q.shape == fp.shape == (1, 10, 32)
        errors[bits] = ((fp - q).norm() / fp.norm()).item()
    assert 0 < errors[8] < 0.05 and errors[8] < errors[4]  # W8A8 close to FP32; W4A8 further away

    ours = QuantRobertaModel.from_pretrained(str(plain_roberta_run), "checkpoint_last.pt", str(tiny_data), bpe=None)
    ours.eval()
    probs = ours.predict(HEAD, tokens)
    assert probs.shape == (1, 2) and torch.allclose(probs.exp().sum(), torch.tensor(1.0))

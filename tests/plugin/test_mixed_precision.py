"""Quantized training under fairseq's --bf16 (and a bf16-cast model): ranges and scales stay float32."""
import re

import torch
from helpers import fairseq_train, tiny_batch, tiny_model

from fairseq_quant import quantizers
from fairseq_quant.plugin.checkpoint import load_checkpoint

HEAD = "sentence_classification_head"


def test_bf16_model_keeps_float32_ranges_and_finite_gradients():
    ref = tiny_model(["--quantw", "--quantin"])
    model = tiny_model(["--quantw", "--quantin"]).to(dtype=torch.bfloat16)  # as fairseq's Trainer casts it
    assert all(q.running_min.dtype == torch.float32 for q in quantizers(model))
    x = tiny_batch()
    ref.train()
    model.train()
    logits = model(x, classification_head_name=HEAD)[0]
    assert logits.dtype == torch.bfloat16
    logits.float().sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    ref(x, classification_head_name=HEAD)
    for (name, q), q_ref in zip(
        ((n, m) for n, m in model.named_modules() if hasattr(m, "running_max")), quantizers(ref)
    ):
        assert q.running_max.dtype == torch.float32, name
        # same ranges as in float32, up to bf16's precision of the activations themselves
        torch.testing.assert_close(q.running_max, q_ref.running_max, rtol=0.05, atol=0.05)


def test_fairseq_train_bf16_with_quantization(tiny_data, tmp_path):
    save = tmp_path / "bf16"
    flags = ("--max-update", "3", "--quantw", "--quantin", "--bitsin", "6")
    proc = fairseq_train(tiny_data, save, "--bf16", *flags)
    log = proc.stdout + proc.stderr
    assert re.search(r"num_updates 3\b", log)
    losses = [float(v) for v in re.findall(r"\| loss ([0-9.]+)", log)]
    f32 = fairseq_train(tiny_data, tmp_path / "fp32", *flags)
    f32_losses = [float(v) for v in re.findall(r"\| loss ([0-9.]+)", f32.stdout + f32.stderr)]
    # the same run in float32: bf16 changes the losses by its rounding only (about 1e-2), not by a broken grid
    assert len(losses) == len(f32_losses) >= 2
    assert all(abs(a - b) < 0.05 for a, b in zip(losses, f32_losses)), (losses, f32_losses)
    state = load_checkpoint(str(save / "checkpoint_last.pt"))["model"]
    rng = state["encoder.sentence_encoder.layers.0.fc2.input_quant.running_max"]
    assert rng.dtype == torch.float32 and rng.item() > 0

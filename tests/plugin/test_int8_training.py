"""INT8 mixed-precision training (--int8-training): gradients close to float, training converges like float,
and the flags work in a real fairseq-train run."""
import re

import pytest
import torch
import torch.nn.functional as F
from helpers import fairseq_train, tiny_batch, tiny_model

from fairseq_quant.plugin.int8_training import check_int8_training_args, int8_linear

HEAD = "sentence_classification_head"


def grads(fn, x, w, b, g):
    x, w, b = (t.clone().requires_grad_() for t in (x, w, b))
    y = fn(x, w, b)
    y.backward(g)
    return y.detach(), x.grad, w.grad, b.grad


def cosine(a, b):
    return F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


@pytest.mark.parametrize("mode", ["fwd", "fwd_dgrad", "all"])
@pytest.mark.parametrize("stochastic", [False, True])
def test_int8_matmuls_are_close_to_float(mode, stochastic):
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 24, 48, generator=g), torch.randn(40, 48, generator=g) * 0.1, torch.randn(40, generator=g)
    grad = torch.randn(2, 24, 40, generator=g)
    ref = grads(F.linear, x, w, b, grad)
    out = grads(lambda *a: int8_linear(*a, mode, stochastic and mode != "fwd"), x, w, b, grad)
    assert out[0].shape == (2, 24, 40)
    assert cosine(out[0], ref[0]) > 0.9999  # forward in int8 with row-wise scales
    assert torch.equal(out[3], ref[3])  # the bias gradient is a float sum
    for got, want, in_int8 in ((out[1], ref[1], mode != "fwd"), (out[2], ref[2], mode == "all")):
        if in_int8:
            assert cosine(got, want) > (0.999 if stochastic else 0.9999)
        else:
            torch.testing.assert_close(got, want)  # left in float: float's own gradient


def test_int8_training_converges_like_float(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the PyTorch fallback (torch._int_mm): fast on a CPU
    losses = {}
    for mode in ("off", "all"):
        model = tiny_model(["--int8-training", mode] + (["--int8-stochastic-rounding"] if mode == "all" else []))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        curve = []
        for step in range(60):
            tokens = tiny_batch(batch=16, seed=step % 4)
            target = (tokens == 5).sum(1).gt((tokens == 6).sum(1)).long()  # a rule the model can learn
            logits = model(tokens, features_only=True, classification_head_name=HEAD)[0]
            loss = F.cross_entropy(logits, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            curve.append(loss.item())
        losses[mode] = sum(curve[-10:]) / 10
        assert losses[mode] < 0.5 * sum(curve[:5]) / 5  # it learned
    assert abs(losses["all"] - losses["off"]) < 0.05 + 0.2 * losses["off"]


def test_fairseq_train_with_int8_training(tiny_data, tmp_path):
    save = tmp_path / "int8"
    proc = fairseq_train(tiny_data, save, "--max-update", "20", "--int8-training", "all",
                         "--int8-stochastic-rounding", env={"TRITON_INTERPRET": "0"})
    log = proc.stdout + proc.stderr
    losses = [float(v) for v in re.findall(r"\| train \| epoch \d+ \|.*?\| loss ([\d.]+)", log)]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    state = torch.load(save / "checkpoint_last.pt", weights_only=False)
    assert state["cfg"]["model"].int8_training == "all" and state["cfg"]["model"].int8_stochastic_rounding


@pytest.mark.parametrize("args,message", [
    ({"int8_training": "fp4"}, "--int8-training must be one of off, fwd, fwd_dgrad, all"),
    ({"int8_training": "fwd", "int8_stochastic_rounding": True}, "needs --int8-training fwd_dgrad or all"),
])
def test_bad_int8_training_flags_name_the_flag(args, message):
    from argparse import Namespace

    with pytest.raises(ValueError, match=message):
        check_int8_training_args(Namespace(**args))


def test_int8_training_script_refuses_bad_modes_before_running(tmp_path):
    from helpers import script_refuses

    script_refuses("int8_training.bash", "--modes", "bf16,int4", out=tmp_path / "r",
                   messages=("--modes: unknown 'int4'; allowed: bf16, fwd, fwd_dgrad, all, all_sr",))

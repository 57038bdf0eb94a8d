"""Every quantizer kind trains in bf16 and fp16 (the model cast as fairseq's --bf16/--fp16 casts it): ranges,
scales and zero points stay float32, and no finite input gives NaN. (fairseq's --fp16 needs CUDA; the cast
model's forward and backward run on the CPU here for both 16-bit types.)"""
import pytest
import torch
from helpers import HEAD, REPO, tiny_batch, tiny_model

from fairseq_quant.core.formats import get_format
from fairseq_quant.core.quant_measure import QuantMeasure
from fairseq_quant.core.spec import QuantSpec

KINDS = {
    "int8": ["--quantw", "--quantin"],
    "fp8 amax-scaled": ["--quantw", "--quantin", "--formatw", "fp8_e4m3", "--formatw-scaling", "amax",
                        "--formatin", "fp8_e4m3", "--formatin-scaling", "amax"],
    "posit8": ["--quantw", "--quantin", "--formatw", "posit8_1", "--formatin", "posit8_1"],
    "stochastic": ["--quantw", "--quantin", "--quant-rounding", "stochastic"],
    "formatgrad": ["--quantin", "--formatgrad", "fp8_e5m2"],
    "learned ranges": ["--quantw", "--quantin", "--learn-ranges"],
    "embedding groups": ["--quantw", "--quantin", "--quant-dict", "{'y': 'ngp2', 'h': 'ng2'}"],
    "every op": ["--quantw", "--quantin", "--quantize-ops", "gemm,act,norm,attn_scaling,residual"],
    "cpt": ["--quantw", "--quantin", "--cpt-config", str(REPO / "configs" / "cfg_cpt.json")],
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("flags", KINDS.values(), ids=KINDS.keys())
def test_every_quantizer_kind_trains_in_16_bits(flags, dtype):
    model = tiny_model(flags, max_update=20).to(dtype)
    model.train()
    for step in range(3):
        model.set_num_updates(step)
        logits = model(tiny_batch(seed=step), features_only=True, classification_head_name=HEAD)[0]
        loss = torch.nn.functional.cross_entropy(logits.float(), torch.tensor([0, 1, 0, 1]))
        model.zero_grad()
        loss.backward()
        assert torch.isfinite(loss), f"step {step}: loss {loss}"
        for name, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), f"step {step}: {name}.grad"
    points = [q for q in model.modules() if isinstance(q, QuantMeasure) and q.active]
    assert points
    for q in points:
        for name, t in [*q.named_buffers(recurse=False), *q.named_parameters(recurse=False)]:
            if t.is_floating_point():
                assert t.dtype == torch.float32, name
                assert not torch.isnan(t).any(), name
    assert logits.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("spec", [
    QuantSpec(mode="quantize", format="fp8_e4m3", scaling="amax"),
    QuantSpec(mode="quantize", format="int8", rounding="stochastic"),
    QuantSpec(mode="quantize", format="int8", learned=True),
    QuantSpec(mode="quantize", format="int8", groups=2),
], ids=["fp8 amax", "stochastic", "learned", "groups"])
def test_an_all_zero_16_bit_tensor_stays_zero(spec, dtype):
    q = QuantMeasure(spec).to(dtype).train()
    x = torch.zeros(4, 8, dtype=dtype, requires_grad=True)
    y = q(x)
    assert y.dtype == dtype and torch.equal(y.detach(), torch.zeros_like(y)), y
    y.float().sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_small_16_bit_gradients_are_rounded_not_flushed(dtype):
    """--formatgrad scales the gradient in float32: a gradient of 1e-6 (an fp16 subnormal) keeps its value on the
    E5M2 grid instead of underflowing when divided by its scale in 16 bits."""
    q = QuantMeasure(QuantSpec(mode="quantize", format="int16", grad_format="fp8_e5m2")).to(dtype).train()
    x = torch.full((4, 8), 0.5, dtype=dtype, requires_grad=True)
    grad = torch.full((4, 8), 1e-6, dtype=dtype)
    q(x).backward(grad)
    expected = get_format("fp8_e5m2").quantize(torch.ones(1)) * grad.float()[0, 0]
    assert torch.allclose(x.grad.float(), expected.expand(4, 8), rtol=0.02)


def test_fairseq_train_bf16_with_learned_ranges(tiny_data, tmp_path):
    """The reported failure: --learn-ranges under --bf16 died on the first forward (16-bit LSQ scales)."""
    from fairseq.checkpoint_utils import load_checkpoint_to_cpu
    from helpers import fairseq_train

    out = fairseq_train(tiny_data, tmp_path, "--bf16", "--quantw", "--quantin", "--learn-ranges", "--formatgrad",
                        "fp8_e5m2", "--max-update", "4").stdout
    assert "num_updates=4" in out
    model = load_checkpoint_to_cpu(str(tmp_path / "checkpoint_last.pt"))["model"]
    scales = {k: v for k, v in model.items() if k.endswith("lsq_scale")}
    assert scales and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in scales.values())

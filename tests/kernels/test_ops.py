"""The INT8/FP8 kernels against PyTorch references: in Triton's CPU interpreter here (conftest sets
TRITON_INTERPRET=1 where there is no GPU), compiled on a GPU when one is present."""
import pytest
import torch

from fairseq_quant.core.formats import fake_quant_int, get_format
from fairseq_quant.kernels import (
    quantize_rows,
    quantize_rows_reference,
    scaled_mm,
    scaled_mm_reference,
    triton_available,
    uses_triton,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")


def rand(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(DEVICE)


@needs_triton
def test_the_triton_path_is_the_one_under_test():
    assert uses_triton(rand(2, 2), "auto")
    assert not uses_triton(rand(2, 2), "torch")
    with pytest.raises(ValueError, match="backend must be one of"):
        uses_triton(rand(2, 2), "cuda")


@needs_triton
@pytest.mark.parametrize("shape", [(37, 70), (1, 5), (3, 9000)])  # 9000 > one block: the two-read path
def test_dynamic_row_quantization_is_exact(shape):
    x = rand(*shape, scale=3.0)
    x[0, 0] = 0.0
    q, s = quantize_rows(x, "int8")
    rq, rs = quantize_rows_reference(x, "int8")
    assert q.dtype == torch.int8 and torch.equal(q, rq) and torch.equal(s, rs)
    assert q.abs().max() == 127 and torch.equal(s, x.abs().amax(1) / 127)
    f, fs = quantize_rows(x, "fp8")
    rf, rfs = quantize_rows_reference(x, "fp8")
    assert f.dtype == torch.float8_e4m3fn and torch.equal(f.float(), rf.float()) and torch.equal(fs, rfs)
    # the e4m3 values are ml_dtypes' (our formats module): rounding carries into the exponent (124.3 -> 128)
    t = (x / fs[:, None]).clamp(-448, 448)
    assert torch.equal(f.float(), get_format("fp8_e4m3").quantize(t))


@needs_triton
@pytest.mark.parametrize("zero_point,qmin,qmax", [(0.0, -127, 127), (-3.0, -128, 127), (7.0, -8, 7)])
def test_static_grid_matches_fake_quantization(zero_point, qmin, qmax):
    x = rand(29, 48, seed=1, scale=2.0)
    scale = torch.tensor([0.021])
    q, s = quantize_rows(x, "int8", scale, qmax=qmax, zero_point=zero_point, qmin=qmin)
    assert torch.equal(s, scale.expand(29))
    fake = fake_quant_int(x, scale, None if not zero_point else torch.tensor([zero_point]), qmin, qmax)
    assert torch.equal((q.float() - zero_point) * scale, fake)  # the same integers as fake quantization
    assert q.min() == qmin and q.max() == qmax  # this range clips: both ends are reached


@needs_triton
def test_stochastic_rounding_is_unbiased_and_seeded():
    x = rand(8, 128, seed=2)
    t = x / (x.abs().amax(1, keepdim=True) / 127)
    draws = torch.stack([quantize_rows(x, "int8", stochastic=True, seed=k)[0].float() for k in range(30)])
    assert ((draws == t.floor()) | (draws == t.ceil())).all()
    low = (t - t.floor() > 0.2) & (t - t.floor() < 0.45)  # where rounding to nearest always rounds down
    assert (draws.mean(0) - t)[low].mean().abs() < 0.02  # stochastic rounding: no bias
    assert (t.round() - t)[low].mean() < -0.3
    a, _ = quantize_rows(x, "int8", stochastic=True, seed=5)
    b, _ = quantize_rows(x, "int8", stochastic=True, seed=5)
    assert torch.equal(a, b)


@needs_triton
@pytest.mark.parametrize("M,N,K", [(37, 45, 70), (1, 16, 16), (64, 96, 300)])
@pytest.mark.parametrize("epilogue", ["none", "bias", "bias_gelu"])
def test_int8_gemm_is_exact(M, N, K, epilogue):
    g = torch.Generator().manual_seed(M + N + K)
    a = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8).to(DEVICE)
    b = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8).to(DEVICE)
    sa, sb = rand(M, seed=3).abs() + 0.01, rand(N, seed=4).abs() + 0.01
    bias = rand(N, seed=5) if epilogue != "none" else None
    gelu = epilogue == "bias_gelu"
    out = scaled_mm(a, sa, b, sb, bias, gelu)
    acc = (a.long() @ b.long().t())  # int64: no overflow anywhere
    ref = acc.float() * sa[:, None] * sb[None, :]
    if bias is not None:
        ref = ref + bias
    if gelu:
        ref = torch.nn.functional.gelu(ref)
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-5)  # erf differs in the last bits
    else:
        assert torch.equal(out, ref)  # int32 sums, then the same float32 epilogue: bit for bit
    assert torch.equal(scaled_mm(a, sa, b, sb, bias, gelu, backend="torch"), scaled_mm_reference(
        a, sa.expand(M), b, sb.expand(N), bias, gelu))


@needs_triton
def test_int8_gemm_zero_point_term_is_exact():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (33, 64), generator=g, dtype=torch.int8).to(DEVICE)
    b = torch.randint(-127, 128, (40, 64), generator=g, dtype=torch.int8).to(DEVICE)
    out = scaled_mm(a, torch.tensor([0.5]), b, torch.tensor([0.25]), a_zero_point=-7)
    ref = ((a.long() + 7) @ b.long().t()).float() * 0.5 * 0.25
    assert torch.equal(out, ref)


@needs_triton
@pytest.mark.parametrize("M,N,K", [(37, 45, 70), (64, 64, 256)])
def test_fp8_gemm_within_tolerance(M, N, K):
    qa, sa = quantize_rows(rand(M, K, seed=6), "fp8")
    qb, sb = quantize_rows(rand(N, K, seed=7), "fp8")
    bias = rand(N, seed=8)
    out = scaled_mm(qa, sa, qb, sb, bias, out_dtype=torch.float32)
    ref = (qa.double() @ qb.double().t()) * sa.double()[:, None] * sb.double()[None, :] + bias.double()
    # products of e4m3 values are exact in float32; only the order of the float32 summation differs
    assert (out.double() - ref).abs().max() <= 1e-6 * ref.abs().max()
    half = scaled_mm(qa, sa, qb, sb, bias, out_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and (half.float() - out).abs().max() <= 0.01 * out.abs().max()


def test_bad_operands_name_what_is_expected():
    a = torch.zeros(4, 8, dtype=torch.int8)
    with pytest.raises(ValueError, match=r"multiplies \(M, K\) by \(N, K\)"):
        scaled_mm(a, torch.ones(1), torch.zeros(3, 9, dtype=torch.int8), torch.ones(1))
    with pytest.raises(ValueError, match="two int8 or two float8_e4m3fn"):
        scaled_mm(a, torch.ones(1), torch.zeros(3, 8), torch.ones(1))
    with pytest.raises(ValueError, match="b_scale must have 1 or 3 elements"):
        scaled_mm(a, torch.ones(1), torch.zeros(3, 8, dtype=torch.int8), torch.ones(2))
    with pytest.raises(ValueError, match=r"format must be one of \('int8', 'fp8'\)"):
        quantize_rows(torch.zeros(2, 2), "int4")
    with pytest.raises(ValueError, match="need a static scale"):
        quantize_rows(torch.zeros(2, 2), zero_point=3.0)

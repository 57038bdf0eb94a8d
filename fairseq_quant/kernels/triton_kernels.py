"""Triton kernels: the scaled INT8/FP8 GEMM with its fused epilogue, and row-wise activation quantization.

Importing this module needs ``triton``. With ``TRITON_INTERPRET=1`` (set before the import) the kernels run on
the CPU in Triton's interpreter, which is how the tests check them on machines without a GPU; on a GPU they are
compiled and autotuned. Callers use ``fairseq_quant.kernels.ops``, which picks these kernels or a PyTorch
fallback.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

__all__ = ["INTERPRET", "quantize_rows_triton", "scaled_mm_triton"]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# 1.5 * 2**23: adding and subtracting it rounds a float32 |t| < 2**22 to the nearest integer, ties to even
_ROUND_MAGIC = 12582912.0


@triton.jit
def _round_half_even(t, USE_RINT: tl.constexpr):
    if USE_RINT:
        r = libdevice.rint(t)
    else:  # the interpreter has no libdevice; callers clamp |t| to at most 127.5 first
        r = (t + _ROUND_MAGIC) - _ROUND_MAGIC
    return r


@triton.jit
def _round_to_e4m3(t):
    """``t`` (|t| <= 448) rounded to the nearest float8 e4m3 value (ties to even), still as float32: the step is
    2**(exponent - 3) for normal values and 2**-9 for subnormal ones; dividing by it is exact."""
    exponent = ((t.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    exponent = tl.maximum(exponent, -6)
    step = ((exponent - 3 + 127) << 23).to(tl.float32, bitcast=True)
    return ((t / step + _ROUND_MAGIC) - _ROUND_MAGIC) * step


@triton.jit
def _quantize_block(x, inv_scale, qlo, qhi, zero_point, offsets, seed, IS_FP8: tl.constexpr,
                    STOCHASTIC: tl.constexpr, USE_RINT: tl.constexpr):
    t = x * inv_scale
    if IS_FP8:
        t = tl.clamp(t, qlo, qhi)
        if not USE_RINT:  # the interpreter's float32 -> e4m3 cast does not carry a round-up into the exponent
            t = _round_to_e4m3(t)
        q = t.to(tl.float8e4nv)
    else:
        if STOCHASTIC:  # floor(t + u), u ~ U[0, 1): unbiased; the noise never leaves the registers
            r = tl.floor(t + tl.rand(seed, offsets))
        else:  # as fake_quant_int: round, add the zero point, clamp (|t| >= 2**22 ends up clamped either way)
            r = _round_half_even(t, USE_RINT)
        q = tl.clamp(r + zero_point, qlo, qhi).to(tl.int8)
    return q


@triton.jit
def _quantize_rows_kernel(
    x_ptr, q_ptr, scale_ptr, static_ptr, M, K, stride_xm, stride_qm, qlo, qhi, zero_point, qmax, min_scale, seed,
    STATIC: tl.constexpr, IS_FP8: tl.constexpr, STOCHASTIC: tl.constexpr, USE_RINT: tl.constexpr,
    BLOCK_K: tl.constexpr, ROWS: tl.constexpr, SINGLE: tl.constexpr,
):
    """Each program takes ROWS rows: each row's absmax (or the static scale), then the rows rounded onto the
    int8/fp8 grid ``[qlo, qhi]`` (integers: ``round(x / scale) + zero_point``; dynamic scales map the absmax
    onto ``qmax``). SINGLE (a row fits in one block): the rows are read from memory once; otherwise ROWS is 1
    and the row is read twice, once for its absmax."""
    cols = tl.arange(0, BLOCK_K)
    if SINGLE:
        rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        mask = (rows[:, None] < M) & (cols[None, :] < K)
        x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if STATIC:
            scale = tl.zeros((ROWS,), dtype=tl.float32) + tl.load(static_ptr)
        else:
            scale = tl.maximum(tl.max(tl.abs(x), axis=1) / qmax, min_scale)
        inv = tl.div_rn(tl.full((ROWS,), 1.0, tl.float32), scale)
        q = _quantize_block(x, inv[:, None], qlo, qhi, zero_point, rows[:, None] * K + cols[None, :], seed, IS_FP8,
                            STOCHASTIC, USE_RINT)
        tl.store(q_ptr + rows[:, None] * stride_qm + cols[None, :], q, mask=mask)
        tl.store(scale_ptr + rows, scale, mask=rows < M)
    else:
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * stride_xm
        q_row = q_ptr + row * stride_qm
        if STATIC:
            scale = tl.load(static_ptr)
        else:
            amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                x = tl.load(x_row + k0 + cols, mask=k0 + cols < K, other=0.0).to(tl.float32)
                amax = tl.maximum(amax, tl.abs(x))
            scale = tl.maximum(tl.max(amax, axis=0) / qmax, min_scale)
        inv = tl.div_rn(1.0, scale)
        for k0 in range(0, K, BLOCK_K):
            x = tl.load(x_row + k0 + cols, mask=k0 + cols < K, other=0.0).to(tl.float32)
            q = _quantize_block(x, inv, qlo, qhi, zero_point, row * K + k0 + cols, seed, IS_FP8, STOCHASTIC,
                                USE_RINT)
            tl.store(q_row + k0 + cols, q, mask=k0 + cols < K)
        tl.store(scale_ptr + row, scale)


# rows up to this long are quantized from registers in one read
_SINGLE_PASS_MAX = 8192


def quantize_rows_triton(x: torch.Tensor, fp8: bool, qlo: float, qhi: float, zero_point: float,
                         static_scale: torch.Tensor | None, stochastic: bool, seed: int,
                         min_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """See ``ops.quantize_rows`` (``x`` 2-D with unit stride along its rows)."""
    M, K = x.shape
    q = torch.empty((M, K), dtype=torch.float8_e4m3fn if fp8 else torch.int8, device=x.device)
    scale = torch.empty(M, dtype=torch.float32, device=x.device)
    if M == 0:
        return q, scale
    single = K <= _SINGLE_PASS_MAX
    block = triton.next_power_of_2(K) if single else 2048
    # the interpreter pays per program: many rows each; compiled, a block of about 4096 elements per program
    rows = 1 if not single else min(triton.next_power_of_2(M), max(1, (2**14 if INTERPRET else 4096) // block))
    static = static_scale if static_scale is not None else scale
    _quantize_rows_kernel[(triton.cdiv(M, rows),)](
        x, q, scale, static, M, K, x.stride(0), q.stride(0), float(qlo), float(qhi), float(zero_point), float(qhi),
        float(min_scale), int(seed),
        STATIC=static_scale is not None, IS_FP8=fp8, STOCHASTIC=stochastic, USE_RINT=not INTERPRET,
        BLOCK_K=block, ROWS=rows, SINGLE=single,
        num_warps=1 if INTERPRET else min(max(rows * block // 256, 1), 16),
    )
    return q, scale


def _gemm_configs() -> list:
    """Tile shapes for RoBERTa's GEMMs (M = batch x length from 4096 to 65536; N, K in {768, 1024, 2304, 3072,
    4096}). Large tiles for the large-M shapes, small ones so that N = 768 or M = 4096 still fills the GPU."""
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 4}, num_warps=4,
                              num_stages=1)]
    shapes = [  # BLOCK_M, BLOCK_N, BLOCK_K, warps, stages
        (128, 256, 128, 8, 3), (256, 128, 128, 8, 3), (128, 128, 128, 8, 4), (128, 128, 128, 4, 4),
        (128, 128, 64, 4, 5), (64, 256, 128, 4, 4), (256, 64, 128, 4, 4), (128, 64, 128, 4, 5),
        (64, 128, 128, 4, 5), (64, 64, 128, 4, 6), (128, 256, 64, 8, 4), (256, 128, 64, 8, 4),
    ]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_warps=w, num_stages=s)
            for m, n, k, w, s in shapes]


@triton.autotune(configs=_gemm_configs(), key=["M_KEY", "N", "K", "IS_INT", "HAS_BIAS", "GELU", "HAS_ZP"])
@triton.jit
def _scaled_mm_kernel(
    a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, bias_ptr, a_zp_ptr, b_sum_ptr, M, N, K, M_KEY,
    stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn,
    IS_INT: tl.constexpr, HAS_BIAS: tl.constexpr, GELU: tl.constexpr, HAS_ZP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """C = epilogue(A @ B^T): A (M, K) and B (N, K) int8 (int32 accumulation) or fp8 e4m3 (float32
    accumulation); epilogue: minus a_zp[m] * b_sum[n] (an asymmetric A grid: b_sum = row sums of B, all int32),
    times a_scale[m] * b_scale[n], plus bias[n], GELU (erf), cast to C's dtype."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # grouped ordering: GROUP_M row-tiles share their B tiles in L2
    num_in_group = GROUP_M * num_pid_n
    group = pid // num_in_group
    first_m = group * GROUP_M
    group_size = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % num_in_group) % group_size
    pid_n = (pid % num_in_group) // group_size

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ram = tl.max_contiguous(tl.multiple_of(rm % M, BLOCK_M), BLOCK_M)  # wrapped rows: loads need no mask
    rbn = tl.max_contiguous(tl.multiple_of(rn % N, BLOCK_N), BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + ram[:, None].to(tl.int64) * stride_am + rk[None, :] * stride_ak
    b_ptrs = b_ptr + rbn[None, :].to(tl.int64) * stride_bn + rk[:, None] * stride_bk
    acc_type = tl.int32 if IS_INT else tl.float32
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_type)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        if IS_INT:
            a = tl.load(a_ptrs, mask=rk[None, :] < k_left, other=0)
            b = tl.load(b_ptrs, mask=rk[:, None] < k_left, other=0)
        else:
            a = tl.load(a_ptrs, mask=rk[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=rk[:, None] < k_left, other=0.0)
        acc += tl.dot(a, b, out_dtype=acc_type)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    if HAS_ZP:
        acc -= tl.load(a_zp_ptr + ram)[:, None] * tl.load(b_sum_ptr + rbn)[None, :]
    a_scale = tl.load(a_scale_ptr + ram)
    b_scale = tl.load(b_scale_ptr + rbn)
    out = acc.to(tl.float32) * a_scale[:, None] * b_scale[None, :]
    if HAS_BIAS:
        out = out + tl.load(bias_ptr + rbn).to(tl.float32)[None, :]
    if GELU:
        out = 0.5 * out * (1.0 + tl.math.erf(out * 0.7071067811865476))
    c_ptrs = c_ptr + rm[:, None].to(tl.int64) * stride_cm + rn[None, :] * stride_cn
    tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


def scaled_mm_triton(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
                     bias: torch.Tensor | None, gelu: bool, out_dtype: torch.dtype,
                     a_zero_point: torch.Tensor | None, b_sum: torch.Tensor | None) -> torch.Tensor:
    """See ``ops.scaled_mm`` (K > 0; scales float32 vectors of length M and N; zero points int32 (M,), b_sum
    int32 (N,))."""
    M, K = a.shape
    N = b.shape[0]
    c = torch.empty((M, N), dtype=out_dtype, device=a.device)
    if M == 0 or N == 0:
        return c
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    _scaled_mm_kernel[grid](
        a, b, c, a_scale, b_scale, bias if bias is not None else b_scale,
        a_zero_point if a_zero_point is not None else a_scale, b_sum if b_sum is not None else b_scale,
        M, N, K, triton.next_power_of_2(M),
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
        IS_INT=a.dtype == torch.int8, HAS_BIAS=bias is not None, GELU=gelu, HAS_ZP=a_zero_point is not None,
    )
    return c


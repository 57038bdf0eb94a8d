"""Real low-bit operations: row-wise quantization to int8/fp8 and the scaled INT8/FP8 GEMM.

Each runs the Triton kernel (``triton_kernels``) where it can: on a GPU, or anywhere with ``TRITON_INTERPRET=1``
(Triton's CPU interpreter, for tests). Elsewhere (a CPU without the interpreter, or no triton installed) it falls
back to PyTorch: ``torch._int_mm`` for INT8, a float32 product of the FP8 values for FP8. The reference
functions here define the results: the integer GEMM is exact (int32 accumulation) on every path; the FP8 GEMM
accumulates exact products in float32, so paths differ only by the order of that summation.
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

from ..core.estimators import MIN_SCALE

__all__ = [
    "FORMATS",
    "INT8_QMAX",
    "FP8_QMAX",
    "quantize_rows",
    "quantize_rows_reference",
    "scaled_mm",
    "scaled_mm_reference",
    "triton_available",
    "uses_triton",
]

FORMATS = ("int8", "fp8")
INT8_QMAX = 127.0  # the symmetric (narrow) int8 grid, as int_grid(8, signed=True, symmetric=True)
FP8_QMAX = 448.0  # the largest finite float8 e4m3 (fn) value
BACKENDS = ("auto", "triton", "torch")


@functools.cache
def _triton_module():
    try:
        from . import triton_kernels
    except ImportError:
        return None
    return triton_kernels


def triton_available() -> bool:
    """Whether the Triton kernels can be imported (triton installed)."""
    return _triton_module() is not None


def uses_triton(t: torch.Tensor, backend: str = "auto") -> bool:
    """Whether an operation on ``t`` runs the Triton kernel under ``backend``: ``auto`` on CUDA tensors or in
    the interpreter (``TRITON_INTERPRET=1``), ``triton`` always (an error where it cannot), ``torch`` never."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    ok = triton_available() and (t.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1")
    if backend == "triton" and not ok:
        raise RuntimeError("the Triton kernels need triton and a GPU, or TRITON_INTERPRET=1 on a CPU"
                           + ("" if triton_available() else " (triton is not installed)"))
    return ok


def _check_format(fmt: str) -> bool:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    return fmt == "fp8"


def quantize_rows(
    x: torch.Tensor,
    fmt: str = "int8",
    scale: torch.Tensor | None = None,
    qmax: float | None = None,
    stochastic: bool = False,
    seed: int | None = None,
    backend: str = "auto",
    zero_point: float = 0.0,
    qmin: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize the rows of the 2-D ``x`` onto the int8 or fp8 (e4m3) grid in one pass over it.

    ``scale=None``: each row gets its own scale ``max(|row|) / qmax`` (dynamic, row-wise); otherwise ``scale`` (one
    element, float32) is used for every row (a calibrated static scale), with an optional integer ``zero_point``
    and grid ``[qmin, qmax]`` (an asymmetric grid shifted into int8). ``qmax`` defaults to 127 for int8 (a
    narrower grid such as 7 holds 4-bit values) and 448 for fp8; ``qmin`` to ``-qmax``. Integers are
    ``clamp(round_half_even(x * (1 / scale)) + zero_point, qmin, qmax)`` — the grid of ``formats.fake_quant_int``
    — or, with ``stochastic`` (int8 only), ``floor(t + u)`` with ``u`` uniform from ``seed`` in place of the
    rounding; fp8 values are ``x * (1 / scale)`` clamped and rounded to e4m3. Returns ``(q, scales)``: ``q`` int8
    or float8_e4m3fn of x's shape, ``scales`` float32 (rows,).
    """
    fp8 = _check_format(fmt)
    if x.dim() != 2:
        raise ValueError(f"quantize_rows expects a 2-D tensor, got shape {tuple(x.shape)}")
    if stochastic and fp8:
        raise ValueError("stochastic rounding is implemented for int8 only")
    qhi = float(qmax if qmax is not None else FP8_QMAX if fp8 else INT8_QMAX)
    qlo = float(qmin if qmin is not None else -qhi)
    if scale is not None:
        scale = scale.detach().reshape(-1).float().to(x.device)
        if scale.numel() != 1:
            raise ValueError(f"a static scale has one element, got {scale.numel()}")
    elif zero_point or qlo != -qhi:
        raise ValueError("dynamic (row-wise) scales use the symmetric grid: zero_point and qmin need a static scale")
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (), device="cpu")) if stochastic else 0
    if uses_triton(x, backend):
        x = x if x.stride(-1) == 1 else x.contiguous()
        return _triton_module().quantize_rows_triton(x, fp8, qlo, qhi, float(zero_point), scale, stochastic, seed,
                                                     MIN_SCALE)
    return quantize_rows_reference(x, fmt, scale, qhi, stochastic, seed, zero_point, qlo)


def quantize_rows_reference(x, fmt="int8", scale=None, qmax=None, stochastic=False, seed=0, zero_point=0.0,
                            qmin=None):
    """``quantize_rows`` in PyTorch (the fallback, and the tests' reference)."""
    fp8 = _check_format(fmt)
    qhi = float(qmax if qmax is not None else FP8_QMAX if fp8 else INT8_QMAX)
    qlo = float(qmin if qmin is not None else -qhi)
    xf = x.float()
    if scale is None:
        scales = (xf.abs().amax(dim=1) / qhi).clamp(min=MIN_SCALE) if x.shape[1] else \
            torch.full((x.shape[0],), MIN_SCALE, device=x.device)
    else:
        scales = scale.reshape(-1).float().to(x.device).expand(x.shape[0]).clone()
    t = xf * scales.reciprocal()[:, None]
    if fp8:
        return t.clamp(qlo, qhi).to(torch.float8_e4m3fn), scales
    if stochastic:
        g = torch.Generator(device=x.device).manual_seed(seed)
        t = (t + torch.rand(t.shape, generator=g, device=x.device)).floor_()
    else:
        t = t.round()
    return (t + zero_point).clamp_(qlo, qhi).to(torch.int8), scales


def scaled_mm(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    gelu: bool = False,
    out_dtype: torch.dtype = torch.float32,
    backend: str = "auto",
    a_zero_point: torch.Tensor | float | None = None,
    b_sum: torch.Tensor | None = None,
) -> torch.Tensor:
    """``epilogue(a @ b.T)`` for int8 or float8_e4m3fn ``a`` (M, K) and ``b`` (N, K) — ``b`` laid out like an
    ``nn.Linear`` weight. The product accumulates in int32 (exactly) or float32; the epilogue multiplies row m,
    column n by ``a_scale[m] * b_scale[n]`` (each scale has one element or one per row / column), adds ``bias``
    (N,), applies GELU (erf form, fairseq's ``gelu``) and casts to ``out_dtype``. An int8 ``a`` on an asymmetric
    grid (``a = scale * (q - a_zero_point)``, one zero point or one per row) first has ``a_zero_point[m] *
    b_sum[n]`` subtracted from the int32 sums, ``b_sum`` being b's row sums (computed when not given) — exact."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"scaled_mm multiplies (M, K) by (N, K)^T, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype or a.dtype not in (torch.int8, torch.float8_e4m3fn):
        raise ValueError(f"scaled_mm takes two int8 or two float8_e4m3fn operands, got {a.dtype} and {b.dtype}")
    M, K = a.shape
    N = b.shape[0]
    a_scale = _scale_vector(a_scale, M, "a_scale", a.device)
    b_scale = _scale_vector(b_scale, N, "b_scale", a.device)
    if bias is not None and bias.shape != (N,):
        raise ValueError(f"bias must have shape ({N},), got {tuple(bias.shape)}")
    if a_zero_point is not None:
        if a.dtype != torch.int8:
            raise ValueError("a_zero_point is for int8 operands")
        a_zero_point = torch.as_tensor(a_zero_point, device=a.device).reshape(-1)
        if a_zero_point.dtype != torch.int32:
            a_zero_point = a_zero_point.round().to(torch.int32)
        if a_zero_point.numel() not in (1, M):
            raise ValueError(f"a_zero_point must have 1 or {M} elements, got {a_zero_point.numel()}")
        a_zero_point = a_zero_point.expand(M).contiguous()
        b_sum = (b.to(torch.int32).sum(1, dtype=torch.int32) if b_sum is None else b_sum.to(torch.int32)).contiguous()
    if K > 0 and uses_triton(a, backend):
        return _triton_module().scaled_mm_triton(a, a_scale, b, b_scale, bias, gelu, out_dtype, a_zero_point, b_sum)
    return scaled_mm_reference(a, a_scale, b, b_scale, bias, gelu, out_dtype, a_zero_point, b_sum)


def _scale_vector(s: torch.Tensor, n: int, name: str, device) -> torch.Tensor:
    s = s.detach().reshape(-1).float().to(device)
    if s.numel() not in (1, n):
        raise ValueError(f"{name} must have 1 or {n} elements, got {s.numel()}")
    return s.expand(n).contiguous()


def scaled_mm_reference(a, a_scale, b, b_scale, bias=None, gelu=False, out_dtype=torch.float32, a_zero_point=None,
                        b_sum=None):
    """``scaled_mm`` in PyTorch (the CPU fallback, and the tests' reference): ``torch._int_mm`` for int8."""
    if a.dtype == torch.int8:
        acc = _int_mm(a, b)
        if a_zero_point is not None:
            acc = acc - a_zero_point.reshape(-1, 1).to(torch.int32) * b_sum.reshape(1, -1).to(torch.int32)
        acc = acc.float()
    else:
        acc = a.float() @ b.float().t()
    out = acc * a_scale.reshape(-1, 1).float() * b_scale.reshape(1, -1).float()
    if bias is not None:
        out = out + bias.float()
    if gelu:
        out = F.gelu(out)
    return out.to(out_dtype)


def _int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact int32 ``a @ b.T`` of int8 matrices."""
    if a.shape[0] == 0 or b.shape[0] == 0 or a.shape[1] == 0:
        return torch.zeros(a.shape[0], b.shape[0], dtype=torch.int32, device=a.device)
    if a.is_cuda and (a.shape[0] <= 16 or a.shape[1] % 8 or b.shape[0] % 8):
        # cuBLAS's int8 GEMM needs M > 16 and K, N multiples of 8: pad with zero rows/columns (exact)
        M, K = a.shape
        N = b.shape[0]
        Mp, Kp, Np = max(M, 17), -(-K // 8) * 8, -(-N // 8) * 8
        a = F.pad(a, (0, Kp - K, 0, Mp - M))
        b = F.pad(b, (0, Kp - K, 0, Np - N))
        return torch._int_mm(a, b.t())[:M, :N]
    return torch._int_mm(a, b.t())

"""Number formats as pure tensor functions: ``x -> nearest representable value``.

No modules, no state, no flags. A format rounds a tensor onto its grid; where the grid has a scale and a zero
point (integers), they are arguments, computed elsewhere (``estimators.py``).

Integers of ``bits`` width, worked example: ``int_grid(4, signed=True, symmetric=True)`` is ``(-7, 7)``; with
``scale = 0.5`` and ``zero_point = 0`` the value 1.3 goes to ``round(1.3 / 0.5) * 0.5 = 1.5`` and 9.0 saturates to
``7 * 0.5 = 3.5``.
"""
from __future__ import annotations

import torch

__all__ = ["int_grid", "fake_quant_int"]

MIN_BITS, MAX_BITS = 2, 16


def int_grid(bits: int, signed: bool, symmetric: bool) -> tuple[int, int]:
    """The integer range ``(qmin, qmax)`` of a ``bits``-wide grid.

    Symmetric signed grids are narrow (``-(2^(b-1) - 1) .. 2^(b-1) - 1``) so that zero sits in the middle and
    ``+amax`` and ``-amax`` are both representable, as INT8 GEMM kernels expect; asymmetric signed grids use the
    full two's-complement range; unsigned grids are ``0 .. 2^b - 1``.
    """
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits}")
    if not signed:
        return 0, 2**bits - 1
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


class _FakeQuantInt(torch.autograd.Function):
    """Integer fake quantization with a straight-through gradient inside the grid's range (zero outside)."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        t = x * scale.reciprocal()
        t.round_()  # half to even
        if zero_point is not None:
            t.add_(zero_point)
        q = t.clamp(qmin, qmax)  # NaN stays NaN; +-inf saturate
        ctx.save_for_backward(q == t)  # inside the range (1 byte per element)
        if zero_point is not None:
            q.sub_(zero_point)
        return q.mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def fake_quant_int(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    qmin: int,
    qmax: int,
    axis: int | None = None,
) -> torch.Tensor:
    """Round ``x`` to ``(clamp(round_half_even(x / scale) + zero_point, qmin, qmax) - zero_point) * scale``.

    ``scale`` (float32, > 0) and ``zero_point`` (integer-valued float32, or ``None`` for 0) have one element, or
    one per slice along ``axis``. The gradient is straight-through inside the grid's range and zero outside it.
    16-bit floating inputs are rounded in float32 and returned in their own dtype; NaN stays NaN and +-inf
    saturates to the range's ends. (``x / scale`` is computed as ``x * (1 / scale)``, as torch's
    ``fake_quantize_per_tensor_affine`` does.)
    """
    out_dtype = x.dtype
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero_point = None if zero_point is None else zero_point.reshape(shape)
    else:
        scale = scale.reshape(())
        zero_point = None if zero_point is None else zero_point.reshape(())
    return _FakeQuantInt.apply(xf, scale, zero_point, qmin, qmax).to(out_dtype)

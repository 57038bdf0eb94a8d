"""Range estimators: tensor (+ their own running state) -> range -> scale and zero point.

Policy for non-finite values: ranges are estimated over the finite elements only (NaN and +-inf are ignored),
so one bad batch never poisons a range; a tensor with no finite element leaves the range where it was. A range
is therefore always finite, and ``int_qparams`` always returns a positive finite scale, so quantizing a finite
tensor can never produce NaN.
"""
from __future__ import annotations

import torch

from .formats import int_grid

__all__ = ["current_minmax", "running_average", "int_qparams"]

# The smallest scale: 1/scale stays finite in float32, so 0 * (1/scale) is 0, never NaN.
MIN_SCALE = torch.finfo(torch.float32).tiny


def current_minmax(x: torch.Tensor, axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of the finite elements of ``x``, over the whole tensor or per slice along ``axis``.

    Returns float32 tensors of shape ``()`` (``axis=None``) or ``(x.shape[axis],)``. Slices without a finite
    element get NaN, which ``running_average`` and ``int_qparams`` treat as "no information".
    """
    xf = x.detach()
    if axis is None:
        mn, mx = torch.aminmax(xf)
    else:
        xf = xf.movedim(axis, 0).reshape(x.shape[axis], -1)
        mn, mx = xf.amin(dim=1), xf.amax(dim=1)  # faster than aminmax(dim=1) on CPU
    mn, mx = mn.float(), mx.float()
    if not bool(torch.isfinite(mn).all() & torch.isfinite(mx).all()):
        finite = torch.isfinite(xf)
        big = torch.finfo(xf.dtype).max
        lo = torch.where(finite, xf, big)
        hi = torch.where(finite, xf, -big)
        if axis is None:
            mn, mx = lo.min().float(), hi.max().float()
        else:
            mn, mx = lo.min(dim=1).values.float(), hi.max(dim=1).values.float()
        none = ~finite.reshape(finite.shape[0], -1).any(dim=1) if axis is not None else ~finite.any()
        mn = torch.where(none, torch.nan, mn)
        mx = torch.where(none, torch.nan, mx)
    return mn, mx


def running_average(
    running: torch.Tensor, current: torch.Tensor, momentum: float, initialized: bool
) -> torch.Tensor:
    """``momentum * running + (1 - momentum) * current``; the first observation initialises the average.

    Elements where ``current`` is NaN (no finite data) keep their running value.
    """
    new = current if not initialized else momentum * running + (1.0 - momentum) * current
    return torch.where(torch.isnan(current), running, new)


def int_qparams(
    lo: torch.Tensor, hi: torch.Tensor, bits: int, signed: bool, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Scale, zero point and integer range that map the range ``[lo, hi]`` onto a ``bits``-wide grid.

    The range is first widened to contain 0, so zero is always exactly representable. Symmetric grids use
    ``scale = max(|lo|, |hi|) / qmax`` and zero point 0 (unsigned symmetric: ``hi / qmax``, for non-negative data);
    asymmetric grids use ``scale = (hi - lo) / (qmax - qmin)`` and ``zero_point = qmin - round(lo / scale)``.
    Example: ``lo=-1, hi=3, bits=8``, unsigned asymmetric: ``scale = 4/255``, ``zero_point = 64``.
    Returns ``(scale, zero_point, qmin, qmax)``: float32 tensors, the zero point integer-valued (``None`` for
    symmetric grids, where it is 0); NaN (unknown) ranges count as 0.
    """
    qmin, qmax = int_grid(bits, signed, symmetric)
    lo = torch.nan_to_num(lo.float(), nan=0.0).clamp(max=0.0)
    hi = torch.nan_to_num(hi.float(), nan=0.0).clamp(min=0.0)
    if symmetric:
        amax = hi if not signed else torch.maximum(-lo, hi)
        scale = (amax / qmax).clamp(min=MIN_SCALE)
        zero_point = None
    else:
        scale = ((hi - lo) / (qmax - qmin)).clamp(min=MIN_SCALE)
        zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax).reshape(-1)
    return scale.reshape(-1), zero_point, qmin, qmax

"""Range estimators: tensor (+ their own running state) -> range -> scale and zero point.

Policy for non-finite values: ranges are estimated over the finite elements only (NaN and +-inf are ignored),
so one bad batch never poisons a range; a tensor with no finite element leaves the range where it was. A range
is therefore always finite, and ``int_qparams`` always returns a positive finite scale, so quantizing a finite
tensor can never produce NaN.

Besides the min-max, the clipping estimators ``percentile_range`` and ``mse_range``, and the pieces of
per-embedding-group ranges (PEG, Bondarenko et al., EMNLP 2021: ``group_index``, ``per_dim_minmax``,
``group_minmax``, ``expand_groups``) are pure functions of a tensor: no state, no flags.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .formats import fake_quant_int, int_grid

__all__ = [
    "ESTIMATORS",
    "Estimator",
    "current_minmax",
    "running_average",
    "combine_ranges",
    "int_qparams",
    "percentile_range",
    "MSE_METHODS",
    "mse_range",
    "group_index",
    "per_dim_minmax",
    "group_minmax",
    "expand_groups",
]

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
    # On a CPU, eager: look, and take the second pass only where a non-finite value is. On a GPU or under
    # torch.compile looking is a device-to-host sync (and a graph break), so the second pass always runs.
    sync_free = xf.device.type != "cpu" or torch.compiler.is_compiling()
    if sync_free or not bool(torch.isfinite(mn).all() & torch.isfinite(mx).all()):
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


def combine_ranges(lo: torch.Tensor, hi: torch.Tensor, across: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One range from the ranges of several shards of a batch (rows of ``lo``/``hi``, e.g. one per data-parallel
    worker), by the estimator's ``across`` rule: ``extremes`` (smallest ``lo``, largest ``hi``) or ``mean``. A shard
    with no finite data (NaN) is left out; where every shard is NaN the result is NaN (the range stays as it was)."""
    if across == "extremes":
        return functools.reduce(torch.fmin, lo.unbind(0)), functools.reduce(torch.fmax, hi.unbind(0))
    if across == "mean":
        return torch.nanmean(lo, 0), torch.nanmean(hi, 0)
    raise ValueError(f"across must be extremes or mean, got {across!r}")


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


# ---------------------------------------------------------------------------------------------------------------
# Clipping ranges: a range narrower than the min-max, chosen from the data.


def _rows(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``x`` as a 2-D ``(slices, elements)`` view or copy: one row (``axis=None``) or one per slice along ``axis``."""
    xf = x.detach()
    return xf.reshape(1, -1) if axis is None else xf.movedim(axis, 0).reshape(x.shape[axis], -1)


def _range_shape(lo: torch.Tensor, hi: torch.Tensor, axis: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ranges as float32, shape ``()`` for ``axis=None``."""
    lo, hi = lo.float(), hi.float()
    return (lo.reshape(()), hi.reshape(())) if axis is None else (lo, hi)


def percentile_range(
    x: torch.Tensor, percentile: float, axis: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(100 - percentile)``-th and ``percentile``-th percentiles of the finite elements of ``x``.

    Percentiles interpolate linearly between order statistics, as ``torch.quantile`` and ``numpy.percentile``
    do: the p-th percentile of ``n`` sorted values sits at position ``p / 100 * (n - 1)``. Example:
    ``percentile_range(torch.arange(10001.), 99.99)`` is ``(1.0, 9999.0)``; ``percentile=99`` on
    ``torch.arange(11.)`` gives ``(0.1, 9.9)``; ``percentile=100`` is the min-max. ``percentile`` must be in
    ``(50, 100]`` (ValueError otherwise). NaN and +-inf are left out (each slice counts its own finite elements).

    Returns float32 tensors of shape ``()`` (``axis=None``) or ``(x.shape[axis],)``; slices without a finite
    element get NaN, as in ``current_minmax``. Exact at any size (``torch.quantile`` stops at 2^24 elements): the
    two ends come from ``torch.topk`` of the ``(100 - percentile)%`` tail on each side, which is also several times
    faster than a full sort for the tail percentiles used for clipping (99.9, 99.99).
    """
    if not 50 < percentile <= 100:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    rows = _rows(x, axis)
    finite = torch.isfinite(rows)
    count = finite.sum(dim=1)
    last = (count - 1).clamp(min=0)
    # both ends sit at the same distance from their end of the sorted row: (1 - p/100) * (n - 1)
    pos = (100.0 - percentile) / 100.0 * last.double()
    i0 = pos.floor().long()
    i1 = torch.minimum(i0 + 1, last)
    weight = (pos - i0).unsqueeze(1)
    # how deep into each tail: from the row length (a bound on the finite count), so no value is read back
    n = rows.shape[1]
    k = min(int((100.0 - percentile) / 100.0 * max(n - 1, 0)) + 2, n)
    if k == 0:
        nan = torch.full((rows.shape[0],), torch.nan, device=rows.device)
        return _range_shape(nan, nan, axis)
    ends = []
    for largest in (False, True):
        fill = -torch.inf if largest else torch.inf  # non-finite elements go behind the finite ones
        r = torch.where(finite, rows, fill)
        tail = torch.topk(r, k, dim=1, largest=largest, sorted=True).values.double()
        v0, v1 = tail.gather(1, i0.unsqueeze(1)), tail.gather(1, i1.unsqueeze(1))
        end = (v0 + weight * (v1 - v0)).squeeze(1)
        ends.append(torch.where(count > 0, end, torch.nan))
    return _range_shape(ends[0], ends[1], axis)


MSE_METHODS = ("golden", "grid")
_MSE_BLOCK = 2**20


def _mse_of_alphas(
    rows: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    alphas: torch.Tensor,
    bits: int,
    signed: bool,
    symmetric: bool,
) -> torch.Tensor:
    """Mean squared fake-quantization error of each row of ``rows`` (R, n) for each range ``alpha * [lo, hi]``.

    ``lo``, ``hi``: (R,); ``alphas``: (A,). Returns float64 (A, R). The rows are fake-quantized with
    ``fake_quant_int`` (the rounding the model uses), several alphas at once, in blocks of about ``_MSE_BLOCK``
    elements.
    """
    n_rows, n = rows.shape
    # small blocks: fresh large CPU allocations cost more (page faults) than the arithmetic on them
    block = max(1, _MSE_BLOCK // max(rows.numel(), 1))
    out = []
    for a in alphas.split(block):
        a = a.to(rows.device, torch.float32).unsqueeze(1)  # (B, 1)
        scale, zero_point, qmin, qmax = int_qparams((a * lo).reshape(-1), (a * hi).reshape(-1), bits, signed, symmetric)
        stacked = rows.expand(len(a), n_rows, n).reshape(-1, n)
        err = fake_quant_int(stacked, scale, zero_point, qmin, qmax, axis=0).sub_(stacked)
        sse = torch.linalg.vector_norm(err, dim=1).double().square()
        out.append((sse / max(n, 1)).reshape(len(a), n_rows))
    return torch.cat(out)


def mse_range(
    x: torch.Tensor,
    bits: int,
    signed: bool,
    symmetric: bool,
    method: str = "golden",
    grid_points: int = 100,
    axis: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipping range that minimises the mean squared error between ``x`` and its integer fake quantization.

    The range is a fraction ``alpha`` in ``(0, 1]`` of the min-max range of the finite elements (``current_minmax``):
    signed symmetric grids use ``hi = alpha * max(|min|, |max|)``, ``lo = -hi``; the others ``lo = alpha * min``,
    ``hi = alpha * max``. The error of a range is that of ``fake_quant_int(x, *int_qparams(lo, hi, bits, signed,
    symmetric), axis)`` over the finite elements. Example: 2^18 samples of N(0, 1), ``bits=4``, signed
    symmetric: ``hi`` ~ 2.47 (the expected-MSE optimum of this 15-level grid; Banner et al. 2019 give 2.55 for
    2^4 levels), with ~0.35x the MSE of the min-max range (amax ~4.66); uniform data keep ``alpha`` ~ 1.

    ``method``: ``"golden"`` minimises over ``alpha`` with ``scipy.optimize.minimize_scalar(method="bounded")``
    (Brent's method, ``alpha`` to ~1e-5), then keeps ``alpha = 1`` if that is no worse; per channel it runs one
    search per slice, a Python loop (15 to 30 passes over each slice: slow for thousands of channels, prefer
    ``"grid"`` there). ``"grid"`` evaluates ``alpha = k / grid_points``, ``k = 1 .. grid_points``, all slices at
    once, and picks the best per slice (ties to the larger ``alpha``). The error is not convex in ``alpha``
    (rounding makes it ripple), so either may miss the global optimum by a small margin.

    Returns float32 ``(lo, hi)`` of shape ``()`` (``axis=None``) or ``(x.shape[axis],)``; NaN for slices without a
    finite element. Raises ValueError for an unknown ``method``, ``grid_points < 1`` or bad ``bits``.
    """
    if method not in MSE_METHODS:
        raise ValueError(f"method must be one of {MSE_METHODS}, got {method!r}")
    if isinstance(grid_points, bool) or not isinstance(grid_points, int) or grid_points < 1:
        raise ValueError(f"grid_points must be a positive integer, got {grid_points!r}")
    int_grid(bits, signed, symmetric)
    lo, hi = current_minmax(x, axis)
    lo, hi = lo.reshape(-1), hi.reshape(-1)
    if signed and symmetric:
        hi = torch.maximum(-lo, hi)
        lo = -hi
    rows = _rows(x, axis).float()
    # non-finite elements become 0, which every grid holds exactly: they add no error, so the argmin is unchanged
    rows = torch.where(torch.isfinite(rows), rows, 0.0)
    if method == "grid":
        alphas = torch.arange(1, grid_points + 1, dtype=torch.float64) / grid_points
        mse = _mse_of_alphas(rows, lo, hi, alphas, bits, signed, symmetric)  # (A, R)
        best = (grid_points - 1) - mse.flip(0).argmin(dim=0)  # the last minimum: ties to the larger alpha
        alpha = alphas.to(rows.device)[best].float()
    else:
        # imported here: only this search needs scipy, and every import of the plugin would pay for it
        from scipy.optimize import minimize_scalar

        alpha = torch.ones(len(lo), device=rows.device)
        for r in range(len(lo)):
            args = (rows[r : r + 1], lo[r : r + 1], hi[r : r + 1])

            def error(a: float, args=args) -> float:
                return float(_mse_of_alphas(*args, torch.tensor([a]), bits, signed, symmetric))

            res = minimize_scalar(error, bounds=(0.0, 1.0), method="bounded", options={"xatol": 1e-5})
            if res.fun < error(1.0):
                alpha[r] = res.x
    return _range_shape(alpha * lo, alpha * hi, axis)


# ---------------------------------------------------------------------------------------------------------------
# Per-embedding-group ranges (PEG; Bondarenko et al., "Understanding and Overcoming the Challenges of Efficient
# Transformer Quantization", EMNLP 2021): activations (..., C) share one range per group of embedding dims, so the
# few outlier dims of a transformer's residual stream do not coarsen the grid of all the others.


def group_index(ranges: torch.Tensor, groups: int, permute: bool) -> torch.Tensor:
    """The group (0 .. ``groups - 1``) of each of the ``C`` embedding dims: an int64 tensor of shape ``(C,)``.

    Without ``permute`` the dims are split into contiguous groups as equal as possible, larger ones first
    (as ``numpy.array_split``): ``C=10, groups=3`` -> ``[0, 0, 0, 0, 1, 1, 1, 2, 2, 2]``. With ``permute``
    (the paper's range-based permutation) the same split is applied to the dims sorted by ``ranges`` (shape
    ``(C,)``, e.g. ``hi - lo`` per dim; NaN sorts as the largest), so dims of similar range share a group and the
    widest dims are all in the last group: ``ranges=[1, 9, 2, 8]``, ``groups=2`` -> ``[0, 1, 0, 1]``.
    ``groups`` must be 1 .. C (ValueError otherwise); ``groups=1`` is per tensor, ``groups=C`` per embedding dim.
    """
    channels = ranges.numel()
    if isinstance(groups, bool) or not isinstance(groups, int) or not 1 <= groups <= channels:
        raise ValueError(f"groups must be an integer from 1 to {channels} (the embedding dim), got {groups!r}")
    size, extra = divmod(channels, groups)  # the first `extra` groups hold size + 1 dims
    dim = torch.arange(channels, device=ranges.device)
    cut = extra * (size + 1)
    split = torch.where(dim < cut, dim // (size + 1), extra + (dim - cut) // size)
    if not permute:
        return split
    order = torch.argsort(ranges.reshape(-1), stable=True)
    return torch.empty_like(split).scatter_(0, order, split)


def per_dim_minmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of the finite elements of ``x`` (..., C) per embedding dim (over all but the last dim).

    Float32 tensors of shape ``(C,)``; NaN for dims without a finite element. ``x = [[1, -2], [3, 0]]`` ->
    ``([1, -2], [3, 0])``. (``current_minmax(x, axis=-1)``.)
    """
    return current_minmax(x, axis=-1)


def group_minmax(
    lo: torch.Tensor, hi: torch.Tensor, index: torch.Tensor, groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The range of each group: min of ``lo`` and max of ``hi`` (each ``(C,)``) over the dims ``index`` puts in it.

    Returns float32 ``(glo, ghi)`` of shape ``(groups,)``. NaN entries (dims without data) are left out; a group with
    none left gets NaN. ``lo=[0, -2, -1]``, ``hi=[1, 5, 3]``, ``index=[0, 1, 0]`` -> ``([-1, -2], [3, 5])``.
    """
    inf = torch.full((groups,), torch.inf, device=lo.device)
    lo = torch.where(torch.isnan(lo), torch.inf, lo.float())
    hi = torch.where(torch.isnan(hi), -torch.inf, hi.float())
    glo = inf.scatter_reduce(0, index, lo, "amin")
    ghi = (-inf).scatter_reduce(0, index, hi, "amax")
    return torch.where(torch.isinf(glo), torch.nan, glo), torch.where(torch.isinf(ghi), torch.nan, ghi)


def expand_groups(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Per-group ``values`` (G,) as per-dim values (C,): ``values[index]``; ``[10, 20]``, ``[0, 1, 0]`` ->
    ``[10, 20, 10]``. With ``int_qparams`` and ``fake_quant_int(..., axis=-1)`` this quantizes x per group."""
    return values[index]


# ---------------------------------------------------------------------------------------------------------------
# The registry: a spec's ``estimator`` names one of these; each takes (tensor, axis, spec) and returns float32
# (lo, hi) of shape () or (x.shape[axis],), as ``current_minmax`` does.


@dataclass(frozen=True)
class Estimator:
    """One range estimator: ``estimate(x, axis, spec) -> (lo, hi)``; ``integer_only``: it searches an integer
    grid (the spec's bits, signedness and symmetry), so floating-point formats cannot use it; ``across``: how the
    estimates of several shards of one batch (data-parallel workers) combine: ``extremes`` (the smallest ``lo``
    and largest ``hi``: for min-max, exactly the range of the whole batch) or ``mean`` (the average of the
    shards' ranges: a percentile or an MSE-optimal clipping range has no exact combination)."""

    estimate: Callable[[torch.Tensor, int | None, object], tuple[torch.Tensor, torch.Tensor]]
    integer_only: bool = False
    across: str = "mean"


ESTIMATORS: dict[str, Estimator] = {
    "minmax": Estimator(lambda x, axis, spec: current_minmax(x, axis), across="extremes"),
    "percentile": Estimator(lambda x, axis, spec: percentile_range(x, spec.percentile, axis)),
    "mse": Estimator(lambda x, axis, spec: mse_range(x, spec.bits, spec.signed, spec.symmetric, "golden", axis=axis),
                     integer_only=True),
    "mse_grid": Estimator(lambda x, axis, spec: mse_range(x, spec.bits, spec.signed, spec.symmetric, "grid",
                                                          axis=axis), integer_only=True),
}

"""QuantSpec: what one quantization point does — data only, no behaviour."""
from __future__ import annotations

from dataclasses import dataclass, replace

from .formats import MAX_BITS, MIN_BITS, ROUNDINGS, IntFormat, get_format

__all__ = ["ESTIMATORS", "MODES", "SCALINGS", "QuantSpec", "float_format_error"]

MODES = ("off", "measure", "quantize")
SCALINGS = ("none", "amax")
ESTIMATORS = ("minmax", "percentile", "mse", "mse_grid")


def float_format_error(value) -> str | None:
    """Why ``value`` is not a floating-point (minifloat or posit) format name, or None if it is one."""
    try:
        fmt = get_format(value)
    except (ValueError, TypeError) as e:
        return str(e)
    if isinstance(fmt, IntFormat):
        return f"{value!r} is an integer format: use format 'int' with bits={fmt.bits}"
    return None


@dataclass(frozen=True)
class QuantSpec:
    """The settings of one quantization point.

    mode: ``off`` (identity), ``measure`` (record ranges, leave the tensor unchanged) or ``quantize``.
    format: ``int`` — an integer grid of ``bits`` (2..16), ``signed``/``symmetric`` (see ``formats.int_grid``),
        scaled to the measured range — or a floating-point format name (``fp8_e4m3``, ``e8m7`` (bfloat16),
        ``posit8_1``, ...; see ``formats.get_format``), used unscaled unless ``scaling="amax"``.
    scaling: for floating-point formats, ``none`` (the format's own values) or ``amax``: the tensor is divided by
        ``amax / format.max`` first, so its largest magnitude maps onto the format's largest value (FP8 training).
    rounding: ``nearest`` (ties to even) or ``stochastic``.
    grad_format: a floating-point format for the gradient flowing back through this point (amax-scaled per
        tensor), or ``None`` to leave gradients in full precision.
    per_channel: one range per output channel (axis 0, weights) instead of one per tensor.
    dynamic: ranges from the current tensor (batch) instead of a running average.
    momentum: running average ``r <- momentum * r + (1 - momentum) * current`` (updated in training mode only).
    estimator: how one tensor's range is estimated: ``minmax``, ``percentile`` (``percentile``-th and
        ``100 - percentile``-th percentiles), ``mse`` (the clipping range minimising the quantization MSE, golden
        section search) or ``mse_grid`` (the same over a grid of 100 candidates).
    groups: per-embedding-group ranges: the last dimension split into this many groups (0: off; activations only,
        integer grids); ``permute``: groups of dimensions with similar ranges (Bondarenko et al.'s PEG permutation)
        instead of contiguous ones.
    learned: the scale (and zero point) are trained by gradient descent (LSQ), initialised from the estimate.
    """

    mode: str = "off"
    bits: int = 8
    signed: bool = True
    symmetric: bool = True
    per_channel: bool = False
    dynamic: bool = False
    momentum: float = 0.9
    format: str = "int"
    scaling: str = "none"
    rounding: str = "nearest"
    grad_format: str | None = None
    estimator: str = "minmax"
    percentile: float = 99.99
    groups: int = 0
    permute: bool = False
    learned: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"quantizer mode must be one of {MODES}, got {self.mode!r}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {self.bits!r}")
        if isinstance(self.momentum, bool) or not isinstance(self.momentum, (int, float)) \
                or not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be a number in [0, 1), got {self.momentum!r}")
        if self.format != "int" and (why := float_format_error(self.format)):
            raise ValueError(f"format must be 'int' or a floating-point format: {why}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {self.scaling!r}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {self.rounding!r}")
        if self.grad_format is not None and (why := float_format_error(self.grad_format)):
            raise ValueError(f"grad_format must be a floating-point format: {why}")
        for name in ("signed", "symmetric", "per_channel", "dynamic", "permute", "learned"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)) \
                or not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be a number in (50, 100], got {self.percentile!r}")
        if isinstance(self.groups, bool) or not isinstance(self.groups, int) or self.groups < 0:
            raise ValueError(f"groups must be a non-negative integer, got {self.groups!r}")
        if self.groups and (self.per_channel or not self.is_int or self.learned):
            raise ValueError("embedding groups are for integer grids with running or current (not learned) ranges, "
                             "and exclude per-channel ranges")
        if self.permute and not self.groups:
            raise ValueError("permute reorders embedding groups: it needs groups > 0")
        if self.estimator.startswith("mse") and not self.is_int:
            raise ValueError(f"estimator {self.estimator!r} searches integer grids; floating-point formats use "
                             f"minmax or percentile")
        if self.learned and not self.is_int:
            raise ValueError("learned ranges are for integer grids")

    @property
    def is_int(self) -> bool:
        return self.format == "int"

    @property
    def width(self) -> int:
        """Bits per value: ``bits`` for integer grids, the format's width otherwise."""
        return self.bits if self.is_int else get_format(self.format).bits

    @property
    def needs_range(self) -> bool:
        """Whether quantizing needs a range estimate (integer grids and amax-scaled formats do)."""
        return self.is_int or self.scaling == "amax"

    @property
    def grid_name(self) -> str:
        """``int8``, ``uint4``, ``fp8_e4m3`` or ``fp8_e4m3*amax``: the grid, for reports."""
        if self.is_int:
            return f"{'int' if self.signed else 'uint'}{self.bits}"
        name = get_format(self.format).name
        return name + ("*amax" if self.scaling == "amax" else "")

    def replace(self, **changes) -> QuantSpec:
        """A copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)

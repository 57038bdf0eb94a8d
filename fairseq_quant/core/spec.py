"""QuantSpec: what one quantization point does — data only, no behaviour. Every rule on a spec's values is here,
checked when a spec is made; flags and recipe keys are translated into a spec and get their messages from it."""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .estimators import ESTIMATORS
from .formats import MAX_BITS, MIN_BITS, ROUNDINGS, IntFormat, check_bits, get_format

__all__ = ["MODES", "SCALINGS", "QuantSpec", "float_format_error", "int_format"]

MODES = ("off", "measure", "quantize")
SCALINGS = ("none", "amax")
_INT = re.compile(r"(u?)int(\d+)")


def int_format(bits: int, signed: bool = True) -> str:
    """The name of an integer grid of ``bits``: ``int_format(4) == "int4"``, ``int_format(8, False) == "uint8"``."""
    return f"{'' if signed else 'u'}int{bits}"


def float_format_error(value) -> str | None:
    """Why ``value`` is not a floating-point (minifloat or posit) format name, or None if it is one."""
    try:
        fmt = get_format(value)
    except (ValueError, TypeError) as e:
        return str(e)
    if isinstance(fmt, IntFormat):
        return f"{value!r} is an integer format, not a floating-point one"
    return None


@dataclass(frozen=True)
class QuantSpec:
    """The settings of one quantization point.

    mode: ``off`` (identity), ``measure`` (record ranges, leave the tensor unchanged) or ``quantize``.
    format: one value names the grid: ``intN`` / ``uintN`` (N = 2..16), an integer grid of N bits scaled to the
        measured range (signed or unsigned; see ``formats.int_grid``), or a floating-point format (``fp8_e4m3``,
        ``e8m7`` (bfloat16), ``posit8_1``, ...; see ``formats.get_format``), used unscaled unless
        ``scaling="amax"``. As in ModelOpt, where ``num_bits`` is 8 for int8 and (4, 3) for E4M3.
    symmetric: integer grids: symmetric around zero (signed: ``-(2^(N-1)-1) .. 2^(N-1)-1``, no zero point) or
        asymmetric (with a zero point).
    scaling: for floating-point formats, ``none`` (the format's own values) or ``amax``: the tensor is divided by
        ``amax / format.max`` first, so its largest magnitude maps onto the format's largest value (FP8 training).
    rounding: ``nearest`` (ties to even) or ``stochastic``.
    grad_format: a floating-point format for the gradient flowing back through this point (amax-scaled per
        tensor), or ``None`` to leave gradients in full precision.
    per_channel: one range per output channel (axis 0, weights) instead of one per tensor.
    dynamic: ranges from the current tensor (batch) instead of a running average.
    momentum: running average ``r <- momentum * r + (1 - momentum) * current`` (updated in training mode only).
    estimator: how one tensor's range is estimated, a key of ``estimators.ESTIMATORS``: ``minmax``, ``percentile``
        (``percentile``-th and ``100 - percentile``-th percentiles), ``mse`` (the clipping range minimising the
        quantization MSE, golden section search) or ``mse_grid`` (the same over a grid of 100 candidates).
    groups: per-embedding-group ranges: the last dimension split into this many groups (0: off; activations only,
        integer grids); ``permute``: groups of dimensions with similar ranges (Bondarenko et al.'s PEG permutation)
        instead of contiguous ones.
    learned: the scale (and zero point) are trained by gradient descent (LSQ), initialised from the estimate.
    """

    mode: str = "off"
    format: str = "int8"
    symmetric: bool = True
    per_channel: bool = False
    dynamic: bool = False
    momentum: float = 0.9
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
        m = _INT.fullmatch(self.format) if isinstance(self.format, str) else None
        if m:
            check_bits(int(m[2]))
        elif why := float_format_error(self.format):
            raise ValueError(f"format must be intN, uintN (N = {MIN_BITS}..{MAX_BITS}) or a floating-point "
                             f"format: {why}")
        if isinstance(self.momentum, bool) or not isinstance(self.momentum, (int, float)) \
                or not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be a number in [0, 1), got {self.momentum!r}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {self.scaling!r}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {self.rounding!r}")
        if self.grad_format is not None and (why := float_format_error(self.grad_format)):
            raise ValueError(f"grad_format must be a floating-point format: {why}")
        for name in ("symmetric", "per_channel", "dynamic", "permute", "learned"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {tuple(ESTIMATORS)}, got {self.estimator!r}")
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
        if ESTIMATORS[self.estimator].integer_only and not self.is_int:
            raise ValueError(f"estimator {self.estimator!r} searches integer grids; floating-point formats use "
                             f"minmax or percentile")
        if self.learned and not self.is_int:
            raise ValueError("learned ranges are for integer grids")

    @property
    def is_int(self) -> bool:
        """Whether the format is an integer grid (``intN`` / ``uintN``)."""
        return _INT.fullmatch(self.format) is not None

    @property
    def bits(self) -> int:
        """Bits per value: N of ``intN``/``uintN``, the floating-point format's width otherwise."""
        m = _INT.fullmatch(self.format)
        return int(m[2]) if m else get_format(self.format).bits

    @property
    def signed(self) -> bool:
        """Integer grids: ``intN`` (True) or ``uintN``; floating-point formats are signed."""
        return not self.format.startswith("uint")

    @property
    def needs_range(self) -> bool:
        """Whether quantizing needs a range estimate (integer grids and amax-scaled formats do)."""
        return self.is_int or self.scaling == "amax"

    @property
    def grid_name(self) -> str:
        """``int8``, ``uint4``, ``fp8_e4m3`` or ``fp8_e4m3*amax``: the grid, for reports."""
        if self.is_int:
            return self.format
        return get_format(self.format).name + ("*amax" if self.scaling == "amax" else "")

    def with_bits(self, bits: int) -> QuantSpec:
        """The same spec on an integer grid of ``bits`` (cyclic precision); floating-point formats have no other
        width (ValueError)."""
        if not self.is_int:
            raise ValueError(f"{self.format} has a fixed width; only integer grids change their bits")
        return self.replace(format=int_format(bits, self.signed))

    def replace(self, **changes) -> QuantSpec:
        """A copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)

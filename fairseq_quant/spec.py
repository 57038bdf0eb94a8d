"""QuantSpec: what one quantization point does — data only, no behaviour."""
from __future__ import annotations

from dataclasses import dataclass, replace

from .formats import MAX_BITS, MIN_BITS

__all__ = ["MODES", "QuantSpec"]

MODES = ("off", "measure", "quantize")


@dataclass(frozen=True)
class QuantSpec:
    """The settings of one quantization point.

    mode: ``off`` (identity), ``measure`` (record ranges, leave the tensor unchanged) or ``quantize``.
    bits: integer grid width, 2..16. signed / symmetric: the grid (see ``formats.int_grid``).
    per_channel: one range per output channel (axis 0, weights) instead of one per tensor.
    dynamic: ranges from the current tensor (batch) instead of a running average.
    momentum: running average ``r <- momentum * r + (1 - momentum) * current`` (updated in training mode only).
    """

    mode: str = "off"
    bits: int = 8
    signed: bool = True
    symmetric: bool = True
    per_channel: bool = False
    dynamic: bool = False
    momentum: float = 0.9

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"quantizer mode must be one of {MODES}, got {self.mode!r}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {self.bits!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")

    def replace(self, **changes) -> QuantSpec:
        """A copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)

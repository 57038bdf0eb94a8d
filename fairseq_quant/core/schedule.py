"""Cyclic precision training (CPT): the bit schedule as a pure function of the update number, and cfg_cpt.json.

CPT (Fu et al., ICLR 2021) cycles the weight and input bit widths between a minimum and a maximum with a cosine,
``num_cyclic_period`` times over the run, each cycle rising from the minimum towards the maximum::

    phase(t) = frac(t * num_cyclic_period / total_updates)                       # in [0, 1)
    bits(t)  = round(b_min + (b_max - b_min) * (1 - cos(pi * phase(t))) / 2)     # half to even, as np.rint

``t`` is the number of updates done before the current one (0 for the first update, ``total_updates - 1`` for
the last), which is what fairseq passes to ``model.set_num_updates`` on each training step. When
``total_updates`` is a multiple of ``num_cyclic_period`` this is exactly the reference implementation's
``cos((t % period) / period * pi)`` with ``period = total_updates // num_cyclic_period``; otherwise the cycles
have fractional length instead of a leftover partial cycle at the end.

Example, 4..8 bits, 2 cycles over 8 updates: ``[4, 5, 6, 7, 4, 5, 6, 7]``.

``"input_offset"`` (a fraction of a cycle in ``[0, 1)``, default 0) shifts the inputs' cycles against the weights':
the inputs take ``phase(t) + input_offset``. The training bit operations of a GEMM go as the product of its
operands' bits, so cycles in phase (the paper's) spend the most; half a cycle apart, one role is low while the
other is high. Example, 3..8 weights and 6..8 inputs, 8 cycles: ~0.62x the bit operations of W8A8 in phase,
~0.585x with ``"input_offset": 0.5`` (the product of the bits over the run).

``"schedule": "staircase"`` (with ``num_cyclic_period`` 1) is the precision range test's schedule instead: the
bits rise one at a time from the minimum to the maximum in equal steps over the run (``staircase_bits``), so one
short run shows from which width on training works (``fairseq-quant-experiment precision-range``).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from .formats import MAX_BITS, MIN_BITS
from .jsonfiles import read_json

__all__ = ["CPTConfig", "CPTConfigError", "CyclicPrecisionScheduler", "SCHEDULES", "cyclic_bits", "load_cpt_config",
           "parse_eval_bits", "staircase_bits"]


class CPTConfigError(ValueError):
    """A bad cfg_cpt.json (or CPT flag); the message names the file, the key and the allowed values."""


def cyclic_bits(update: int, total_updates: int, bits_min: int, bits_max: int, num_cycles: int,
                offset: float = 0.0) -> int:
    """The bit width at ``update`` (0-based) of a run of ``total_updates`` updates: see the module docstring;
    ``offset`` (a fraction of a cycle) is added to the phase.

    Updates past the end (``update >= total_updates``) continue the last cycle's pattern.
    """
    if total_updates < 1:
        raise ValueError(f"total_updates must be >= 1, got {total_updates}")
    phase = (update * num_cycles / total_updates + offset) % 1.0
    return int(round(bits_min + (bits_max - bits_min) * (1.0 - math.cos(math.pi * phase)) / 2.0))


def staircase_bits(update: int, total_updates: int, bits_min: int, bits_max: int) -> int:
    """The precision range test's bit width at ``update`` (0-based) of ``total_updates``: ``bits_min`` for the
    first ``1 / (bits_max - bits_min + 1)`` of the run, one more for the next, ..., ``bits_max`` for the last.

    Example, 2..8 bits over 14 updates: ``[2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8]``."""
    if total_updates < 1:
        raise ValueError(f"total_updates must be >= 1, got {total_updates}")
    steps = bits_max - bits_min + 1
    return bits_min + min(update * steps // total_updates, steps - 1)


KEYS = ("wbit_min", "wbit_max", "inbit_min", "inbit_max", "num_cyclic_period")
OPTIONAL = {"schedule": "cosine", "input_offset": 0.0}  # keys a file may leave out, with their defaults
SCHEDULES = ("cosine", "staircase")


@dataclass(frozen=True)
class CPTConfig:
    """The contents of cfg_cpt.json: bit ranges for weights and inputs and the number of cycles."""

    wbit_min: int
    wbit_max: int
    inbit_min: int
    inbit_max: int
    num_cyclic_period: int
    schedule: str = "cosine"
    input_offset: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: object, source: str = "cfg_cpt.json") -> CPTConfig:
        """Validate ``data`` (the parsed JSON) and build the config; ``source`` names it in errors."""
        if not isinstance(data, dict):
            raise CPTConfigError(f"{source}: expected a JSON object with keys {', '.join(KEYS)}, "
                                 f"got {type(data).__name__}")
        missing = [k for k in KEYS if k not in data]
        unknown = sorted(k for k in data if k not in KEYS and k not in OPTIONAL)
        if missing or unknown:
            parts = ([f"missing key(s) {', '.join(missing)}"] if missing else []) + (
                [f"unknown key(s) {', '.join(unknown)}"] if unknown else [])
            raise CPTConfigError(f"{source}: {'; '.join(parts)} (the keys are {', '.join(KEYS)}, and optionally "
                                 f"{', '.join(OPTIONAL)})")
        schedule = data.get("schedule", OPTIONAL["schedule"])
        if schedule not in SCHEDULES:
            raise CPTConfigError(f"{source}: schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if schedule == "staircase" and data["num_cyclic_period"] != 1:
            raise CPTConfigError(f"{source}: the staircase schedule rises once over the run: num_cyclic_period "
                                 f"must be 1, got {data['num_cyclic_period']!r}")
        offset = data.get("input_offset", OPTIONAL["input_offset"])
        if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not 0 <= offset < 1:
            raise CPTConfigError(f"{source}: input_offset must be a number in [0, 1) (a fraction of a cycle), "
                                 f"got {offset!r}")
        if schedule == "staircase" and offset:
            raise CPTConfigError(f"{source}: the staircase schedule has no cycles to offset: input_offset must be "
                                 f"0, got {offset!r}")
        for key in KEYS:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int):
                raise CPTConfigError(f"{source}: {key} must be an integer, got {value!r}")
            if key == "num_cyclic_period":
                if value < 1:
                    raise CPTConfigError(f"{source}: num_cyclic_period must be an integer >= 1, got {value}")
            elif not MIN_BITS <= value <= MAX_BITS:
                raise CPTConfigError(f"{source}: {key} must be an integer from {MIN_BITS} to {MAX_BITS}, "
                                     f"got {value}")
        for kind in ("wbit", "inbit"):
            lo, hi = data[f"{kind}_min"], data[f"{kind}_max"]
            if lo > hi:
                raise CPTConfigError(f"{source}: {kind}_min ({lo}) must not exceed {kind}_max ({hi})")
        return cls(**{k: data[k] for k in KEYS}, schedule=schedule, input_offset=float(offset))


def load_cpt_config(path: str) -> CPTConfig:
    """Read and validate cfg_cpt.json at ``path``. Raises ``CPTConfigError`` naming the file and the key."""
    return CPTConfig.from_dict(read_json(path, "--cpt-config", CPTConfigError), source=path)


def parse_eval_bits(value: str, config: CPTConfig) -> tuple[int, int]:
    """``--cpt-eval-bits`` (``max``, ``min`` or ``W,I``) -> (weight bits, input bits) used outside training."""
    if value == "max":
        return config.wbit_max, config.inbit_max
    if value == "min":
        return config.wbit_min, config.inbit_min
    parts = value.split(",")
    try:
        w, i = (int(p, 10) for p in parts)
    except ValueError:
        w = i = None
    if w is None or not (MIN_BITS <= w <= MAX_BITS and MIN_BITS <= i <= MAX_BITS):
        raise CPTConfigError(f"--cpt-eval-bits: expected max, min or W,I with integers from {MIN_BITS} to "
                             f"{MAX_BITS} (e.g. 8,8), got {value!r}")
    return w, i


@dataclass(frozen=True)
class CyclicPrecisionScheduler:
    """A CPT config bound to a run length: ``bits_at(update) -> (weight bits, input bits)``. Pure."""

    config: CPTConfig
    total_updates: int

    def __post_init__(self) -> None:
        if self.total_updates < self.config.num_cyclic_period:
            raise CPTConfigError(
                f"num_cyclic_period ({self.config.num_cyclic_period}) exceeds the number of updates of the run "
                f"({self.total_updates}): each cycle needs at least one update"
            )

    def bits_at(self, update: int) -> tuple[int, int]:
        c = self.config
        if c.schedule == "staircase":
            return (staircase_bits(update, self.total_updates, c.wbit_min, c.wbit_max),
                    staircase_bits(update, self.total_updates, c.inbit_min, c.inbit_max))
        return (
            cyclic_bits(update, self.total_updates, c.wbit_min, c.wbit_max, c.num_cyclic_period),
            cyclic_bits(update, self.total_updates, c.inbit_min, c.inbit_max, c.num_cyclic_period, c.input_offset),
        )

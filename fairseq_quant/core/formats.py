"""Number formats as pure tensor functions: ``x -> nearest representable value``.

No modules, no state, no flags. A format rounds a tensor onto its grid; where the grid has a scale and a zero
point (integers), they are arguments, computed elsewhere (``estimators.py``).

Integers of ``bits`` width, worked example: ``int_grid(4, signed=True, symmetric=True)`` is ``(-7, 7)``; with
``scale = 0.5`` and ``zero_point = 0`` the value 1.3 goes to ``round(1.3 / 0.5) * 0.5 = 1.5`` and 9.0 saturates to
``7 * 0.5 = 3.5``.

Unscaled formats, each a frozen dataclass from ``get_format(name)`` with ``.quantize(x, rounding, generator)``:

- integers ``int8``, ``uint4``, ``intN_sym``: ``get_format("int4").quantize(x)`` rounds half to even onto
  ``-8 .. 7``: 2.5 -> 2, -9.3 -> -8;
- minifloats ``eXmY`` and the FP8 formats ``fp8_e4m3`` (ml_dtypes' ``float8_e4m3fn``: 0.3 -> 0.3125,
  470 -> 448) and ``fp8_e5m2`` (``float8_e5m2``: 1e5 -> 57344);
- posits ``positN_ES``: ``posit8_0`` rounds 1.3 -> 1.3125, 100 -> 64 (maxpos) and 1e-30 -> 1/64 (minpos).

Rounding is ``"nearest"`` (ties to the even encoding) or ``"stochastic"`` (unbiased between the two
neighbours). ``quantize_ste(fmt, x)`` is the same rounding with a straight-through gradient, for training.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

__all__ = [
    "check_bits",
    "int_grid",
    "fake_quant_int",
    "int_values",
    "ROUNDINGS",
    "round_int",
    "round_minifloat",
    "round_posit",
    "IntFormat",
    "Minifloat",
    "Posit",
    "Format",
    "FORMAT_PATTERNS",
    "get_format",
    "quantize_ste",
]

MIN_BITS, MAX_BITS = 2, 16


def check_bits(bits: int) -> int:
    """The one rule on an integer format's width: an integer from ``MIN_BITS`` to ``MAX_BITS``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")
    return bits


def int_grid(bits: int, signed: bool, symmetric: bool) -> tuple[int, int]:
    """The integer range ``(qmin, qmax)`` of a ``bits``-wide grid.

    Symmetric signed grids are narrow (``-(2^(b-1) - 1) .. 2^(b-1) - 1``) so that zero sits in the middle and
    ``+amax`` and ``-amax`` are both representable, as INT8 GEMM kernels expect; asymmetric signed grids use the
    full two's-complement range; unsigned grids are ``0 .. 2^b - 1``.
    """
    check_bits(bits)
    if not signed:
        return 0, 2**bits - 1
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


class _FakeQuantInt(torch.autograd.Function):
    """Integer fake quantization with a straight-through gradient inside the grid's range (zero outside)."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, rounding, generator):
        t = x * scale.reciprocal()
        t = t.round_() if rounding == "nearest" else _round_to_integer(t, rounding, generator)  # half to even
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
        return grad * inside, None, None, None, None, None, None


def fake_quant_int(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    qmin: int,
    qmax: int,
    axis: int | None = None,
    rounding: str = "nearest",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Round ``x`` to ``(clamp(round(x * (1 / scale)) + zero_point, qmin, qmax) - zero_point) * scale``: the one
    scaled integer rounding of the package (quantizers, calibration searches, deployment's integers).

    ``round`` is half to even (``rounding="nearest"``) or stochastic (to one of the two neighbours, unbiased; noise
    from ``generator``). ``scale`` (float32, > 0) and ``zero_point`` (integer-valued float32, or ``None`` for 0)
    have one element, or one per slice along ``axis``. The gradient is straight-through inside the grid's range
    and zero outside it. 16-bit floating inputs are rounded in float32 and returned in their own dtype; NaN stays
    NaN and +-inf saturates to the range's ends. (``x / scale`` is computed as ``x * (1 / scale)``, as torch's
    ``fake_quantize_per_tensor_affine`` does.)
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    out_dtype = x.dtype
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    scale, zero_point = _along(scale, x, axis), None if zero_point is None else _along(zero_point, x, axis)
    return _FakeQuantInt.apply(xf, scale, zero_point, qmin, qmax, rounding, generator).to(out_dtype)


def _along(t: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Per-slice values ``t`` shaped to broadcast along ``axis`` of ``x`` (one value: a scalar)."""
    if axis is None:
        return t.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def int_values(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, qmin: int, qmax: int,
               axis: int | None = None) -> torch.Tensor:
    """The integers ``fake_quant_int`` rounds ``x`` to: ``clamp(round_half_even(x * (1 / scale)) + zero_point, qmin,
    qmax)``, float32 (integer-valued), ``x``'s shape; ``scale`` and ``zero_point`` as in ``fake_quant_int``.
    ``int_values(torch.tensor([0.26, -1.0]), torch.tensor([0.1]), None, -127, 127)`` is ``[3., -10.]``."""
    t = (x.detach().float() * _along(scale.float(), x, axis).reciprocal()).round()
    if zero_point is not None:
        t = t + _along(zero_point.float(), x, axis)
    return t.clamp(qmin, qmax)


# ---------------------------------------------------------------------------------------------------------------
# Unscaled number formats: x -> nearest representable value.
#
# Every function computes in float32 (16-bit inputs are widened, float64 inputs are rounded to float32 first) and
# returns the input's dtype, so the output dtype must hold the format's values to return them exactly (bfloat16
# holds int8, e4m3 and e5m2; it does not hold posit16's 12-bit fractions, which it rounds again).

ROUNDINGS = ("nearest", "stochastic")
SPECIALS = ("finite", "fn", "ieee")
MINIFLOAT_EXP_BITS = (2, 8)
MINIFLOAT_MAN_BITS = (0, 10)
POSIT_BITS = (2, 16)
POSIT_ES = (0, 3)


def _float32(x: torch.Tensor) -> torch.Tensor:
    if not x.is_floating_point():
        raise TypeError(f"number formats round floating tensors, got {x.dtype}")
    return x if x.dtype == torch.float32 else x.float()


def _round_to_integer(t: torch.Tensor, rounding: str, generator: torch.Generator | None) -> torch.Tensor:
    """A new tensor: ``t`` rounded half to even, or stochastically to ``floor(t)`` or ``floor(t) + 1`` with
    ``P(floor(t) + 1) = t - floor(t)`` (so ``E[result] = t``). NaN and +-inf pass through."""
    if rounding == "nearest":
        return torch.round(t)
    if rounding == "stochastic":
        low = torch.floor(t)
        u = torch.rand(t.shape, generator=generator, device=t.device, dtype=torch.float32)
        return low.add_(u.lt_(t - low))
    raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")


def round_int(
    x: torch.Tensor,
    bits: int,
    signed: bool = True,
    symmetric: bool = False,
    rounding: str = "nearest",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Round ``x`` to the integers of ``int_grid(bits, signed, symmetric)``, saturating at the grid's ends.

    ``round_int(torch.tensor([2.5, 3.5, -9.3, 200.0]), 4)`` is ``[2, 4, -8, 7]`` (half to even, full signed
    range ``-8 .. 7``); ``symmetric=True`` narrows it to ``-7 .. 7``. Stochastic rounding sends 2.25 to 2 with
    probability 3/4 and to 3 with 1/4. NaN stays NaN, +-inf saturate. Same shape and dtype as ``x``.
    """
    qmin, qmax = int_grid(bits, signed, symmetric)
    return _round_to_integer(_float32(x), rounding, generator).clamp_(qmin, qmax).to(x.dtype)


@functools.cache
def _minifloat_params(exp_bits: int, man_bits: int, specials: str) -> tuple[int, int, int, float]:
    """``(bias, emin, emax, max)`` of a minifloat, validating its parameters."""
    lo, hi = MINIFLOAT_EXP_BITS
    if not lo <= exp_bits <= hi:
        raise ValueError(f"minifloat exponent bits must be {lo}..{hi}, got {exp_bits}")
    lo, hi = MINIFLOAT_MAN_BITS
    if not lo <= man_bits <= hi or 1 + exp_bits + man_bits > 16:
        raise ValueError(f"minifloat mantissa bits must be {lo}..{hi} with 1 + e + m <= 16, got e{exp_bits}m{man_bits}")
    if specials not in SPECIALS:
        raise ValueError(f"minifloat specials must be one of {SPECIALS}, got {specials!r}")
    if specials == "fn" and man_bits == 0:
        raise ValueError("an 'fn' minifloat needs mantissa bits (its NaN is the all-ones exponent and mantissa)")
    if specials != "ieee" and exp_bits == 8:
        raise ValueError(f"e8m{man_bits}_{specials}: its top binade 2^128 does not fit float32; use e8m{man_bits}_ieee")
    bias = 2 ** (exp_bits - 1) - 1
    emax = 2**exp_bits - (2 if specials == "ieee" else 1) - bias
    top_mantissa = 2 - 2.0 ** (1 - man_bits) if specials == "fn" else 2 - 2.0**-man_bits
    return bias, 1 - bias, emax, 2.0**emax * top_mantissa


def round_minifloat(
    x: torch.Tensor,
    exp_bits: int,
    man_bits: int,
    specials: str = "finite",
    saturate: bool = True,
    rounding: str = "nearest",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Round ``x`` to a sign + ``exp_bits`` + ``man_bits`` float with bias ``2^(exp_bits-1) - 1`` and subnormals.

    ``specials`` says which encodings are not numbers:

    - ``"finite"`` (OCP MX FP4/FP6, ml_dtypes ``float4_e2m1fn``, ``float6_e3m2fn``): none, every encoding is a
      number. e2m1 holds 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives (max 6); e3m2 has max 28.
    - ``"fn"`` (``float8_e4m3fn``): only all-ones exponent and mantissa is NaN. e4m3: max ``1.75 * 2^8 = 448``.
    - ``"ieee"`` (``float8_e5m2``, bfloat16): the all-ones exponent is inf/NaN. e5m2: max ``1.75 * 2^15 = 57344``.

    Nearest rounding ties to the even encoding (IEEE's even significand; with no mantissa bits, the even exponent
    field): in e4m3, 1.0625 -> 1 and 1.1875 -> 1.25; the subnormal tie 2^-10 -> 0. ``saturate=True`` sends finite
    overflow and +-inf to +-max (e4m3: 470 -> 448, e5m2: inf -> 57344); ``saturate=False`` gives inf (``ieee``) or
    NaN (``fn``) for values that round above max, as ml_dtypes' casts do. Signs are kept (-0.01 -> -0.0 in e2m1);
    NaN stays NaN in every convention. Same shape and dtype as ``x``.
    """
    _, emin, emax, max_value = _minifloat_params(exp_bits, man_bits, specials)
    if specials == "finite" and not saturate:
        raise ValueError("a 'finite' minifloat has no inf or NaN to overflow to: it always saturates")
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    xf = _float32(x)
    a = xf.abs()
    # |x|'s binade 2^e from float32's biased exponent field e + 127, clamped to the format's binades (its
    # subnormals share emin); computed in place, as the tensors are large
    field = (a.view(torch.int32) >> 23).clamp_(emin + 127, emax + 127)
    # with no mantissa bits, 1.5 * 2^e ties between 2^e and 2^(e+1), and the even encoding is 2^e when the
    # format's biased exponent e + bias is even, as is e + 127 (both biases are odd)
    tie_down = field & 1 == 0 if man_bits == 0 and rounding == "nearest" else None
    quantum = field.bitwise_left_shift_(23).view(torch.float32)  # 2^e, exact: emin >= -126
    if man_bits:
        quantum.mul_(2.0**-man_bits)  # exact (subnormal for e8 formats)
    t = a.div_(quantum)  # exact: a power-of-two quotient
    if rounding == "nearest":
        if tie_down is not None:
            tie_down &= t == 1.5
        t = t.round_()
        if tie_down is not None:
            t.masked_fill_(tie_down, 1.0)
    else:
        t = _round_to_integer(t, rounding, generator)
    y = t.mul_(quantum)
    if saturate:
        y = y.clamp_(max=max_value)  # NaN stays NaN
    else:
        y = y.masked_fill_(y > max_value, float("inf") if specials == "ieee" else float("nan"))
    return y.copysign_(xf).to(x.dtype)


def _decode_posits(bits: int, es: int) -> np.ndarray:
    """The float64 value of every ``bits``-wide posit pattern with ``es`` exponent bits, indexed by the pattern
    (0 is zero, ``2^(bits-1)`` is NaR = NaN). A pattern's magnitude is its two's complement; after the sign
    come a regime (a run of k equal bits and its opposite terminator: scale ``useed^(k-1)`` for ones,
    ``useed^-k`` for zeros, ``useed = 2^(2^es)``), ``es`` exponent bits (missing ones are 0) and the fraction."""
    p = np.arange(1 << bits, dtype=np.int64)
    negative = (p >> (bits - 1)) & 1 == 1
    body = np.where(negative, (1 << bits) - p, p) & ((1 << (bits - 1)) - 1)
    first = (body >> (bits - 2)) & 1
    run = np.zeros_like(p)
    same = np.ones(p.shape, dtype=bool)
    for j in range(bits - 2, -1, -1):
        same &= ((body >> j) & 1) == first
        run += same
    regime = np.where(first == 1, run - 1, -run)
    rest_bits = np.maximum(bits - 2 - run, 0)  # after the regime and its terminator
    rest = body & ((1 << rest_bits) - 1)
    frac_bits = np.maximum(rest_bits - es, 0)
    exponent = (rest >> frac_bits) << (es - np.minimum(rest_bits, es))
    fraction = (rest & ((1 << frac_bits) - 1)) / 2.0**frac_bits
    values = np.ldexp(1.0 + fraction, (regime * (1 << es) + exponent).astype(np.int32))
    values = np.where(negative, -values, values)
    values[0] = 0.0
    values[1 << (bits - 1)] = np.nan
    return values


def _check_posit(bits: int, es: int) -> None:
    if not POSIT_BITS[0] <= bits <= POSIT_BITS[1] or not POSIT_ES[0] <= es <= POSIT_ES[1]:
        raise ValueError(f"posit(n, es) needs n in {POSIT_BITS[0]}..{POSIT_BITS[1]} and es in "
                         f"{POSIT_ES[0]}..{POSIT_ES[1]}, got ({bits}, {es})")


@functools.cache
def _posit_magnitudes(bits: int, es: int) -> tuple[np.ndarray, np.ndarray]:
    """``(values, bounds)`` for magnitudes: the posits 0, minpos .. maxpos ascending (float32, exact) and the
    rounding boundary between each neighbouring pair, prepared so that the count of ``bounds < |x|`` is the
    index of ``|x|``'s rounding.

    Posit rounding acts on the bit pattern, whose order is the value order: between the patterns ``i`` and
    ``i + 1`` the boundary is the (bits+1)-wide posit ``2i + 1``, and a tie goes to the even pattern. The boundary
    is the arithmetic midpoint when the extra bit is a fraction bit (always, for es = 0), not when it is an
    exponent bit: posit16_1 rounds between ``2^26`` and maxpos ``2^28`` at ``2^27``, not at ``1.25 * 2^27``. The
    boundary between 0 and minpos is 0 itself, so nonzero values never round to zero.
    """
    i = np.arange(1 << (bits - 1))  # the non-negative patterns
    values = _decode_posits(bits, es)[i].astype(np.float32)
    bounds = _decode_posits(bits + 1, es)[2 * i[:-1] + 1].astype(np.float32)
    bounds[0] = 0.0
    # counting bounds < |x| sends ties down; where the even pattern is the upper one, lower the bound by one
    # float32 ulp so that |x| == bound counts too
    up = i[:-1] % 2 == 1
    bounds[up] = np.nextafter(bounds[up], np.float32(-np.inf))
    return values, bounds


@functools.cache
def _posit_tables(bits: int, es: int, device: torch.device) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(shift, cells, bounds, values)`` on ``device``: ``_posit_magnitudes`` with a lookup that replaces the
    binary search. The float32 bits of ``|x|`` shifted right by ``shift`` name a cell (a run of floats, narrower
    than the gap between two bounds); ``cells[cell]`` counts the bounds below the cell, and one comparison adds
    the bound inside it: ``i = cells[cell] + (bounds[cells[cell]] < |x|)``, ``|round(x)| = values[i]``. Inf and
    NaN cells point at a NaN appended to ``values`` (after two +inf bounds), so they round to NaR.
    (posit16_0, the largest table: 4M cells, 16 MiB.)
    """
    values, bounds = _posit_magnitudes(bits, es)
    shift = 23 - max(bits - 2 - es, 0)  # the bounds have at most bits - 2 - es fraction bits
    key = np.arange(1 << (31 - shift), dtype=np.int64)
    first = (key << shift).astype(np.uint32).view(np.float32)
    last = (((key + 1) << shift) - 1).astype(np.uint32).view(np.float32)
    finite = np.isfinite(first)
    cells = np.full(len(key), len(values), dtype=np.int32)
    cells[finite] = np.searchsorted(bounds, first[finite])
    assert np.all(np.searchsorted(bounds, last[finite]) - cells[finite] <= 1), "two bounds in one cell"
    bounds = np.concatenate([bounds, np.full(2, np.inf, dtype=np.float32)])
    values = np.concatenate([values, np.full(1, np.nan, dtype=np.float32)])
    return shift, *(torch.from_numpy(t).to(device) for t in (cells, bounds, values))


def round_posit(
    x: torch.Tensor,
    bits: int,
    es: int,
    rounding: str = "nearest",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Round ``x`` to posit(``bits``, ``es``), as the posit standard and SoftPosit convert.

    posit8 es0 has values 1/64 (minpos) .. 64 (maxpos): 1.3 -> 1.3125, 100 -> 64, 1e-30 -> 1/64 (nonzero values
    never become 0), -0.0 -> 0. Nearest rounding ties to the even bit pattern, with boundaries set by the pattern,
    not the real line: posit16_1 sends ``1.2 * 2^27`` to maxpos ``2^28`` although ``2^26`` is nearer. NaN and
    +-inf become NaR (NaN), as the standard converts them. Stochastic rounding picks one of the two neighbouring
    posits with probability proportional to closeness (tiny values may then become 0, keeping the mean);
    values beyond +-maxpos saturate. Same shape and dtype as ``x``.
    """
    _check_posit(bits, es)
    xf = _float32(x).contiguous()
    shift, cells, bounds, values = _posit_tables(bits, es, xf.device)
    a = xf.abs().view(-1)
    below = cells.index_select(0, a.view(torch.int32) >> shift)
    i = below.add_(bounds.index_select(0, below) < a)
    y = values.index_select(0, i)  # |nearest|, NaN for NaN and +-inf
    if rounding == "stochastic":
        # |x| lies between the posits low and low + 1 (clamped below maxpos, so that beyond it saturates)
        low = i.sub_((y >= a).int()).clamp_(0, len(values) - 3)
        y_low = values.index_select(0, low)
        gap = values.index_select(0, low.add_(1)).sub_(y_low)  # exact: neighbours share most of their bits
        up = torch.rand(a.shape, generator=generator, device=a.device, dtype=torch.float32).mul_(gap).lt_(a - y_low)
        y = y_low.addcmul_(gap, up).masked_fill_(y.isnan(), float("nan"))
    elif rounding != "nearest":
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    return y.view_as(xf).copysign_(xf).add_(0.0).to(x.dtype)  # + 0.0: -0.0 -> 0.0, posits have one zero


# ---------------------------------------------------------------------------------------------------------------
# Formats as values: frozen dataclasses with a name, a width, a range and `quantize`.


@dataclass(frozen=True)
class IntFormat:
    """Unscaled integers ``int_grid(bits, signed, symmetric)``: ``int8`` is -128..127, ``int8_sym`` -127..127,
    ``uint4`` 0..15."""

    bits: int
    signed: bool = True
    symmetric: bool = False

    def __post_init__(self) -> None:
        int_grid(self.bits, self.signed, self.symmetric)

    @property
    def name(self) -> str:
        return f"{'' if self.signed else 'u'}int{self.bits}{'_sym' if self.signed and self.symmetric else ''}"

    @property
    def min(self) -> float:
        return float(int_grid(self.bits, self.signed, self.symmetric)[0])

    @property
    def max(self) -> float:
        return float(int_grid(self.bits, self.signed, self.symmetric)[1])

    def values(self) -> torch.Tensor:
        """All representable values, ascending, float32."""
        return torch.arange(self.min, self.max + 1, dtype=torch.float32)

    def quantize(self, x: torch.Tensor, rounding: str = "nearest", generator: torch.Generator | None = None):
        """``round_int`` onto this grid."""
        return round_int(x, self.bits, self.signed, self.symmetric, rounding, generator)


_FP8 = {(4, 3): "fn", (5, 2): "ieee"}


def _default_specials(exp_bits: int, man_bits: int) -> str:
    """What a bare ``eXmY`` name means: the FP8 formats for e4m3 / e5m2, IEEE (bfloat16's layout) for e8mY,
    every encoding finite (OCP MX) otherwise."""
    return _FP8.get((exp_bits, man_bits), "ieee" if exp_bits == 8 else "finite")


@dataclass(frozen=True)
class Minifloat:
    """Sign, ``exp_bits`` exponent bits (bias ``2^(exp_bits-1) - 1``, subnormals), ``man_bits`` mantissa bits;
    ``specials`` and ``saturate`` as in ``round_minifloat``. ``Minifloat(4, 3, "fn")`` is ``fp8_e4m3``."""

    exp_bits: int
    man_bits: int
    specials: str = "finite"
    saturate: bool = True

    def __post_init__(self) -> None:
        _minifloat_params(self.exp_bits, self.man_bits, self.specials)
        if self.specials == "finite" and not self.saturate:
            raise ValueError("a 'finite' minifloat has no inf or NaN to overflow to: it always saturates")

    @property
    def name(self) -> str:
        name = f"e{self.exp_bits}m{self.man_bits}"
        if self.specials != _default_specials(self.exp_bits, self.man_bits):
            name += f"_{self.specials}"
        elif (self.exp_bits, self.man_bits) in _FP8:
            name = "fp8_" + name
        return name if self.saturate else name + "_nosat"

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def max(self) -> float:
        return _minifloat_params(self.exp_bits, self.man_bits, self.specials)[3]

    @property
    def min(self) -> float:
        return -self.max

    def values(self) -> torch.Tensor:
        """All distinct finite values (+0 and -0 as one 0), ascending, float32."""
        bias, emin, _, max_value = _minifloat_params(self.exp_bits, self.man_bits, self.specials)
        code = np.arange(2 ** (self.exp_bits + self.man_bits))
        exp_code, mantissa = code >> self.man_bits, code & (2**self.man_bits - 1)
        significand = np.where(exp_code == 0, mantissa, mantissa + 2**self.man_bits)
        magnitude = np.ldexp(significand.astype(np.float64), np.maximum(exp_code - bias, emin) - self.man_bits)
        magnitude = magnitude[magnitude <= max_value]
        return torch.from_numpy(np.unique(np.concatenate([-magnitude, magnitude])).astype(np.float32))

    def quantize(self, x: torch.Tensor, rounding: str = "nearest", generator: torch.Generator | None = None):
        """``round_minifloat`` onto this format."""
        return round_minifloat(x, self.exp_bits, self.man_bits, self.specials, self.saturate, rounding, generator)


@dataclass(frozen=True)
class Posit:
    """posit(``bits``, ``es``): ``Posit(8, 0)`` spans 1/64 .. 64, ``Posit(16, 1)`` spans 2^-28 .. 2^28."""

    bits: int
    es: int

    def __post_init__(self) -> None:
        _check_posit(self.bits, self.es)

    @property
    def name(self) -> str:
        return f"posit{self.bits}_{self.es}"

    @property
    def max(self) -> float:
        return 2.0 ** ((self.bits - 2) * 2**self.es)

    @property
    def min(self) -> float:
        return -self.max

    def values(self) -> torch.Tensor:
        """All ``2^bits - 1`` values (NaR left out), ascending, float32."""
        values = _posit_magnitudes(self.bits, self.es)[0]
        return torch.from_numpy(np.concatenate([-values[:0:-1], values]))

    def quantize(self, x: torch.Tensor, rounding: str = "nearest", generator: torch.Generator | None = None):
        """``round_posit`` onto this format."""
        return round_posit(x, self.bits, self.es, rounding, generator)


Format = Union[IntFormat, Minifloat, Posit]

FORMAT_PATTERNS = (
    "intN, uintN, intN_sym (N = 2..16; e.g. int8, int4, uint4)",
    "fp8_e4m3, fp8_e5m2 (also e4m3, e5m2)",
    "eXmY[_finite|_fn|_ieee][_nosat] (X = 2..8, Y = 0..10, 1 + X + Y <= 16; e.g. e3m2, e2m1)",
    "positN_ES (N = 2..16, ES = 0..3; e.g. posit8_0, posit16_1)",
)


def _parse_format(name: str) -> Format:
    m = re.fullmatch(r"(u?)int(\d+)(_sym)?", name)
    if m and not (m[1] and m[3]):
        return IntFormat(int(m[2]), signed=not m[1], symmetric=bool(m[3]))
    m = re.fullmatch(r"(fp8_)?e(\d+)m(\d+)(?:_(finite|fn|ieee))?(_nosat)?", name)
    if m:
        exp_bits, man_bits = int(m[2]), int(m[3])
        if m[1] and ((exp_bits, man_bits) not in _FP8 or m[4]):
            raise ValueError("fp8_ names only e4m3 and e5m2")
        return Minifloat(exp_bits, man_bits, m[4] or _default_specials(exp_bits, man_bits), saturate=not m[5])
    m = re.fullmatch(r"posit(\d+)_(\d+)", name)
    if m:
        return Posit(int(m[1]), int(m[2]))
    raise ValueError("not a format name")


@functools.cache
def get_format(name: str) -> Format:
    """The number format called ``name`` (see ``FORMAT_PATTERNS``): ``get_format("fp8_e4m3").max == 448``,
    ``get_format("posit8_0").quantize(torch.tensor([1.3]))`` is ``[1.3125]``. ``fmt.name`` is canonical
    (``get_format("e4m3").name == "fp8_e4m3"``). Unknown or out-of-range names raise ValueError listing the
    accepted patterns."""
    try:
        return _parse_format(name)
    except ValueError as e:
        raise ValueError(f"unknown number format {name!r} ({e}); accepted: " + "; ".join(FORMAT_PATTERNS)) from None


class _StraightThrough(torch.autograd.Function):
    """``fmt.quantize`` forward; gradient identity where ``fmt.min <= x <= fmt.max``, zero outside (and at NaN)."""

    @staticmethod
    def forward(ctx, x, fmt, rounding, generator):
        ctx.save_for_backward((x >= fmt.min) & (x <= fmt.max))
        y = fmt.quantize(x, rounding, generator)
        # a view returned by a custom Function cannot be modified in place (fairseq scales q in place)
        return y.clone() if y._base is not None else y

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


def quantize_ste(
    fmt: Format, x: torch.Tensor, rounding: str = "nearest", generator: torch.Generator | None = None
) -> torch.Tensor:
    """``fmt.quantize(x, rounding, generator)`` with a straight-through gradient: ``quantize_ste(get_format(
    "fp8_e4m3"), x)`` passes the gradient unchanged where ``-448 <= x <= 448`` and zero where it saturates."""
    return _StraightThrough.apply(x, fmt, rounding, generator)

"""Number formats against references: ml_dtypes (FP8, FP6, FP4), softposit (posit8 es0, posit16 es1, posit(n, 2)),
torch's own bfloat16/float16 casts, enumeration from the formats' definitions, and fake_quant_int."""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import softposit
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fairseq_quant.core.formats import (
    FORMAT_PATTERNS,
    IntFormat,
    Minifloat,
    Posit,
    fake_quant_int,
    get_format,
    int_grid,
    quantize_ste,
    round_minifloat,
)

F32 = np.float32


def as_f32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).astype(F32)


def q(fmt, x: np.ndarray, **kw) -> np.ndarray:
    return fmt.quantize(torch.from_numpy(np.ascontiguousarray(x, dtype=F32)), **kw).numpy()


def assert_same_floats(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal values, NaN where NaN (of either sign), and the same sign on zeros."""
    np.testing.assert_array_equal(actual, expected)
    numbers = ~np.isnan(expected)
    np.testing.assert_array_equal(np.signbit(actual[numbers]), np.signbit(expected[numbers]))


def probes(values: np.ndarray, boundaries: np.ndarray | None = None, seed: int = 0, n_random: int = 4000):
    """Float32 inputs that pin down a rounding function over sorted ``values``: the values, the midpoints between
    neighbours (the ties), the given extra ``boundaries``, one ulp either side of each, and random points."""
    values = np.unique(values.astype(np.float64))
    points = [values, (values[1:] + values[:-1]) / 2]
    if boundaries is not None:
        points.append(boundaries)
    pts = as_f32(np.concatenate(points))
    assert np.all(np.concatenate(points[1:]).astype(F32) == np.concatenate(points[1:]))  # ties are exact float32
    top = min(values.max() * 1.1, float(np.finfo(F32).max))
    rng = np.random.default_rng(seed)
    rand = np.concatenate([rng.uniform(-top, top, n_random),
                           rng.choice([-1, 1], n_random) * np.exp2(rng.uniform(-40, math.log2(top), n_random))])
    return np.concatenate([pts, np.nextafter(pts, F32(np.inf)), np.nextafter(pts, F32(-np.inf)), as_f32(rand)])


# ------------------------------------------------------------------------------------------------ minifloats

ML_DTYPES = [  # (our name, ml_dtypes type); the "finite" ones saturate in ml_dtypes too
    ("fp8_e4m3", ml_dtypes.float8_e4m3fn),
    ("fp8_e5m2", ml_dtypes.float8_e5m2),
    ("e2m1", ml_dtypes.float4_e2m1fn),
    ("e2m3", ml_dtypes.float6_e2m3fn),
    ("e3m2", ml_dtypes.float6_e3m2fn),
    ("e4m3_ieee", ml_dtypes.float8_e4m3),
    ("e3m4_ieee", ml_dtypes.float8_e3m4),
]


def ml_cast(x: np.ndarray, dtype) -> np.ndarray:
    return x.astype(dtype).astype(F32)


def ml_values(dtype) -> np.ndarray:
    """Every finite value of an ml_dtypes type: from all 256 bit patterns of an 8-bit type; for the 4- and 6-bit
    types, from casting every multiple of their smallest subnormal up to their max."""
    if not dtype.__name__.startswith(("float4", "float6")):
        values = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float64)
    else:
        finfo = ml_dtypes.finfo(dtype)
        grid = np.arange(-4096, 4097) * float(finfo.smallest_subnormal)
        values = ml_cast(as_f32(grid[np.abs(grid) <= float(finfo.max)]), dtype).astype(np.float64)
    return np.unique(values[np.isfinite(values)])


@pytest.mark.parametrize("name,dtype", ML_DTYPES)
def test_minifloat_value_set_equals_ml_dtypes(name, dtype):
    fmt = get_format(name)
    np.testing.assert_array_equal(fmt.values().numpy(), ml_values(dtype))
    assert fmt.max == float(ml_dtypes.finfo(dtype).max)


@pytest.mark.parametrize("name,dtype", ML_DTYPES)
def test_minifloat_rounds_like_ml_dtypes_and_saturates(name, dtype):
    fmt = get_format(name)
    x = np.concatenate([probes(ml_values(dtype)), as_f32([0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30])])
    got, ref = q(fmt, x), ml_cast(x, dtype)
    finite = np.isfinite(ref)
    assert_same_floats(got[finite], ref[finite])
    # where ml_dtypes overflows (to inf or NaN) we saturate to +-max
    np.testing.assert_array_equal(got[~finite], np.copysign(fmt.max, x[~finite]).astype(F32))
    assert (~finite).any() == (fmt.specials != "finite")


@pytest.mark.parametrize("fmt,dtype", [(Minifloat(4, 3, "fn", saturate=False), ml_dtypes.float8_e4m3fn),
                                       (Minifloat(5, 2, "ieee", saturate=False), ml_dtypes.float8_e5m2)])
def test_nonsaturating_fp8_is_ml_dtypes_cast_everywhere(fmt, dtype):
    x = np.concatenate([probes(ml_values(dtype)), as_f32([np.inf, -np.inf, np.nan, 3e38, -3e38])])
    assert_same_floats(q(fmt, x), ml_cast(x, dtype))


def test_e4m3_saturates_at_448_and_ties_to_even():
    fmt = get_format("fp8_e4m3")
    x = torch.tensor([448, 463.9, 464, 465, 1e9, np.inf, -np.inf, 1.0625, 1.1875, 2**-10, 3 * 2**-10, 2**-9])
    expected = [448, 448, 448, 448, 448, 448, -448, 1.0, 1.25, 0.0, 2**-8, 2**-9]
    assert fmt.quantize(x).tolist() == expected
    assert fmt.max == 448 and fmt.bits == 8


def test_e5m2_saturates_inf_to_57344():
    fmt = get_format("fp8_e5m2")
    x = torch.tensor([57344, 61439, 61440, 1e6, np.inf, -np.inf, 2**-16, 2**-17, 1.5 * 2**-16])
    assert fmt.quantize(x).tolist() == [57344, 57344, 57344, 57344, 57344, -57344, 2**-16, 0.0, 2**-15]
    assert fmt.max == 57344


def test_e2m1_has_15_values_and_keeps_negative_zero():
    fmt = get_format("e2m1")
    expected = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert fmt.values().tolist() == sorted({-v for v in expected} | set(expected))
    assert fmt.values().numel() == 15 and fmt.bits == 4 and fmt.max == 6
    y = fmt.quantize(torch.tensor([-0.2, 0.2, -0.0, 0.25, 0.75, 2.5, 5.0, 7.0, -100.0]))
    assert y.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 4.0, 6.0, -6.0]
    assert torch.signbit(y[:3]).tolist() == [True, False, True]


def test_nan_stays_nan_in_every_format():
    x = torch.tensor([np.nan, 1.0])
    for name in ["int8", "uint4", "fp8_e4m3", "fp8_e5m2", "e2m1", "e8m7", "posit8_0", "posit16_1"]:
        y = get_format(name).quantize(x)
        assert torch.isnan(y[0]) and y[1] == 1.0, name
        y = get_format(name).quantize(x, rounding="stochastic")
        assert torch.isnan(y[0]) and y[1] == 1.0, name


def reference_minifloat(e: int, m: int, specials: str) -> tuple[np.ndarray, np.ndarray]:
    """From the definition: the positive finite values and their encodings (exponent field, mantissa field)."""
    bias = 2 ** (e - 1) - 1
    values, codes = [], []
    for code in range(2 ** (e + m)):
        exp_field, mant = divmod(code, 2**m)
        if specials == "ieee" and exp_field == 2**e - 1:
            continue
        if specials == "fn" and code == 2 ** (e + m) - 1:
            continue
        if exp_field == 0:
            values.append(mant * 2.0 ** (1 - bias - m))
        else:
            values.append((1 + mant / 2**m) * 2.0 ** (exp_field - bias))
        codes.append(code)
    return np.array(values), np.array(codes)


def reference_round(x: np.ndarray, values: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Nearest of the sorted non-negative ``values`` to |x| by distance, ties to the even code, saturating;
    the sign of x kept."""
    a = np.abs(x.astype(np.float64))
    hi = np.clip(np.searchsorted(values, a), 1, len(values) - 1)
    lo = hi - 1
    d_lo, d_hi = a - values[lo], values[hi] - a
    pick = np.where(d_lo < d_hi, lo, np.where(d_hi < d_lo, hi, np.where(codes[lo] % 2 == 0, lo, hi)))
    pick = np.where(a >= values[-1], len(values) - 1, pick)
    return np.copysign(values[pick], x).astype(F32)


SMALL_MINIFLOATS = [(2, 0, "finite"), (2, 1, "finite"), (2, 3, "finite"), (3, 0, "finite"), (3, 1, "ieee"),
                    (3, 2, "fn"), (4, 0, "ieee"), (4, 3, "finite"), (5, 0, "finite"), (5, 1, "fn"),
                    (6, 2, "finite"), (8, 0, "ieee"), (8, 2, "ieee")]


@pytest.mark.parametrize("e,m,specials", SMALL_MINIFLOATS)
def test_minifloat_equals_definition_by_enumeration(e, m, specials):
    values, codes = reference_minifloat(e, m, specials)
    fmt = Minifloat(e, m, specials)
    np.testing.assert_array_equal(fmt.values().numpy(), np.unique(np.concatenate([-values, values])))
    assert fmt.max == values.max()
    x = probes(np.concatenate([-values, values]), seed=e * 16 + m)
    x = x[np.isfinite(x)]
    assert_same_floats(q(fmt, x), reference_round(x, values, codes))


def test_no_mantissa_ties_go_to_even_exponent():
    # e3m0 (finite): 1, 2, 4, 8 have exponent fields 3, 4, 5, 6: 1.5 -> 2, 3 -> 2, 6 -> 8
    assert get_format("e3m0").quantize(torch.tensor([1.5, 3.0, 6.0, 0.375])).tolist() == [2.0, 2.0, 8.0, 0.5]


def test_e8m7_is_bfloat16_and_e5m10_ieee_is_float16():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(as_f32(rng.choice([-1, 1], 20000) * np.exp2(rng.uniform(-140, 127, 20000))))
    torch.testing.assert_close(get_format("e8m7").quantize(x), x.bfloat16().float(), rtol=0, atol=0)
    h = x[x.abs() <= 65504]
    torch.testing.assert_close(get_format("e5m10_ieee").quantize(h), h.half().float(), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------- posits

def reference_posit_decode(pattern: int, n: int, es: int) -> float:
    """A posit's value from its definition, reading the bit string left to right."""
    if pattern == 0:
        return 0.0
    if pattern == 1 << (n - 1):
        return math.nan
    sign = pattern >> (n - 1)
    if sign:
        pattern = (1 << n) - pattern
    s = format(pattern, f"0{n}b")[1:]
    run = len(s) - len(s.lstrip(s[0]))
    k = run - 1 if s[0] == "1" else -run
    rest = s[run + 1:]
    exponent = int((rest[:es] + "0" * es)[:es] or "0", 2)
    frac = rest[es:]
    value = 2.0 ** (k * 2**es + exponent) * (1 + (int(frac, 2) / 2 ** len(frac) if frac else 0))
    return -value if sign else value


def reference_posit_round(x: float, n: int, es: int) -> float:
    """Round ``x`` to posit(n, es) from the standard: write |x| as an unbounded posit bit string, round it to
    n - 1 bits to nearest, ties to even; never to 0 or past maxpos."""
    if x == 0:
        return 0.0
    if not math.isfinite(x):
        return math.nan
    mant, e = math.frexp(abs(x))
    scale = e - 1
    k, exponent = scale >> es, scale & (2**es - 1)
    regime = "1" * (k + 1) + "0" if k >= 0 else "0" * (-k) + "1"
    frac = format(int((2 * mant - 1) * 2**53), "053b")
    s = regime + (format(exponent, f"0{es}b") if es else "") + frac
    body, guard, sticky = int(s[: n - 1], 2), s[n - 1], "1" in s[n:]
    if guard == "1" and (sticky or body & 1):
        body += 1
    body = min(max(body, 1), 2 ** (n - 1) - 1)
    value = reference_posit_decode(body, n, es)
    return -value if x < 0 else value


def reference_posit_bounds(n: int, es: int) -> np.ndarray:
    """The rounding boundaries of posit(n, es): the (n+1)-bit posits with odd patterns."""
    return np.array([reference_posit_decode(p, n + 1, es) for p in range(1, 2 ** (n + 1), 2) if p != 2**n])


def softposit_values(make, n: int, shift: int) -> np.ndarray:
    """softposit's value of every n-bit pattern (stored ``shift`` bits left)."""
    p = make(0.0)
    values = []
    for bits in range(2**n):
        p.fromBits(bits << shift)
        values.append(float(p) if not p.isNaR() else np.nan)
    return np.array(values)


def softposit_round(make, x: np.ndarray) -> np.ndarray:
    out = np.empty(len(x), dtype=F32)
    for i, v in enumerate(x.tolist()):
        p = make(v)
        out[i] = np.nan if p.isNaR() else float(p)
    return out


SOFTPOSITS = [  # (n, es, softposit constructor, bit offset of its patterns)
    (8, 0, softposit.posit8, 0),
    (16, 1, softposit.posit16, 0),
    (8, 2, lambda v: softposit.posit_2(v, 8), 24),  # posit_2 (es = 2) keeps n-bit patterns in 32 bits
    (12, 2, lambda v: softposit.posit_2(v, 12), 20),
]


@pytest.mark.parametrize("n,es,make,shift", SOFTPOSITS)
def test_posit_values_and_rounding_match_softposit(n, es, make, shift):
    fmt = Posit(n, es)
    ref_values = softposit_values(make, n, shift)
    np.testing.assert_array_equal(fmt.values().numpy(), np.sort(ref_values[np.isfinite(ref_values)]))
    assert fmt.max == np.nanmax(ref_values)
    # every value, every midpoint, every posit rounding boundary, one ulp either side, random points
    x = np.concatenate([probes(fmt.values().numpy(), reference_posit_bounds(n, es), seed=n, n_random=20000),
                        as_f32([0.0, -0.0, 1e-38, -1e-38, 3e38, -3e38, np.inf, -np.inf, np.nan])])
    assert_same_floats(q(fmt, x), softposit_round(make, x))


def test_posit16_boundary_is_not_the_midpoint_between_regimes():
    fmt = get_format("posit16_1")
    assert fmt.max == 2.0**28
    # between 2^26 (0x7FFE) and maxpos 2^28 (0x7FFF) the boundary is 2^27, the 17-bit posit 0x0FFFD
    x = torch.tensor([1.2 * 2**27, 2**27, np.nextafter(F32(2**27), F32(0))])
    assert fmt.quantize(x).tolist() == [2.0**28, 2.0**26, 2.0**26]  # 2^27 ties to the even 0x7FFE
    assert softposit.posit16(1.2 * 2**27) == softposit.posit16(2.0**28)


def test_posit_never_underflows_and_saturates():
    fmt = get_format("posit8_0")
    x = torch.tensor([1e-30, -1e-30, 1e30, -1e30, 0.0, -0.0, 1.3, 100.0])
    y = fmt.quantize(x)
    assert y.tolist() == [1 / 64, -1 / 64, 64.0, -64.0, 0.0, 0.0, 1.3125, 64.0]
    assert not torch.signbit(y[5])  # one zero
    assert torch.isnan(fmt.quantize(torch.tensor([np.inf, -np.inf]))).all()  # the standard: +-inf -> NaR


def test_posit4_es0_value_set():
    expected = [0, 0.25, 0.5, 0.75, 1, 1.5, 2, 4]
    assert get_format("posit4_0").values().tolist() == sorted({-v for v in expected} | set(expected))


SMALL_POSITS = [(2, 0), (3, 1), (4, 0), (5, 2), (6, 1), (6, 3), (7, 0), (9, 1), (10, 3)]


@pytest.mark.parametrize("n,es", SMALL_POSITS)
def test_posit_equals_definition_by_enumeration(n, es):
    fmt = Posit(n, es)
    ref = np.array([reference_posit_decode(p, n, es) for p in range(2**n)])
    np.testing.assert_array_equal(fmt.values().numpy(), np.sort(ref[np.isfinite(ref)]))
    x = probes(fmt.values().numpy(), reference_posit_bounds(n, es), seed=n * 4 + es, n_random=500)
    expected = np.array([reference_posit_round(v, n, es) for v in x.tolist()], dtype=F32)
    assert_same_floats(q(fmt, x), expected)


# ---------------------------------------------------------------------------------------------------- integers

@pytest.mark.parametrize("bits", range(2, 17))
@pytest.mark.parametrize("signed,symmetric", [(True, False), (True, True), (False, False)])
def test_int_formats_match_fake_quant_int_with_scale_one(bits, signed, symmetric):
    fmt = IntFormat(bits, signed, symmetric)
    qmin, qmax = int_grid(bits, signed, symmetric)
    assert (fmt.min, fmt.max) == (qmin, qmax)
    assert get_format(fmt.name) == fmt
    x = torch.cat([torch.arange(qmin - 3, qmax + 3, 0.5) if bits <= 8 else torch.linspace(-70000, 70000, 4001),
                   torch.tensor([np.inf, -np.inf, 0.49999997, 2.5, -2.5])])
    expected = fake_quant_int(x, torch.tensor(1.0), None, qmin, qmax)
    torch.testing.assert_close(fmt.quantize(x), expected, rtol=0, atol=0)


def test_int4_values():
    assert get_format("int4").quantize(torch.tensor([2.5, 3.5, -9.3, 200.0, -0.5])).tolist() == [2, 4, -8, 7, 0]
    assert get_format("uint4").quantize(torch.tensor([-3.0, 7.5, 99.0])).tolist() == [0, 8, 15]
    assert get_format("int8").max == 127 and get_format("int8").min == -128


# -------------------------------------------------------------------------------------- stochastic rounding

STOCHASTIC_CASES = [("int8", 2.3), ("int4", -5.75), ("fp8_e4m3", 0.3), ("fp8_e4m3", 300.0), ("fp8_e5m2", -1e-6),
                    ("e2m1", 2.4), ("posit8_0", 40.0), ("posit16_1", 3.3e-4), ("posit8_0", 1e-3)]


@pytest.mark.parametrize("name,x", STOCHASTIC_CASES)
def test_stochastic_rounding_is_unbiased_between_the_two_neighbours(name, x):
    fmt = get_format(name)
    values = fmt.values().double()
    xv = torch.tensor(x, dtype=torch.float32).item()
    lo, hi = values[values <= xv].max().item(), values[values >= xv].min().item()
    assert lo < xv < hi
    g = torch.Generator().manual_seed(0)
    y = fmt.quantize(torch.full((40000,), x), rounding="stochastic", generator=g).double()
    assert set(y.unique().tolist()) == {lo, hi}
    p = (xv - lo) / (hi - lo)
    std_of_mean = (hi - lo) * math.sqrt(p * (1 - p) / len(y))
    assert abs(y.mean().item() - xv) < 5 * std_of_mean


@pytest.mark.parametrize("name", ["int8", "fp8_e4m3", "e3m2", "posit8_1", "posit16_1"])
def test_stochastic_rounding_keeps_representable_values_and_is_seeded(name):
    fmt = get_format(name)
    v = fmt.values()
    assert torch.equal(fmt.quantize(v, rounding="stochastic"), v)
    x = torch.randn(1000, generator=torch.Generator().manual_seed(1)) * 4
    a = fmt.quantize(x, rounding="stochastic", generator=torch.Generator().manual_seed(7))
    b = fmt.quantize(x, rounding="stochastic", generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    idx = torch.searchsorted(v, x.clamp(v[0], v[-1]))
    assert torch.all((a == v[idx]) | (a == v[(idx - 1).clamp(min=0)]))


def test_bad_rounding_is_rejected():
    with pytest.raises(ValueError, match="nearest"):
        get_format("int8").quantize(torch.ones(2), rounding="up")


# ---------------------------------------------------------------------------------------- hypothesis properties

PROPERTY_FORMATS = ["int4", "uint8", "fp8_e4m3", "fp8_e5m2", "e2m1", "e3m2", "e2m0", "e8m7", "posit8_0",
                    "posit16_1", "posit5_2"]
floats32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(PROPERTY_FORMATS), xs=st.lists(floats32, min_size=1, max_size=30))
def test_quantize_is_idempotent_monotone_and_in_the_value_set(name, xs):
    fmt = get_format(name)
    x = torch.tensor(sorted(xs), dtype=torch.float32)
    y = fmt.quantize(x)
    assert torch.equal(fmt.quantize(y), y)
    assert torch.all(y[1:] >= y[:-1])
    assert torch.all(torch.isin(y, fmt.values()))


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(PROPERTY_FORMATS), xs=st.lists(floats32, min_size=1, max_size=30))
def test_stochastic_result_is_a_neighbour(name, xs):
    fmt = get_format(name)
    x = torch.tensor(xs, dtype=torch.float32)
    y = fmt.quantize(x, rounding="stochastic", generator=torch.Generator().manual_seed(0))
    v = fmt.values()
    xc = x.clamp(v[0], v[-1])
    idx = torch.searchsorted(v, xc)
    assert torch.all((y == v[idx]) | (y == v[(idx - 1).clamp(min=0)]))


# ------------------------------------------------------------------------------------- dtypes, shapes, names

@pytest.mark.parametrize("name", ["int8", "fp8_e4m3", "fp8_e5m2", "e3m2", "posit8_1"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_inputs_round_in_float32_and_keep_dtype_and_shape(name, dtype):
    fmt = get_format(name)
    x = (torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(0)) * 8).to(dtype)
    y = fmt.quantize(x)
    assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(y, fmt.quantize(x.float()).to(dtype), rtol=0, atol=0)
    assert fmt.quantize(x, rounding="stochastic").dtype == dtype


@pytest.mark.parametrize("name", ["int8", "fp8_e4m3", "posit16_1"])
def test_empty_scalar_and_strided_inputs(name):
    fmt = get_format(name)
    assert fmt.quantize(torch.empty(0, 4)).shape == (0, 4)
    assert fmt.quantize(torch.tensor(1.0)).shape == ()
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fmt.quantize(x.t()[::2]), fmt.quantize(x.t()[::2].contiguous()), rtol=0, atol=0)


def test_format_metadata():
    expected = {"int8": (8, 127), "int4": (4, 7), "uint4": (4, 15), "int16": (16, 32767), "fp8_e4m3": (8, 448),
                "fp8_e5m2": (8, 57344), "e3m2": (6, 28), "e2m1": (4, 6), "posit8_0": (8, 64),
                "posit16_1": (16, 2.0**28), "posit8_1": (8, 2.0**12), "posit16_3": (16, 2.0**112)}
    for name, (bits, top) in expected.items():
        fmt = get_format(name)
        assert (fmt.name, fmt.bits, fmt.max) == (name, bits, top)
        assert fmt.values().max().item() == top


def test_names_round_trip_and_aliases():
    for name in ["int2", "uint16", "int8_sym", "fp8_e4m3", "fp8_e5m2", "e2m1", "e4m3_ieee", "e4m3_finite",
                 "fp8_e5m2_nosat", "e3m4_ieee", "e8m7", "e3m2_fn", "posit2_0", "posit16_3"]:
        assert get_format(name).name == name
    assert get_format("e4m3") == get_format("fp8_e4m3") == Minifloat(4, 3, "fn")
    assert get_format("e5m2") == get_format("fp8_e5m2") == Minifloat(5, 2, "ieee")
    assert get_format("e4m3_fn_nosat").name == "fp8_e4m3_nosat"
    assert get_format("e8m7_ieee").name == "e8m7"


@pytest.mark.parametrize("name", ["int1", "int17", "uint8_sym", "float8", "e1m2", "e9m1", "e3m11", "e8m7_finite",
                                  "e2m0_fn", "fp8_e3m4", "fp8_e4m3_ieee", "posit17_1", "posit8_4", "posit8", ""])
def test_bad_names_list_the_accepted_patterns(name):
    with pytest.raises(ValueError) as err:
        get_format(name)
    assert all(pattern in str(err.value) for pattern in FORMAT_PATTERNS)


def test_round_minifloat_rejects_nonsaturating_finite():
    with pytest.raises(ValueError, match="always saturates"):
        round_minifloat(torch.ones(1), 2, 1, "finite", saturate=False)


# -------------------------------------------------------------------------------------- straight-through

@pytest.mark.parametrize("name", ["fp8_e4m3", "posit8_0", "int4"])
def test_ste_passes_gradient_inside_the_range_only(name):
    fmt = get_format(name)
    x = torch.tensor([-1e4, fmt.min, -0.3, 0.0, 1.7, fmt.max, 1e4], requires_grad=True)
    y = quantize_ste(fmt, x)
    assert torch.equal(y.detach(), fmt.quantize(x.detach()))
    y.backward(torch.arange(1.0, 8.0))
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]

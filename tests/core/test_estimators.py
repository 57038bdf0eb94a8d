"""Clipping range estimators (percentile, MSE) and per-embedding-group ranges, against hand-computed references."""
import math

import numpy as np
import pytest
import torch
from scipy import optimize, stats

from fairseq_quant.core.estimators import (
    current_minmax,
    expand_groups,
    group_index,
    group_minmax,
    int_qparams,
    mse_range,
    per_dim_minmax,
    percentile_range,
)
from fairseq_quant.core.formats import fake_quant_int


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def laplace(n: int, seed: int) -> torch.Tensor:
    """``n`` samples of Laplace(0, b=1), by inverting its CDF."""
    u = torch.rand(n, generator=gen(seed), dtype=torch.float64) - 0.5
    return (-torch.sign(u) * torch.log1p(-2 * u.abs())).float()


def quant_mse(x: torch.Tensor, lo, hi, bits=4, signed=True, symmetric=True, axis=None) -> float:
    q = fake_quant_int(x, *int_qparams(torch.as_tensor(lo), torch.as_tensor(hi), bits, signed, symmetric), axis)
    return float(((q - x).double() ** 2).mean())


# ---------------------------------------------------------------------------------------------------------------
# percentile_range


def test_percentile_of_arange_is_exact():
    x = torch.arange(10001.0)[torch.randperm(10001, generator=gen(0))]
    lo, hi = percentile_range(x, 99.99)
    assert (lo.item(), hi.item()) == (1.0, 9999.0)  # positions 0.0001 * 10000 = 1 and 9999
    assert lo.dtype == torch.float32 and lo.shape == ()
    lo, hi = percentile_range(torch.arange(11.0), 99.0)  # positions 0.1 and 9.9: interpolated
    assert lo.item() == pytest.approx(0.1, abs=1e-6) and hi.item() == pytest.approx(9.9, abs=1e-6)
    lo, hi = percentile_range(x, 100)
    assert (lo.item(), hi.item()) == (0.0, 10000.0)  # the min-max


def test_percentile_matches_numpy_per_channel_and_per_tensor():
    x = torch.randn(5, 999, generator=gen(1))
    for axis in (0, 1):
        lo, hi = percentile_range(x, 97.3, axis=axis)
        other = 1 - axis
        np.testing.assert_allclose(lo.numpy(), np.percentile(x.numpy(), 2.7, axis=other), rtol=0, atol=1e-6)
        np.testing.assert_allclose(hi.numpy(), np.percentile(x.numpy(), 97.3, axis=other), rtol=0, atol=1e-6)
        assert lo.shape == (x.shape[axis],)
    lo, hi = percentile_range(x.half(), 99.9)
    assert lo.dtype == torch.float32
    assert hi.item() == pytest.approx(np.percentile(x.half().float().numpy(), 99.9), abs=1e-3)


def test_percentile_ignores_non_finite_values():
    x = torch.cat([torch.arange(10001.0), torch.tensor([math.nan, math.inf, -math.inf] * 50)])
    lo, hi = percentile_range(x[torch.randperm(len(x), generator=gen(2))], 99.99)
    assert (lo.item(), hi.item()) == (1.0, 9999.0)
    # per channel: each row counts its own finite elements; a row without any gets NaN
    rows = torch.stack([torch.arange(101.0), torch.arange(101.0), torch.full((101,), math.nan)])
    rows[1, 50:] = math.inf  # row 1 keeps 0 .. 49
    lo, hi = percentile_range(rows, 90, axis=0)
    assert lo[:2].tolist() == pytest.approx([10.0, 4.9]) and hi[:2].tolist() == pytest.approx([90.0, 44.1])
    assert lo[2].isnan() and hi[2].isnan()


def test_percentile_is_exact_beyond_torch_quantile_size_limit():
    n = 2**24 + 1  # torch.quantile refuses more than 2^24 elements
    x = (torch.arange(n) * 10368889 % n).float()  # 0 .. 2^24 shuffled (10368889 is prime to n)
    lo, hi = percentile_range(x, 99.99)
    pos = 0.0001 * (n - 1)  # 1677.7216
    assert lo.item() == pytest.approx(pos, abs=1e-3)
    assert hi.item() == np.float32(n - 1 - pos)


# ---------------------------------------------------------------------------------------------------------------
# mse_range

BRUTE_POINTS = 2000


def brute_force(x: torch.Tensor, bits: int, signed: bool, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """The MSE of every ``alpha = k / 2000`` (the reference): alphas and errors."""
    mn, mx = current_minmax(x)
    if signed and symmetric:
        mx = torch.maximum(-mn, mx)
        mn = -mx
    alphas = np.arange(1, BRUTE_POINTS + 1) / BRUTE_POINTS
    errors = np.array([quant_mse(x, a * mn, a * mx, bits, signed, symmetric) for a in alphas])
    return alphas, errors


CASES = {  # name: (data, bits, signed, symmetric)
    "gaussian": (lambda: torch.randn(2**16, generator=gen(3)), 4, True, True),
    "laplace": (lambda: laplace(2**16, seed=4), 4, True, True),
    "exponential_uint4": (lambda: laplace(2**16, seed=5).abs(), 4, False, False),
}
_BRUTE: dict = {}


@pytest.mark.parametrize("method", ["golden", "grid"])
@pytest.mark.parametrize("case", list(CASES))
def test_mse_range_finds_the_brute_force_optimum(case, method):
    make, bits, signed, symmetric = CASES[case]
    x = make()
    if case not in _BRUTE:
        _BRUTE[case] = brute_force(x, bits, signed, symmetric)
    alphas, errors = _BRUTE[case]
    mn, mx = current_minmax(x)
    amax = max(-mn.item(), mx.item())
    lo, hi = mse_range(x, bits, signed, symmetric, method=method)
    found = quant_mse(x, lo, hi, bits, signed, symmetric)
    best = errors.min()
    if method == "golden":
        # the error ripples with rounding: Brent's search lands within 0.2% of the dense grid's best error
        assert found <= best * 1.002
        assert hi.item() == pytest.approx(alphas[errors.argmin()] * (amax if symmetric else mx.item()), abs=0.03)
    else:
        # the default 100 alphas k/100 are every 20th of the reference's: it must pick their best exactly
        every20 = errors[19::20]
        assert found == pytest.approx(every20.min(), rel=1e-5)
        assert hi.item() == pytest.approx(alphas[19::20][every20.argmin()] * (amax if symmetric else mx.item()))
        assert found <= best * 1.01
    if signed and symmetric:
        assert lo.item() == -hi.item()
    assert found < quant_mse(x, mn, mx, bits, signed, symmetric)


def banner_mse(alpha: float, step: float, dist: str) -> float:
    """Banner et al. 2019, eq. (5)/(7): clipping error + step^2 / 12, for N(0, 1) or Laplace(0, 1)."""
    if dist == "gaussian":
        clip = 2 * ((alpha**2 + 1) * stats.norm.sf(alpha) - alpha * stats.norm.pdf(alpha))
    else:
        clip = 2 * math.exp(-alpha)
    return clip + step**2 / 12


@pytest.mark.parametrize(
    "dist, published, ours, tol",
    [("gaussian", 2.55, 2.474, 0.04), ("laplace", 5.03, 4.82, 0.15)],
)
def test_mse_range_matches_banner_optimum_for_this_grid(dist, published, ours, tol):
    # Banner et al.'s 4-bit optima (2.55 sigma, 5.03 b) assume 2^4 bins of width 2 alpha / 16. Our signed symmetric
    # 4-bit grid has 15 levels -7..7, step alpha / 7: the same model gives 2.48 sigma / 4.81 b, and the exact
    # expected error of this grid (numerical integration) is smallest at 2.474 sigma / 4.82 b.
    def argmin(step):
        return optimize.minimize_scalar(lambda a: banner_mse(a, step(a), dist), bounds=(0.5, 20), method="bounded").x

    assert argmin(lambda a: 2 * a / 16) == pytest.approx(published, abs=0.01)  # our reading of the paper
    assert argmin(lambda a: a / 7) == pytest.approx(ours, abs=0.02)
    # tol: the spread of the optimum of 2^18 samples over seeds (0.01 sigma, 0.05 b) with a margin
    x = torch.randn(2**18, generator=gen(6)) if dist == "gaussian" else laplace(2**18, seed=6)
    for method in ("golden", "grid"):
        lo, hi = mse_range(x, 4, signed=True, symmetric=True, method=method)
        assert hi.item() == pytest.approx(ours, abs=tol)


def test_mse_range_beats_minmax_on_laplace_tails():
    x = laplace(2**16, seed=7)  # max |x| ~ 11 b, optimum ~ 4.8 b
    mn, mx = current_minmax(x)
    lo, hi = mse_range(x, 4, True, True)
    assert quant_mse(x, mn, mx) > 3 * quant_mse(x, lo, hi)  # 0.200 vs 0.058
    lo, hi = mse_range(x, 8, True, True)
    assert quant_mse(x, mn, mx, 8) > 1.1 * quant_mse(x, lo, hi, 8)  # 6.6e-4 vs 5.8e-4


def test_mse_range_keeps_uniform_data_near_minmax():
    # U(-1, 1), step alpha / qmax: d/d alpha [(1 - alpha)^3 / 3 + alpha^3 / (12 qmax^2)] = 0 at
    # alpha = 2 qmax / (2 qmax + 1): 254/255 at 8 bits (min-max within 3%); 14/15 at 4 bits.
    x = torch.rand(2**16, generator=gen(8)) * 2 - 1
    mn, mx = current_minmax(x)
    amax = max(-mn.item(), mx.item())
    lo, hi = mse_range(x, 8, True, True)
    assert hi.item() / amax == pytest.approx(254 / 255, abs=0.002)
    assert 1.0 <= quant_mse(x, mn, mx, 8) / quant_mse(x, lo, hi, 8) < 1.03  # 1.021
    lo, hi = mse_range(x, 8, True, True, method="grid")
    assert hi.item() == amax  # alpha = 1 is the grid's nearest point
    lo, hi = mse_range(x, 4, True, True)
    assert hi.item() / amax == pytest.approx(14 / 15, abs=0.01)


def test_mse_range_per_channel_equals_per_slice():
    g = gen(9)
    x = torch.stack([torch.randn(4096, generator=g), 3 * laplace(4096, seed=10), torch.rand(4096, generator=g),
                     torch.full((4096,), math.nan)])
    for method in ("golden", "grid"):
        lo, hi = mse_range(x, 4, True, False, method=method, axis=0)
        assert lo.shape == hi.shape == (4,)
        for c in range(3):
            lo_c, hi_c = mse_range(x[c], 4, True, False, method=method)
            assert (lo[c].item(), hi[c].item()) == (lo_c.item(), hi_c.item())
        assert lo[3].isnan() and hi[3].isnan()
        lo_t, hi_t = mse_range(x.t(), 4, True, False, method=method, axis=1)
        assert torch.equal(lo_t[:3], lo[:3]) and torch.equal(hi_t[:3], hi[:3]) and lo_t[3].isnan()


def test_mse_range_ignores_non_finite_values():
    x = torch.randn(4096, generator=gen(11))
    dirty = torch.cat([x, torch.tensor([math.nan, math.inf, -math.inf])])
    assert mse_range(dirty, 4, True, True, method="grid") == mse_range(x, 4, True, True, method="grid")
    (_, hi_dirty), (_, hi) = mse_range(dirty, 4, True, True), mse_range(x, 4, True, True)
    assert hi_dirty.item() == pytest.approx(hi.item(), abs=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# per-embedding-group ranges


def test_group_index_contiguous_and_permuted():
    assert group_index(torch.zeros(10), 3, permute=False).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    for channels in range(1, 20):  # sizes as numpy.array_split: as equal as possible, the larger groups first
        for groups in range(1, channels + 1):
            parts = np.array_split(np.arange(channels), groups)
            expected = [g for g, part in enumerate(parts) for _ in part]
            assert group_index(torch.zeros(channels), groups, permute=False).tolist() == expected
    assert group_index(torch.tensor([1.0, 9, 2, 8]), 2, permute=True).tolist() == [0, 1, 0, 1]
    assert group_index(torch.tensor([1.0, 9, 2, 8]), 1, permute=True).tolist() == [0, 0, 0, 0]
    ranges = torch.rand(12, generator=gen(12))
    idx = group_index(ranges, 12, permute=True)  # per embedding: each dim its own group, ordered by range
    assert idx.dtype == torch.int64
    assert idx.tolist() == torch.argsort(torch.argsort(ranges)).tolist()
    idx = group_index(ranges, 5, permute=True)
    assert torch.bincount(idx).tolist() == [3, 3, 2, 2, 2]
    for g in range(4):  # every dim of a group has a range below every dim of the next group
        assert ranges[idx == g].max() < ranges[idx == g + 1].min()


def test_per_dim_and_group_minmax():
    x = torch.tensor([[[1.0, -2.0, 5.0]], [[3.0, 0.0, math.inf]]])  # (2, 1, C=3)
    lo, hi = per_dim_minmax(x)
    assert lo.tolist() == [1.0, -2.0, 5.0] and hi.tolist() == [3.0, 0.0, 5.0]
    glo, ghi = group_minmax(torch.tensor([0.0, -2, -1]), torch.tensor([1.0, 5, 3]), torch.tensor([0, 1, 0]), 2)
    assert glo.tolist() == [-1.0, -2.0] and ghi.tolist() == [3.0, 5.0]
    # dims without data (NaN) are left out; a group left with none (and an empty group) is NaN
    glo, ghi = group_minmax(torch.tensor([math.nan, -2, 1]), torch.tensor([math.nan, 5, 3]), torch.tensor([0, 1, 1]), 3)
    assert glo[1].item() == -2.0 and ghi[1].item() == 5.0
    assert glo[[0, 2]].isnan().all() and ghi[[0, 2]].isnan().all()
    assert expand_groups(torch.tensor([10.0, 20.0]), torch.tensor([0, 1, 0])).tolist() == [10.0, 20.0, 10.0]


def peg_quant_error(x: torch.Tensor, groups: int, permute: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared int8 (asymmetric) error of ``x`` with per-embedding-group ranges, and the group index."""
    lo, hi = per_dim_minmax(x)
    idx = group_index(hi - lo, groups, permute)
    glo, ghi = group_minmax(lo, hi, idx, groups)
    qparams = int_qparams(expand_groups(glo, idx), expand_groups(ghi, idx), 8, signed=True, symmetric=False)
    return (fake_quant_int(x, *qparams, axis=-1) - x) ** 2, idx


def test_peg_with_permutation_isolates_outlier_dims():
    x = torch.randn(512, 768, generator=gen(13))
    x[:, [5, 300]] *= 50  # two outlier embedding dims, as in BERT's residual stream
    mn, mx = current_minmax(x)
    per_tensor = (fake_quant_int(x, *int_qparams(mn, mx, 8, True, False)) - x) ** 2
    base = per_tensor.mean()
    one, _ = peg_quant_error(x, 1, permute=True)
    assert torch.equal(one, per_tensor)  # one group is per tensor: no gain at all
    contiguous, _ = peg_quant_error(x, 6, permute=False)
    permuted, idx = peg_quant_error(x, 6, permute=True)
    assert idx[5] == idx[300] == 5  # both outliers in the last group
    # Only the 128 dims sharing the outliers' group keep the coarse grid: the error drops ~768/128 = 6x with
    # permutation (measured 6.0x), ~3x without (the outliers land in groups 0 and 2: 256 coarse dims; 3.3x).
    assert base / permuted.mean() > 5
    assert 2 < base / contiguous.mean() < 4
    # the 640 dims outside the outlier group: ~1700x less error
    outside = idx != 5
    assert per_tensor[:, outside].mean() / permuted[:, outside].mean() > 100


# ---------------------------------------------------------------------------------------------------------------
# bad arguments


def test_bad_arguments_raise_value_errors_naming_them():
    x = torch.randn(100, generator=gen(14))
    for p in (50, 100.5, 0, math.nan):
        with pytest.raises(ValueError, match=r"percentile must be in \(50, 100\], got"):
            percentile_range(x, p)
    with pytest.raises(ValueError, match=r"method must be one of \('golden', 'grid'\), got 'brent'"):
        mse_range(x, 4, True, True, method="brent")
    for n in (0, -3, 2.5):
        with pytest.raises(ValueError, match="grid_points must be a positive integer"):
            mse_range(x, 4, True, True, method="grid", grid_points=n)
    with pytest.raises(ValueError, match="bits must be"):
        mse_range(x, 1, True, True)
    for g in (0, 11, 2.0):
        with pytest.raises(ValueError, match="groups must be an integer from 1 to 10"):
            group_index(torch.zeros(10), g, permute=False)

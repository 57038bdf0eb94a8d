"""QuantSpec: one value names the format, every rule on a spec's values is checked when it is made, and the
estimator registry gives the names a spec takes."""
import pytest

from fairseq_quant.core.estimators import ESTIMATORS
from fairseq_quant.core.spec import QuantSpec


def test_one_value_names_the_grid():
    assert (QuantSpec(format="int4").bits, QuantSpec(format="int4").signed, QuantSpec(format="int4").is_int) == \
        (4, True, True)
    assert QuantSpec(format="uint8").grid_name == "uint8" and not QuantSpec(format="uint8").signed
    assert QuantSpec(format="fp8_e4m3").bits == 8 and not QuantSpec(format="fp8_e4m3").is_int
    assert QuantSpec(format="fp8_e4m3", scaling="amax").grid_name == "fp8_e4m3*amax"
    assert QuantSpec(format="uint4").with_bits(6).format == "uint6"  # cyclic precision keeps the signedness
    with pytest.raises(ValueError, match="fixed width"):
        QuantSpec(format="posit8_1").with_bits(4)


def test_estimators_come_from_the_registry():
    assert set(ESTIMATORS) == {"minmax", "percentile", "mse", "mse_grid"}
    with pytest.raises(ValueError, match=r"estimator must be one of \('minmax', 'percentile', 'mse', 'mse_grid'\)"):
        QuantSpec(estimator="mean")
    with pytest.raises(ValueError, match="searches integer grids; floating-point formats use minmax or percentile"):
        QuantSpec(format="e4m3", estimator="mse")
    assert QuantSpec(format="e4m3", estimator="percentile").estimator == "percentile"


def test_bad_spec_values_name_the_field():
    with pytest.raises(ValueError, match="format must be intN, uintN .* or a floating-point format.*accepted"):
        QuantSpec(format="fp9")
    assert QuantSpec(format="int4").bits == 4 and not QuantSpec(format="uint4").signed  # one value: the grid
    with pytest.raises(ValueError, match="scaling must be one of"):
        QuantSpec(scaling="max")


def test_spec_validation_names_allowed_values():
    with pytest.raises(ValueError, match="from 2 to 16"):
        QuantSpec(format="int1")
    with pytest.raises(ValueError, match="from 2 to 16"):
        QuantSpec(format="uint17")
    with pytest.raises(ValueError, match="intN, uintN"):
        QuantSpec(format="int")
    with pytest.raises(ValueError, match="'off', 'measure', 'quantize'"):
        QuantSpec(mode="fast")

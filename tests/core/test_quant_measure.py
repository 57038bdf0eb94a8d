"""QuantMeasure and the integer format: exact values, error bounds, gradients, state, non-finite policy."""
import math

import pytest
import torch

from fairseq_quant.core.estimators import current_minmax, int_qparams
from fairseq_quant.core.formats import fake_quant_int, int_grid
from fairseq_quant.core.quant_measure import QuantMeasure
from fairseq_quant.core.spec import QuantSpec, int_format


def qm(**kw) -> QuantMeasure:
    """A quantizer of ``kw`` (QuantSpec fields; ``bits``/``signed`` name the integer format)."""
    kw.setdefault("mode", "quantize")
    if "bits" in kw or "signed" in kw:
        kw["format"] = int_format(kw.pop("bits", 8), kw.pop("signed", True))
    return QuantMeasure(QuantSpec(**kw))


def test_int_grid_ranges():
    assert int_grid(8, signed=True, symmetric=True) == (-127, 127)
    assert int_grid(8, signed=True, symmetric=False) == (-128, 127)
    assert int_grid(4, signed=False, symmetric=True) == (0, 15)
    assert int_grid(2, signed=True, symmetric=True) == (-1, 1)
    assert int_grid(16, signed=False, symmetric=False) == (0, 65535)
    with pytest.raises(ValueError, match="from 2 to 16"):
        int_grid(17, True, True)


def test_symmetric_int4_exact_values():
    # amax = 7/8 -> scale = 1/8 (exact in binary); values land on k/8, ties to even: -2.5 -> -2, 1.5 -> 2
    x = torch.tensor([-0.875, -2.5 / 8, 0.0, 1.5 / 8, 0.3, 0.875])
    y = qm(bits=4, dynamic=True)(x)
    expected = torch.tensor([-7.0, -2.0, 0.0, 2.0, 2.0, 7.0]) / 8
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-7)


def test_asymmetric_uint8_qparams_and_values():
    scale, zp, qmin, qmax = int_qparams(torch.tensor(-1.0), torch.tensor(3.0), 8, signed=False, symmetric=False)
    assert (qmin, qmax) == (0, 255)
    assert scale.item() == pytest.approx(4 / 255)
    assert zp.item() == 64
    x = torch.tensor([-1.0, 0.0, 1.0, 3.0, 5.0])
    y = fake_quant_int(x, scale, zp, qmin, qmax)
    s = 4 / 255
    expected = torch.tensor([-64 * s, 0.0, round(1 / s) * s, (255 - 64) * s, (255 - 64) * s])
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)
    assert y[1].item() == 0.0  # zero is exact


def test_range_is_widened_to_contain_zero():
    scale, zp, _, _ = int_qparams(torch.tensor(2.0), torch.tensor(4.0), 8, signed=False, symmetric=False)
    assert zp.item() == 0 and scale.item() == pytest.approx(4 / 255)


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8, 12, 16])
@pytest.mark.parametrize("symmetric", [True, False])
def test_error_within_half_a_step_inside_range(bits, symmetric):
    x = torch.randn(1000, generator=torch.Generator().manual_seed(bits)) * 3 + (0 if symmetric else 1)
    m = qm(bits=bits, symmetric=symmetric, dynamic=True)
    y = m(x)
    lo, hi = current_minmax(x)
    scale, _, qmin, qmax = int_qparams(lo, hi, bits, True, symmetric)
    assert (y - x).abs().max().item() <= scale.item() / 2 * (1 + 1e-5)
    levels = torch.unique(torch.round(y / scale)).numel()
    assert levels <= qmax - qmin + 1


def test_per_channel_weight_ranges():
    w = torch.tensor([[1.0, -0.5, 0.25], [100.0, 50.0, -25.0]])
    m = QuantMeasure(QuantSpec(mode="quantize", format="int3", per_channel=True, dynamic=True), channels=2)
    y = m(w)
    # per channel: scales 1/3 and 100/3, so the small row keeps its resolution
    torch.testing.assert_close(y[0], torch.tensor([1.0, -2 / 3, 1 / 3]))
    torch.testing.assert_close(y[1], torch.tensor([100.0, 200 / 3, -100 / 3]))
    per_tensor = QuantMeasure(QuantSpec(mode="quantize", format="int3", dynamic=True))(w)
    assert torch.equal(per_tensor[0], torch.tensor([0.0, 0.0, 0.0]))


def test_straight_through_gradient_inside_range_only():
    m = qm(bits=8, symmetric=True, momentum=0.0)
    m.train()
    m(torch.tensor([-2.0, 2.0]))  # running range [-2, 2]
    m.eval()
    x = torch.tensor([-3.0, -1.0, 0.0, 1.5, 2.0, 5.0], requires_grad=True)
    m(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_running_average_updates_in_training_only():
    m = qm(bits=8, momentum=0.5)
    m.train()
    m(torch.tensor([-1.0, 1.0]))
    m(torch.tensor([-3.0, 5.0]))
    assert m.running_min.item() == -2.0 and m.running_max.item() == 3.0
    assert m.num_batches_tracked.item() == 2
    m.eval()
    y = m(torch.tensor([-100.0, 100.0]))
    assert m.running_max.item() == 3.0  # not updated in eval
    assert y.max().item() == pytest.approx(3.0, abs=0.02)  # saturates at the running range


def test_dynamic_uses_current_batch_and_records_nothing():
    m = qm(bits=8, dynamic=True)
    m.train()
    y = m(torch.tensor([0.0, 10.0]))
    assert m.num_batches_tracked.item() == 0
    assert y.max().item() == pytest.approx(10.0)


def test_eval_without_recorded_range_falls_back_to_current_batch():
    m = qm(bits=8)
    m.eval()
    y = m(torch.tensor([-4.0, 4.0]))
    torch.testing.assert_close(y, torch.tensor([-4.0, 4.0]), atol=0.02, rtol=0)


def test_measure_mode_records_and_returns_input_unchanged():
    m = qm(mode="measure", bits=2, momentum=0.0)
    m.train()
    x = torch.randn(50)
    assert m(x) is x
    assert m.running_min.item() == x.min().item() and m.running_max.item() == x.max().item()


def test_off_mode_is_identity():
    x = torch.randn(5)
    assert qm(mode="off")(x) is x


def test_state_dict_round_trip_restores_ranges():
    m = qm(bits=6)
    m.train()
    m(torch.tensor([-2.0, 7.0]))
    state = m.state_dict()
    assert set(state) == {"running_min", "running_max", "num_batches_tracked"}
    fresh = qm(bits=6)
    fresh.load_state_dict(state)
    fresh.eval()
    assert fresh.running_min.item() == -2.0 and fresh.running_max.item() == 7.0
    x = torch.tensor([-100.0, 0.5, 100.0])
    m.eval()
    assert torch.equal(fresh(x), m(x))  # uses the restored range, not the batch's


def test_bf16_cast_keeps_ranges_float32_and_output_dtype():
    m = qm(bits=8).to(torch.bfloat16)
    assert m.running_min.dtype == torch.float32
    m.train()
    x = (torch.randn(64) * 1000).to(torch.bfloat16)
    y = m(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


# --- non-finite policy: ranges from finite values only; NaN stays NaN; inf saturates ---

@pytest.mark.parametrize("symmetric", [True, False])
def test_all_zero_constant_and_empty_inputs_stay_finite(symmetric):
    m = qm(bits=8, symmetric=symmetric)
    m.train()
    assert torch.equal(m(torch.zeros(7)), torch.zeros(7))
    c = qm(bits=8, symmetric=symmetric).train()(torch.full((5,), 3.0))
    assert torch.isfinite(c).all() and c[0].item() == pytest.approx(3.0, rel=1e-2)
    e = m(torch.empty(0, 4))
    assert e.shape == (0, 4)
    assert torch.isfinite(m.running_min).all() and torch.isfinite(m.running_max).all()


def test_inf_and_nan_do_not_poison_ranges():
    m = qm(bits=8, momentum=0.0)
    m.train()
    x = torch.tensor([-1.0, 0.5, 2.0, math.inf, -math.inf, math.nan])
    y = m(x)
    assert m.running_min.item() == -1.0 and m.running_max.item() == 2.0
    # symmetric range [-2, 2]: +-inf saturate to its ends
    assert y[3].item() == pytest.approx(2.0, abs=0.02) and y[4].item() == pytest.approx(-2.0, abs=0.02)
    assert math.isnan(y[5].item())  # NaN is not turned into a number
    assert torch.isfinite(y[:5]).all()
    only_bad = torch.tensor([math.nan, math.inf])
    m(only_bad)
    assert m.running_max.item() == 2.0  # no finite data: range unchanged
    follow = m(torch.tensor([0.1, -0.2, 1.9]))
    assert torch.isfinite(follow).all()


def test_per_channel_nan_row_keeps_other_rows():
    m = QuantMeasure(QuantSpec(mode="quantize", format="int8", per_channel=True, dynamic=True), channels=2)
    w = torch.tensor([[math.nan, math.nan], [1.0, -1.0]])
    y = m(w)
    assert torch.isnan(y[0]).all() and torch.equal(y[1], torch.tensor([1.0, -1.0]))




@pytest.mark.parametrize("bits,signed,symmetric",
                         [(8, True, True), (8, False, False), (4, True, False), (16, True, True)])
@pytest.mark.parametrize("per_channel", [False, True])
def test_fake_quant_matches_torch_reference_values_and_gradients(bits, signed, symmetric, per_channel):
    g = torch.Generator().manual_seed(bits)
    x = (torch.randn(6, 50, generator=g) * torch.linspace(0.1, 5, 6)[:, None] + 0.3).requires_grad_(True)
    axis = 0 if per_channel else None
    lo, hi = current_minmax(x, axis)
    scale, zp, qmin, qmax = int_qparams(lo * 0.8, hi * 0.8, bits, signed, symmetric)  # some values outside
    y = fake_quant_int(x, scale, zp, qmin, qmax, axis)
    y.backward(torch.arange(300.0).reshape(6, 50))
    x_ref = x.detach().clone().requires_grad_(True)
    zp_ref = torch.zeros_like(scale, dtype=torch.int32) if zp is None else zp.to(torch.int32)
    if per_channel:
        ref = torch.fake_quantize_per_channel_affine(x_ref, scale, zp_ref, 0, qmin, qmax)
    else:
        ref = torch.fake_quantize_per_tensor_affine(x_ref, scale, zp_ref, qmin, qmax)
    ref.backward(torch.arange(300.0).reshape(6, 50))
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-6 * float(scale.max()))
    assert torch.equal(x.grad, x_ref.grad)


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "asymmetric"])
def test_a_learned_scale_keeps_its_clipping_range_when_the_bits_change(symmetric):
    """Cyclic precision with learned ranges: a scale learned on the 8-bit grid, used on the 4-bit grid, clips
    where it did (it used to be reused as it was: the clipping range fell from 7.52 to 0.44)."""
    spec = QuantSpec(mode="quantize", format="int8", symmetric=symmetric, learned=True)
    q = QuantMeasure(spec).train()
    q(torch.linspace(-2.0, 5.5, 200))

    def clip(q):
        p = q.eval_qparams()
        zp = 0.0 if p.zero_point is None else float(p.zero_point)
        return (p.qmin - zp) * float(p.scale), (p.qmax - zp) * float(p.scale), float(p.scale)

    lo8, hi8, _ = clip(q)
    assert hi8 == pytest.approx(5.5, rel=0.01)
    q.set_spec(spec.with_bits(4))
    lo4, hi4, step4 = clip(q)
    assert hi4 - lo4 == pytest.approx(hi8 - lo8, rel=1e-5)
    assert abs(lo4 - lo8) <= step4 / 2 and abs(hi4 - hi8) <= step4 / 2  # the zero point is rounded on the grid
    y = q.eval()(torch.tensor([5.5, -2.0]))
    assert float(y[0]) == pytest.approx(hi4, abs=1e-5)
    q.set_spec(spec)  # back at 8 bits: the scale learned there
    assert clip(q)[:2] == pytest.approx((lo8, hi8))


def test_ranges_of_another_granularity_load_as_unrecorded():
    """A per-tensor checkpoint loaded where embedding groups are asked for: the ranges cannot be kept, so the
    point must not count as recorded (it used to keep num_batches_tracked and quantize with zero ranges)."""
    saved = QuantMeasure(QuantSpec(mode="quantize", format="uint8", symmetric=False)).train()
    saved(torch.randn(4, 6))
    q = QuantMeasure(QuantSpec(mode="quantize", format="uint8", symmetric=False, groups=2))
    q.load_state_dict(saved.state_dict())
    assert int(q.num_batches_tracked) == 0
    x = torch.randn(3, 6)
    y = q.eval()(x)  # the tensor's own per-group ranges, until some are recorded
    assert torch.isfinite(y).all() and (y - x).abs().max() < 0.05


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "asymmetric"])
def test_learned_ranges_round_stochastically_when_asked(symmetric):
    """--quant-rounding stochastic at a learned-range point (it was silently nearest): unbiased in training, with
    LSQ's gradients (the same as torch's learnable fake quantization's, up to the rounding), nearest in evaluation."""
    spec = QuantSpec(mode="quantize", format="int4", symmetric=symmetric, learned=True, rounding="stochastic")
    q = QuantMeasure(spec).train()
    x = torch.linspace(-1.0, 1.0, 101)
    q(x)  # starts the learned scale
    torch.manual_seed(0)
    ys = torch.stack([q(x) for _ in range(400)])
    assert len({tuple(y.tolist()) for y in ys[:5]}) > 1  # random
    p = q.eval_qparams()
    step, zp = float(p.scale), 0.0 if p.zero_point is None else float(p.zero_point)
    inside = (x > (p.qmin - zp) * step) & (x < (p.qmax - zp) * step)  # the clipped ends are not rounding
    assert inside.sum() > 80
    assert (ys.mean(0) - x)[inside].abs().max() < 0.15 * step  # unbiased
    nearest = QuantMeasure(spec.replace(rounding="nearest")).train()
    nearest.load_state_dict(q.state_dict())
    xs = x.clone().requires_grad_(True)
    q(xs).sum().backward()
    g_stochastic = q.lsq_scale.grad.clone()
    xn = x.clone().requires_grad_(True)
    nearest(xn).sum().backward()
    assert torch.isfinite(g_stochastic).all() and bool((g_stochastic != 0).all())
    assert torch.equal(xs.grad[inside], xn.grad[inside])  # straight-through inside the range
    assert torch.equal(q.eval()(x), nearest.eval()(x))  # evaluation rounds to nearest


def test_training_weight_clipping_is_searched_once_per_bit_width(monkeypatch):
    # a clipping estimator's search runs when the bits change (or every CLIP_REFRESH forwards); in between the
    # weight takes the searched fraction of its current min-max
    from dataclasses import replace

    from fairseq_quant.core import estimators, quant_measure
    calls = []
    search = estimators.ESTIMATORS["mse_grid"]
    monkeypatch.setitem(estimators.ESTIMATORS, "mse_grid", replace(
        search, estimate=lambda x, axis, spec: calls.append(spec.bits) or search.estimate(x, axis, spec)))
    monkeypatch.setattr(quant_measure, "CLIP_REFRESH", 3)
    torch.manual_seed(0)
    w = torch.randn(4, 256)
    spec = QuantSpec(mode="quantize", format="int3", per_channel=True, dynamic=True, estimator="mse_grid")
    m = QuantMeasure(spec, channels=4, role="weight").train()
    lo, hi = estimators.mse_range(w, 3, True, True, "grid", axis=0)
    qmin, qmax = int_grid(3, True, True)
    torch.testing.assert_close(m(w), fake_quant_int(w, *int_qparams(lo, hi, 3, True, True)[:2], qmin, qmax, 0))
    moved = w * 1.5  # the weight after some updates: the same clipping fraction of its new min-max
    torch.testing.assert_close(m(moved), fake_quant_int(moved, *int_qparams(1.5 * lo, 1.5 * hi, 3, True, True)[:2],
                                                         qmin, qmax, 0))
    assert (hi.abs() < w.abs().amax(dim=1)).all() and calls == [3]  # clipped, from one search
    m(w)
    m.set_spec(replace(spec, format="int5"))  # cyclic precision: other bits, a new search
    m(w)
    m(w), m(w), m(w)  # the fourth forward at 5 bits: CLIP_REFRESH (3) passed, searched again
    assert calls == [3, 5, 5]

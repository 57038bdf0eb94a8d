"""Calibration (ptq/calibrate.py): how the batches' ranges make the calibrated range, as its docstring says."""
import pytest
import torch

from fairseq_quant.core.estimators import current_minmax
from fairseq_quant.ptq.calibrate import calibrate
from fairseq_quant.ptq.loader import load_model_and_task

POINT = "encoder.sentence_encoder.layers.1.fc2.input_quant"


def calibrated_with_inputs(qat_run, tiny_data, average: str, n: int = 4):
    model, task, _ = load_model_and_task(str(qat_run / "checkpoint_last.pt"), str(tiny_data), {})
    model.eval()
    q = dict(model.named_modules())[POINT]
    seen = []
    hook = q.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    assert calibrate(model, task, "train", n, 16, 1, torch.device("cpu"), average=average) == n
    hook.remove()
    return q, [current_minmax(x) for x in seen]


def test_equal_average_takes_the_extremes_of_min_max_ranges(qat_run, tiny_data):
    q, ranges = calibrated_with_inputs(qat_run, tiny_data, "equal")
    assert len(ranges) == 4
    assert torch.equal(q.running_min, torch.stack([lo for lo, _ in ranges]).min().reshape(1))
    assert torch.equal(q.running_max, torch.stack([hi for _, hi in ranges]).max().reshape(1))
    assert int(q.num_batches_tracked) == 1 and not q.training


def test_running_average_weighs_batches_by_the_momentum(qat_run, tiny_data):
    q, ranges = calibrated_with_inputs(qat_run, tiny_data, "running")
    m = q.spec.momentum
    his = [float(hi) for _, hi in ranges]
    weights = [m ** 3] + [(1 - m) * m ** (3 - k) for k in range(1, 4)]  # the first batch starts the average
    assert sum(weights) == pytest.approx(1.0)
    assert float(q.running_max) == pytest.approx(sum(w * h for w, h in zip(weights, his)), rel=1e-6)
    assert float(q.running_max) != pytest.approx(max(his))


def test_unknown_average_is_refused(qat_run, tiny_data):
    model, task, _ = load_model_and_task(str(qat_run / "checkpoint_last.pt"), str(tiny_data), {})
    with pytest.raises(ValueError, match=r"average must be one of \('running', 'equal'\)"):
        calibrate(model, task, "train", 2, 16, 1, torch.device("cpu"), average="median")

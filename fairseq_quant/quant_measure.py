"""QuantMeasure: one quantization point = a spec + a range estimate + saved state + a mode."""
from __future__ import annotations

import logging

import torch
from torch import nn

from .estimators import current_minmax, int_qparams, running_average
from .formats import fake_quant_int
from .spec import QuantSpec

__all__ = ["QuantMeasure"]

logger = logging.getLogger(__name__)


class QuantMeasure(nn.Module):
    """Measures the range of the tensors passing through it and, in ``quantize`` mode, fake-quantizes them.

    State lives in float32 buffers (``running_min``, ``running_max``: shape ``(channels,)``) and the counter
    ``num_batches_tracked``, so checkpoints carry it. Running ranges are updated only in training mode; in
    evaluation mode they are used as they are — or, while nothing has been recorded yet, the current tensor's
    range is used. Buffers stay float32 when the model is cast to fp16/bf16.

    Args:
        spec: what to do (see ``QuantSpec``).
        channels: number of channels for per-channel ranges (the size of axis 0 of the tensors it sees).
    """

    def __init__(self, spec: QuantSpec, channels: int = 1):
        super().__init__()
        self.spec = spec
        self.channels = channels if spec.per_channel else 1
        self.register_buffer("running_min", torch.zeros(self.channels))
        self.register_buffer("running_max", torch.zeros(self.channels))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))
        self._initialized = False  # mirrors num_batches_tracked > 0 without a device sync

    def set_spec(self, spec: QuantSpec) -> None:
        """Switch to ``spec`` (same granularity: the buffers' shape depends on it)."""
        if spec.per_channel != self.spec.per_channel:
            raise ValueError("a quantizer's granularity is fixed when it is built; build a new one instead")
        self.spec = spec

    def reset_ranges(self) -> None:
        """Forget the recorded ranges (e.g. before calibration)."""
        self.running_min.zero_()
        self.running_max.zero_()
        self.num_batches_tracked.zero_()
        self._initialized = False

    @property
    def active(self) -> bool:
        return self.spec.mode != "off"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        if spec.mode == "off" or x.numel() == 0:
            return x
        axis = 0 if spec.per_channel else None
        if spec.mode == "measure":
            if self.training:
                self._record(*current_minmax(x, axis))
            return x
        if spec.dynamic or self.training or not self._initialized:
            lo, hi = current_minmax(x, axis)
            if self.training and not spec.dynamic:
                self._record(lo, hi)
        if not spec.dynamic and self._initialized:
            lo, hi = self.running_min, self.running_max
        scale, zero_point, qmin, qmax = int_qparams(lo, hi, spec.bits, spec.signed, spec.symmetric)
        return fake_quant_int(x, scale, zero_point, qmin, qmax, axis)

    @torch.no_grad()
    def _record(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        m = self.spec.momentum
        self.running_min.copy_(running_average(self.running_min, lo.reshape(-1), m, self._initialized))
        self.running_max.copy_(running_average(self.running_max, hi.reshape(-1), m, self._initialized))
        self.num_batches_tracked += 1
        self._initialized = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint without quantizer state (e.g. fairseq's own roberta.base) leaves this quantizer
        # initialised, as does one whose ranges have another shape (per-tensor saved, per-channel asked for).
        for name, buf in self._buffers.items():
            key = prefix + name
            if key not in state_dict:
                logger.debug(f"{key}: not in the checkpoint, initialised")
                state_dict[key] = buf
            elif state_dict[key].shape != buf.shape:
                logger.warning(f"{key}: shape {tuple(state_dict[key].shape)} in the checkpoint, "
                               f"{tuple(buf.shape)} here (granularity changed): initialised")
                state_dict[key] = buf
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initialized = bool(self.num_batches_tracked > 0)

    def _apply(self, fn, recurse=True):
        # Casting the model to fp16/bf16 must not cast the ranges: keep buffers float32, follow the device.
        super()._apply(fn, recurse)
        for name in ("running_min", "running_max"):
            buf = getattr(self, name)
            if buf.dtype != torch.float32:
                setattr(self, name, buf.float())
        return self

    def extra_repr(self) -> str:
        s = self.spec
        if s.mode == "off":
            return "off"
        grid = f"{'int' if s.signed else 'uint'}{s.bits}"
        kind = "symmetric" if s.symmetric else "asymmetric"
        gran = "per-channel" if s.per_channel else "per-tensor"
        ranges = "current" if s.dynamic else f"running(momentum={s.momentum})"
        return f"{s.mode}, {grid}, {kind}, {gran}, ranges={ranges}"

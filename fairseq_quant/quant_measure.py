"""QuantMeasure: one quantization point = a spec + a range estimate + saved state + a mode."""
from __future__ import annotations

import logging

import torch
from torch import nn

from .estimators import MIN_SCALE, current_minmax, int_qparams, running_average
from .formats import IntFormat, fake_quant_int, get_format, quantize_ste
from .spec import QuantSpec

__all__ = ["QuantMeasure"]

logger = logging.getLogger(__name__)


class QuantMeasure(nn.Module):
    """Measures the range of the tensors passing through it and, in ``quantize`` mode, fake-quantizes them.

    State lives in float32 buffers (``running_min``, ``running_max``: shape ``(channels,)``) and the counter
    ``num_batches_tracked``, so checkpoints carry it. Running ranges are updated only in training mode; in
    evaluation mode they are used as they are — or, while nothing has been recorded yet, the current tensor's
    range is used. Buffers stay float32 when the model is cast to fp16/bf16.

    Integer grids are scaled to the range; floating-point formats are used as they are, or (``scaling="amax"``)
    scaled so the range's largest magnitude maps onto the format's largest value. With ``grad_format`` the
    gradient flowing back through this point is rounded to that format too (amax-scaled per tensor).

    Args:
        spec: what to do (see ``QuantSpec``).
        channels: number of channels for per-channel ranges (the size of axis 0 of the tensors it sees).
        role: ``weight``, ``input`` or ``probs`` — which of a recipe's base specs this point takes.
        op: the operation group it belongs to (``gemm``, ``act``, ``norm``, ``residual``, ``attn_scaling``,
            ``output``, ``embedding``) — what ``--quantize-ops`` switches on. Both are set by the wrapper that
            owns the point; the quantizer itself never reads them.
    """

    def __init__(self, spec: QuantSpec, channels: int = 1, role: str = "input", op: str = "gemm"):
        super().__init__()
        self.spec = spec
        self.role, self.op = role, op
        self.num_channels = channels
        self.channels = channels if spec.per_channel else 1
        self.register_buffer("running_min", torch.zeros(self.channels))
        self.register_buffer("running_max", torch.zeros(self.channels))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))
        self._initialized = False  # mirrors num_batches_tracked > 0 without a device sync

    def set_spec(self, spec: QuantSpec) -> None:
        """Switch to ``spec``. A change of granularity (per tensor <-> per channel) rebuilds the ranges, which
        forgets the recorded ones (with a warning when there were any)."""
        if spec.per_channel != self.spec.per_channel:
            if self._initialized:
                logger.warning("quantizer granularity changed: its recorded ranges are reset")
            self.channels = self.num_channels if spec.per_channel else 1
            device = self.running_min.device
            self.running_min = torch.zeros(self.channels, device=device)
            self.running_max = torch.zeros(self.channels, device=device)
            self.num_batches_tracked.zero_()
            self._initialized = False
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
        if spec.grad_format is not None and self.training and x.requires_grad:
            # rounds the gradient that leaves this point (the STE passes it through the quantization unchanged)
            x = _RoundGradient.apply(x, get_format(spec.grad_format), spec.rounding)
        return self._quantize(x, lo, hi, axis) if spec.needs_range else self._quantize_unscaled(x)

    def _quantize(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, axis: int | None) -> torch.Tensor:
        spec = self.spec
        if spec.is_int:
            scale, zero_point, qmin, qmax = int_qparams(lo, hi, spec.bits, spec.signed, spec.symmetric)
            if self._rounding == "nearest":
                return fake_quant_int(x, scale, zero_point, qmin, qmax, axis)
            fmt = IntFormat(spec.bits, spec.signed, spec.symmetric)  # the grid int_qparams mapped onto
            zp = torch.zeros_like(scale) if zero_point is None else zero_point
        else:
            fmt = get_format(spec.format)
            amax = torch.maximum(-torch.nan_to_num(lo.float(), nan=0.0), torch.nan_to_num(hi.float(), nan=0.0))
            scale = (amax / fmt.max).clamp(min=MIN_SCALE).reshape(-1)
            zp = torch.zeros_like(scale)
        shape = (-1,) + (1,) * (x.dim() - 1) if axis is not None else ()
        scale, zp = scale.reshape(shape).to(x.dtype), zp.reshape(shape).to(x.dtype)
        t = (x / scale + zp).clamp(fmt.min, fmt.max)
        return (quantize_ste(fmt, t, self._rounding) - zp) * scale

    def _quantize_unscaled(self, x: torch.Tensor) -> torch.Tensor:
        fmt = get_format(self.spec.format)
        return quantize_ste(fmt, x.clamp(fmt.min, fmt.max), self._rounding)

    @property
    def _rounding(self) -> str:
        # stochastic rounding is a training technique: evaluation rounds to nearest, so it is deterministic
        return self.spec.rounding if self.training else "nearest"

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
        grid = s.grid_name + ("" if s.rounding == "nearest" else ", stochastic")
        if s.grad_format:
            grid += f", gradients {s.grad_format}"
        kind = "symmetric" if s.symmetric else "asymmetric"
        gran = "per-channel" if s.per_channel else "per-tensor"
        ranges = "current" if s.dynamic else f"running(momentum={s.momentum})"
        return f"{s.mode}, {grid}, {kind}, {gran}, ranges={ranges}"


class _RoundGradient(torch.autograd.Function):
    """Identity forward; the gradient is rounded to ``fmt`` after scaling its largest magnitude onto ``fmt.max``
    (per tensor, as FP8 training scales E5M2 gradients)."""

    @staticmethod
    def forward(ctx, x, fmt, rounding):
        ctx.fmt, ctx.rounding = fmt, rounding
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        fmt = ctx.fmt
        amax = torch.nan_to_num(grad.detach().abs().amax().float(), nan=0.0, posinf=0.0)
        scale = (amax / fmt.max).clamp(min=MIN_SCALE).to(grad.dtype)
        return (fmt.quantize((grad / scale).clamp(fmt.min, fmt.max), ctx.rounding) * scale), None, None

"""QuantMeasure: one quantization point = a spec + a range estimate + saved state + a mode."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from .estimators import (
    ESTIMATORS,
    MIN_SCALE,
    current_minmax,
    expand_groups,
    group_index,
    group_minmax,
    int_qparams,
    per_dim_minmax,
    running_average,
)
from .formats import fake_quant_int, get_format, int_grid, quantize_ste, round_int
from .spec import QuantSpec

__all__ = ["CLIP_REFRESH", "QParams", "QuantMeasure"]

logger = logging.getLogger(__name__)

# training forwards a weight's clipping fraction is kept before its estimator searches again (same bits)
CLIP_REFRESH = 50

# state only some specs have: per-embedding-group ranges, learned (LSQ) ranges
_OPTIONAL_STATE = ("dim_min", "dim_max", "group_index", "lsq_scale", "lsq_zero_point", "lsq_ready", "lsq_grid")


@dataclass(frozen=True)
class QParams:
    """The grid one quantization point rounds a tensor onto in evaluation mode (``QuantMeasure.eval_qparams``).

    format: ``int``, or the floating-point format's name (``fp8_e4m3``, ``posit8_1``, ...).
    scale, zero_point: float32 tensors of one element (per tensor) or one per slice along ``axis``; the zero point
        is integer-valued, ``None`` where it is 0. ``scale`` is ``None`` where the range comes from each tensor at
        run time (``source`` ``dynamic`` or ``uncalibrated``).
    qmin, qmax: the grid's ends: integers ``clamp(round_half_even(x * (1 / scale)) + zero_point, qmin, qmax)``, the
        value ``(q - zero_point) * scale`` (``formats.fake_quant_int``); floating-point formats round
        ``clamp(x / scale, qmin, qmax)`` to the format, times ``scale``.
    axis: ``None`` (per tensor), ``0`` (per output channel of a weight) or ``-1`` (per embedding dimension: the
        groups of per-embedding-group ranges expanded to their dimensions).
    source: ``static`` (recorded, calibrated, learned or the weight's own range), ``dynamic`` (from each tensor,
        by its spec) or ``uncalibrated`` (no range recorded yet: each tensor's own, until one is).
    """

    format: str
    scale: torch.Tensor | None
    zero_point: torch.Tensor | None
    qmin: float
    qmax: float
    axis: int | None
    source: str

    @property
    def bits(self) -> int:
        """Bits of an integer grid: the fewest that hold ``qmin .. qmax``."""
        return int(self.qmax - self.qmin).bit_length()


class QuantMeasure(nn.Module):
    """Measures the range of the tensors passing through it and, in ``quantize`` mode, fake-quantizes them.

    State lives in float32 buffers (``running_min``, ``running_max``: one range per tensor, per channel or per
    embedding group) and the counter ``num_batches_tracked``, so checkpoints carry it; per-embedding-group points
    also keep per-dimension ranges (``dim_min``, ``dim_max``) and the group of each dimension (``group_index``).
    Running ranges are updated only in training mode; in evaluation mode they are used as they are — or, while
    nothing has been recorded yet, the current tensor's range is used. Buffers stay float32 when the model is cast
    to fp16/bf16. Each range comes from the spec's estimator (min-max, percentile, MSE-optimal).

    Integer grids are scaled to the range; floating-point formats are used as they are, or (``scaling="amax"``)
    scaled so the range's largest magnitude maps onto the format's largest value. With ``grad_format`` the
    gradient flowing back through this point is rounded to that format too (amax-scaled per tensor). With
    ``learned`` (integer grids) the scale (and, asymmetric, the zero point) are parameters trained by gradient
    descent (LSQ), initialised from the estimated range at the first training step.

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
        self.role, self.op = role, op
        self.num_channels = channels
        self.spec = QuantSpec()
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))
        self._initialized = False  # mirrors num_batches_tracked > 0 without a device sync
        self._lsq_started = False  # mirrors lsq_ready, likewise
        self.token_mask: torch.Tensor | None = None  # (batch, time) True at real tokens, set during calibration
        self._weight_cache = None
        # Data-parallel training (plugin.distributed) sets ``defer``: a training forward then quantizes with its
        # own update of the running range but leaves the buffers as they are, keeping the batch statistics in
        # ``pending`` until ``commit`` applies the statistics combined over every worker; and ``combine`` (a
        # callable ``(point, lo, hi) -> (lo, hi)``) combines the range that starts a learned scale.
        self.defer = False
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self.combine = None
        self._build_state(spec)
        self.spec = spec

    # -- state --------------------------------------------------------------------------------------------------
    def _range_size(self, spec: QuantSpec) -> int:
        return spec.groups if spec.groups else self.num_channels if spec.per_channel else 1

    def _state_layout(self, spec: QuantSpec) -> tuple:
        return (self._range_size(spec), bool(spec.groups), spec.learned, spec.learned and not spec.symmetric)

    def _build_state(self, spec: QuantSpec) -> None:
        """(Re)create the buffers and parameters ``spec`` needs, empty."""
        device = self.num_batches_tracked.device
        size = self._range_size(spec)
        self.register_buffer("running_min", torch.zeros(size, device=device))
        self.register_buffer("running_max", torch.zeros(size, device=device))
        for name in _OPTIONAL_STATE:
            if hasattr(self, name):
                delattr(self, name)
        if spec.groups:  # sized by the embedding dimension when the first tensor arrives (or a checkpoint loads)
            self.register_buffer("dim_min", torch.zeros(0, device=device))
            self.register_buffer("dim_max", torch.zeros(0, device=device))
            self.register_buffer("group_index", torch.zeros(0, dtype=torch.long, device=device))
        if spec.learned:
            self.lsq_scale = nn.Parameter(torch.ones(size, device=device))
            if not spec.symmetric:
                self.lsq_zero_point = nn.Parameter(torch.zeros(size, device=device))
            self.register_buffer("lsq_ready", torch.zeros((), dtype=torch.bool, device=device))
            # the grid (qmin, qmax) the scale was learned on; (0, 0): the current one (checkpoints from before)
            self.register_buffer("lsq_grid", torch.zeros(2, device=device))
        self.num_batches_tracked.zero_()
        self._initialized = False
        self._lsq_started = False
        self._weight_cache = None

    def set_spec(self, spec: QuantSpec) -> None:
        """Switch to ``spec``. A change of granularity (per tensor, per channel, embedding groups) or of learned
        ranges rebuilds the state, which forgets the recorded ranges (with a warning when there were any)."""
        if self._state_layout(spec) != self._state_layout(self.spec):
            if self._initialized:
                logger.warning("quantizer granularity changed: its recorded ranges are reset")
            self._build_state(spec)
        self.spec = spec
        self._weight_cache = None

    def reset_ranges(self) -> None:
        """Forget the recorded ranges (e.g. before calibration); learned ranges start again from the estimate."""
        self.running_min.zero_()
        self.running_max.zero_()
        self.num_batches_tracked.zero_()
        if self.spec.groups:
            self.dim_min, self.dim_max = self.dim_min[:0], self.dim_max[:0]
            self.group_index = self.group_index[:0]
        if self.spec.learned:
            self.lsq_ready.zero_()
        self._initialized = False
        self._lsq_started = False
        self._weight_cache = None

    @property
    def active(self) -> bool:
        return self.spec.mode != "off"

    # -- forward ------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        if spec.mode == "off" or x.numel() == 0:
            return x
        if spec.groups:
            return self._forward_groups(x)
        axis = 0 if spec.per_channel else None
        if spec.mode == "measure":
            if self.training:
                self._record(*self._estimate(x, axis))
            return x
        if spec.grad_format is not None and self.training and x.requires_grad:
            # rounds the gradient that leaves this point (the STE passes it through the quantization unchanged)
            x = _RoundGradient.apply(x, get_format(spec.grad_format), spec.rounding)
        if spec.learned and self._lsq_started:
            # the learned scale has replaced the estimate: no estimator runs (an MSE search each step made QAT
            # 3x slower)
            return self._quantize_learned(x, axis)
        if spec.dynamic or not (self.training or self._initialized):
            lo, hi = self._estimate(x, axis)
        elif self.training:
            lo, hi = self._record(*self._estimate(x, axis))
        else:
            lo, hi = self.running_min, self.running_max
        if spec.learned:
            self._start_learned(*(self.combine(self, lo, hi) if self.combine is not None else (lo, hi)))
            return self._quantize_learned(x, axis)
        return self._quantize(x, lo, hi, axis) if spec.needs_range else self._quantize_unscaled(x)

    def _estimate(self, x: torch.Tensor, axis: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The range of ``x`` by the spec's estimator (weights in evaluation: computed once per weight version;
        clipped weights in training: see ``_clipped_weight_range``)."""
        spec = self.spec
        estimate = ESTIMATORS[spec.estimator].estimate
        if spec.estimator == "minmax":  # cheaper than the cache's bookkeeping
            return estimate(self._unpadded(x), axis, spec)
        if self.training and self.role == "weight":
            return self._clipped_weight_range(x, axis)
        key = (x.data_ptr(), x._version, spec) if not self.training and self.role == "weight" else None
        if key is not None and self._weight_cache is not None and self._weight_cache[0] == key:
            return self._weight_cache[1]
        r = estimate(self._unpadded(x), axis, spec)
        if key is not None:
            self._weight_cache = (key, r)
        return r

    @torch.no_grad()
    def _clipped_weight_range(self, x: torch.Tensor, axis: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """A training weight's clipping range (percentile, MSE): the estimator's range as a fraction of the
        weight's min-max, searched when the spec (its bits, as cyclic precision changes them) differs from the
        last search's or every ``CLIP_REFRESH`` training forwards, and in between that fraction of the current
        min-max. An MSE search on every forward made QAT more than 15x slower; a weight moves little in a few
        updates, its best clipping fraction less."""
        lo, hi = current_minmax(x, axis)
        cached = self._weight_cache
        if cached is None or cached[0] != ("train", self.spec) or cached[1] >= CLIP_REFRESH:
            elo, ehi = ESTIMATORS[self.spec.estimator].estimate(x, axis, self.spec)
            fractions = (_fraction(elo, lo), _fraction(ehi, hi))
            cached = (("train", self.spec), 0, fractions)
        self._weight_cache = (cached[0], cached[1] + 1, cached[2])
        flo, fhi = cached[2]
        return flo * lo, fhi * hi

    def _unpadded(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` without the padded positions of the batch, where ``token_mask`` is set and x is laid out
        (time, batch, ...) or (batch, time, ...); otherwise ``x``."""
        mask = self.token_mask
        if mask is None or x.dim() < 2 or self.role == "weight":
            return x
        if x.shape[:2] == mask.shape[::-1]:
            return x[mask.t()]
        if x.shape[:2] == mask.shape:
            return x[mask]
        return x

    def _forward_groups(self, x: torch.Tensor) -> torch.Tensor:
        """Per-embedding-group ranges over the last dimension (PEG)."""
        spec = self.spec
        if self.training:
            lo, hi, index = self._record_dims(*per_dim_minmax(self._unpadded(x)))
        elif not self._initialized:
            dlo, dhi = per_dim_minmax(self._unpadded(x))
            index = group_index(dhi - dlo, spec.groups, spec.permute)
            lo, hi = group_minmax(dlo, dhi, index, spec.groups)
        else:
            lo, hi, index = self.running_min, self.running_max, self.group_index
        if spec.mode == "measure":
            return x
        scale, zero_point, qmin, qmax = int_qparams(lo, hi, spec.bits, spec.signed, spec.symmetric)
        scale = expand_groups(scale, index)
        zero_point = None if zero_point is None else expand_groups(zero_point, index)
        return fake_quant_int(x, scale, zero_point, qmin, qmax, axis=-1, rounding=self._rounding)

    def _quantize(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, axis: int | None) -> torch.Tensor:
        spec = self.spec
        if spec.is_int:
            scale, zero_point, qmin, qmax = int_qparams(lo, hi, spec.bits, spec.signed, spec.symmetric)
            return fake_quant_int(x, scale, zero_point, qmin, qmax, axis, rounding=self._rounding)
        fmt = get_format(spec.format)
        amax = torch.maximum(-torch.nan_to_num(lo.float(), nan=0.0), torch.nan_to_num(hi.float(), nan=0.0))
        shape = (-1,) + (1,) * (x.dim() - 1) if axis is not None else ()
        scale = _amax_scale(amax, fmt).reshape(shape)  # float32: a 16-bit scale can underflow to 0 (0 / 0 = NaN)
        xf = x.float()
        return (quantize_ste(fmt, (xf / scale).clamp(fmt.min, fmt.max), self._rounding) * scale).to(x.dtype)

    def _quantize_unscaled(self, x: torch.Tensor) -> torch.Tensor:
        fmt = get_format(self.spec.format)
        return quantize_ste(fmt, x.clamp(fmt.min, fmt.max), self._rounding)

    @torch.no_grad()
    def _start_learned(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Initialise the learned scale (and zero point) from the estimated range ``lo``..``hi``."""
        spec = self.spec
        scale0, zp0, _, _ = int_qparams(lo, hi, spec.bits, spec.signed, spec.symmetric)
        self.lsq_scale.copy_(scale0.expand_as(self.lsq_scale))
        if zp0 is not None:
            self.lsq_zero_point.copy_(zp0.expand_as(self.lsq_zero_point))
        self.lsq_grid.copy_(torch.tensor(int_grid(spec.bits, spec.signed, spec.symmetric), dtype=torch.float32))
        self.lsq_ready.fill_(True)
        self._lsq_started = True

    def _learned_qparams(self, qmin: int, qmax: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The learned scale and zero point on the grid ``qmin..qmax``. Learned on another grid (``lsq_grid``: the
        bits changed, as in cyclic precision), they keep the clipping range they learned: the scale grows by the
        ratio of the grids' steps and the zero point moves with it (no device sync: tensor arithmetic)."""
        scale = self.lsq_scale.clamp(min=MIN_SCALE)
        ref_min, ref_max = self.lsq_grid[0], self.lsq_grid[1]
        known = ref_max > ref_min
        factor = torch.where(known, (ref_max - ref_min) / (qmax - qmin), torch.ones_like(ref_max))
        if self.spec.symmetric:
            return scale * factor, None
        # the clipping range starts at (ref_min - zp) * scale; on the new grid at (qmin - zp') * scale * factor
        zero_point = torch.where(known, qmin - (ref_min - self.lsq_zero_point) / factor, self.lsq_zero_point)
        return scale * factor, zero_point

    def _quantize_learned(self, x: torch.Tensor, axis: int | None):
        """LSQ (Esser et al., 2020; LSQ+ zero point for asymmetric grids): torch's learnable fake quantization
        with the learned scale (``_start_learned`` set it first)."""
        spec = self.spec
        qmin, qmax = int_grid(spec.bits, spec.signed, spec.symmetric)
        scale, zero_point = self._learned_qparams(qmin, qmax)
        zero_point = torch.zeros_like(scale) if zero_point is None else zero_point
        xf = x.float()
        grad_factor = 1.0 / (max(xf.numel() // scale.numel(), 1) * qmax) ** 0.5  # LSQ's gradient scale
        if self._rounding == "stochastic":
            return _lsq_stochastic(xf, scale, zero_point, spec, grad_factor, axis).to(x.dtype)
        if axis is None:
            y = torch._fake_quantize_learnable_per_tensor_affine(xf, scale, zero_point, qmin, qmax, grad_factor)
        else:
            y = torch._fake_quantize_learnable_per_channel_affine(xf, scale, zero_point, axis, qmin, qmax,
                                                                  grad_factor)
        return y.to(x.dtype)

    @torch.no_grad()
    def eval_qparams(self, x: torch.Tensor | None = None) -> QParams:
        """What this point does to a tensor in evaluation mode, for a backend that executes it (ONNX Q/DQ,
        INT8/FP8 kernels): the grid and its scale and zero point, exactly those the fake quantization uses.

        ``x``: the tensor, needed where the range comes from it (weights: their own min-max, percentile or MSE
        range). Activations with recorded (running, calibrated) or learned ranges need none. Raises ValueError,
        saying why, for a point that does not quantize."""
        spec = self.spec
        if spec.mode != "quantize":
            raise ValueError(f"it does not quantize (mode {spec.mode})")
        fmt = None if spec.is_int else get_format(spec.format)
        qmin, qmax = int_grid(spec.bits, spec.signed, spec.symmetric) if fmt is None else (fmt.min, fmt.max)
        name = "int" if fmt is None else fmt.name
        if spec.groups:
            if not self._initialized:
                return QParams(name, None, None, qmin, qmax, -1, "uncalibrated")
            scale, zp, _, _ = int_qparams(self.running_min, self.running_max, spec.bits, spec.signed, spec.symmetric)
            return QParams(name, expand_groups(scale, self.group_index),
                           None if zp is None else expand_groups(zp, self.group_index), qmin, qmax, -1, "static")
        axis = 0 if spec.per_channel else None
        if spec.learned and self._lsq_started:
            # torch's learnable fake quantization rounds the zero point to the nearest integer in the grid
            scale, zp = self._learned_qparams(qmin, qmax)
            zp = None if zp is None else zp.detach().round().clamp(qmin, qmax).float()
            return QParams(name, scale.detach().float(), zp, qmin, qmax, axis, "static")
        if not spec.needs_range:
            return QParams(name, torch.ones(1, device=self.running_min.device), None, qmin, qmax, None, "static")
        if not spec.dynamic and self._initialized:
            lo, hi = self.running_min, self.running_max
        elif self.role == "weight" and x is not None:
            lo, hi = self._estimate(x, axis)
        else:
            return QParams(name, None, None, qmin, qmax, axis, "dynamic" if spec.dynamic else "uncalibrated")
        if fmt is None:
            scale, zp, _, _ = int_qparams(lo, hi, spec.bits, spec.signed, spec.symmetric)
            return QParams(name, scale, zp, qmin, qmax, axis, "static")
        amax = torch.maximum(-torch.nan_to_num(lo.float(), nan=0.0), torch.nan_to_num(hi.float(), nan=0.0))
        return QParams(name, _amax_scale(amax, fmt).reshape(-1), None, qmin, qmax, axis, "static")

    @property
    def _rounding(self) -> str:
        # stochastic rounding is a training technique: evaluation rounds to nearest, so it is deterministic
        return self.spec.rounding if self.training else "nearest"

    # -- recording ----------------------------------------------------------------------------------------------
    @property
    def across(self) -> str:
        """How this point's batch statistics combine over data-parallel workers (``combine_ranges``): per-dimension
        ranges (embedding groups) are min-max; otherwise the estimator's rule."""
        return "extremes" if self.spec.groups else ESTIMATORS[self.spec.estimator].across

    @torch.no_grad()
    def commit(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Apply deferred batch statistics (``pending``, combined over the workers) to the running ranges."""
        self.pending = None
        if self.spec.groups:
            self._record_dims(lo, hi, defer=False)
        else:
            self._record(lo, hi, defer=False)

    @torch.no_grad()
    def _record(self, lo: torch.Tensor, hi: torch.Tensor, defer: bool | None = None) -> tuple[torch.Tensor, ...]:
        """Update the running range with a batch's; returns the range this forward uses. Deferred: the update
        is computed for this forward only, and the batch's range kept in ``pending``."""
        m = self.spec.momentum
        new_min = running_average(self.running_min, lo.reshape(-1), m, self._initialized)
        new_max = running_average(self.running_max, hi.reshape(-1), m, self._initialized)
        if self.defer if defer is None else defer:
            self.pending = (lo.reshape(-1).float(), hi.reshape(-1).float())
            return new_min, new_max
        self.running_min.copy_(new_min)
        self.running_max.copy_(new_max)
        self.num_batches_tracked += 1
        self._initialized = True
        return self.running_min, self.running_max

    @torch.no_grad()
    def _record_dims(self, lo: torch.Tensor, hi: torch.Tensor, defer: bool | None = None) -> tuple[torch.Tensor, ...]:
        """Running per-dimension ranges; the groups (and, with ``permute``, which dimensions share one) follow
        from them. Returns the group ranges and group index this forward uses (deferred: as ``_record``)."""
        spec = self.spec
        if self.dim_min.numel() != lo.numel():
            self.dim_min, self.dim_max = torch.zeros_like(lo), torch.zeros_like(hi)
            self._initialized = False
        m = spec.momentum
        dim_min = running_average(self.dim_min, lo, m, self._initialized)
        dim_max = running_average(self.dim_max, hi, m, self._initialized)
        index = group_index(dim_max - dim_min, spec.groups, spec.permute)
        glo, ghi = group_minmax(dim_min, dim_max, index, spec.groups)
        if self.defer if defer is None else defer:
            self.pending = (lo.float(), hi.float())
            return glo, ghi, index
        self.dim_min, self.dim_max, self.group_index = dim_min, dim_max, index
        self.running_min.copy_(glo)
        self.running_max.copy_(ghi)
        self.num_batches_tracked += 1
        self._initialized = True
        return self.running_min, self.running_max, self.group_index

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint without quantizer state (e.g. fairseq's own roberta.base) leaves this quantizer
        # initialised, as does one whose ranges have another shape (per-tensor saved, per-channel asked for).
        # Per-dimension state is sized by the data, so it takes the checkpoint's shape; state of another
        # granularity (embedding groups, learned ranges) that this spec does not use is left out.
        for name in _OPTIONAL_STATE:
            if prefix + name in state_dict and name not in self._buffers and name not in self._parameters:
                logger.warning(f"{prefix + name}: in the checkpoint, but this quantizer's spec does not use it: "
                               f"left out")
                del state_dict[prefix + name]
        reset = False
        for name, tensor in list(self._buffers.items()) + list(self._parameters.items()):
            key = prefix + name
            if key not in state_dict:
                logger.debug(f"{key}: not in the checkpoint, initialised")
                state_dict[key] = tensor
            elif name in ("dim_min", "dim_max", "group_index"):
                setattr(self, name, torch.empty_like(state_dict[key], device=tensor.device))
            elif state_dict[key].shape != tensor.shape:
                logger.warning(f"{key}: shape {tuple(state_dict[key].shape)} in the checkpoint, "
                               f"{tuple(tensor.shape)} here (granularity changed): initialised")
                state_dict[key] = tensor
                reset = True
        if reset:  # the ranges kept are empty: the point must not count as recorded (it would quantize with zeros)
            state_dict[prefix + "num_batches_tracked"] = torch.zeros_like(self.num_batches_tracked)
            for name in ("dim_min", "dim_max", "group_index"):
                if name in self._buffers:
                    state_dict[prefix + name] = self._buffers[name][:0]
                    setattr(self, name, self._buffers[name][:0])
            if "lsq_ready" in self._buffers:
                state_dict[prefix + "lsq_ready"] = torch.zeros_like(self.lsq_ready)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initialized = bool(self.num_batches_tracked > 0)
        self._lsq_started = bool(self.lsq_ready) if "lsq_ready" in self._buffers else False
        self._weight_cache = None

    def _apply(self, fn, recurse=True):
        # Casting the model to fp16/bf16 must not cast the ranges, nor the learned scales and zero points (torch's
        # learnable fake quantization takes float32 only): keep them float32, follow the device.
        super()._apply(fn, recurse)
        for name in ("running_min", "running_max", "dim_min", "dim_max", "lsq_grid"):
            buf = getattr(self, name, None)
            if buf is not None and buf.dtype != torch.float32:
                setattr(self, name, buf.float())
        for name in ("lsq_scale", "lsq_zero_point"):
            param = getattr(self, name, None)
            if param is not None and param.dtype != torch.float32:
                param.data = param.data.float()
        return self

    def extra_repr(self) -> str:
        s = self.spec
        if s.mode == "off":
            return "off"
        grid = s.grid_name + ("" if s.rounding == "nearest" else ", stochastic")
        if s.grad_format:
            grid += f", gradients {s.grad_format}"
        kind = "symmetric" if s.symmetric else "asymmetric"
        gran = (f"{s.groups} embedding groups{' (permuted)' if s.permute else ''}" if s.groups
                else "per-channel" if s.per_channel else "per-tensor")
        ranges = "current" if s.dynamic else f"running(momentum={s.momentum})"
        est = "" if s.estimator == "minmax" else f", estimator={s.estimator}"
        return f"{s.mode}, {grid}, {kind}, {gran}, ranges={ranges}{est}{', learned' if s.learned else ''}"


def _lsq_stochastic(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec,
                    grad_factor: float, axis: int | None) -> torch.Tensor:
    """LSQ with stochastic rounding (torch's learnable fake quantization rounds to nearest only), by autograd:
    ``(clamp(sround(x / s + z), qmin, qmax) - z) * s`` on ``spec``'s grid, with straight-through rounding
    (``formats.round_int``), which gives LSQ's gradients for ``x``, ``s`` and ``z``, and LSQ's gradient scale on
    ``s`` and ``z``."""
    qmin, qmax = int_grid(spec.bits, spec.signed, spec.symmetric)
    shape = () if axis is None else (-1,) + (1,) * (x.dim() - 1 - axis)

    def scaled_grad(t: torch.Tensor) -> torch.Tensor:
        return (t * grad_factor + (t - t * grad_factor).detach()).reshape(shape)

    s, z = scaled_grad(scale), scaled_grad(zero_point)
    z = z + (z.round().clamp(qmin, qmax) - z).detach()
    v = x / s + z
    q = v + (round_int(v.detach(), spec.bits, spec.signed, spec.symmetric, "stochastic") - v).detach()
    return (q.clamp(qmin, qmax) - z) * s  # the clamp: no gradient to x outside the grid


def _fraction(end: torch.Tensor, extreme: torch.Tensor) -> torch.Tensor:
    """``end / extreme`` where the min-max end ``extreme`` is non-zero and finite, else 1 (no clipping)."""
    ok = torch.isfinite(extreme) & (extreme != 0) & torch.isfinite(end)
    return torch.where(ok, end / torch.where(ok, extreme, 1.0), 1.0)


def _amax_scale(amax: torch.Tensor, fmt) -> torch.Tensor:
    """The scale that maps ``amax`` onto the format's largest value (positive, so dividing by it stays finite)."""
    return (amax / fmt.max).clamp(min=MIN_SCALE)


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
        g = grad.float()  # scaled in float32: small 16-bit gradients would flush to zero, a zero scale give NaN
        amax = torch.nan_to_num(g.detach().abs().amax(), nan=0.0, posinf=0.0)
        scale = _amax_scale(amax, fmt)
        return (fmt.quantize((g / scale).clamp(fmt.min, fmt.max), ctx.rounding) * scale).to(grad.dtype), None, None

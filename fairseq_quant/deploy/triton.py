"""Deployment: a model fake-quantized with W8A8 integer (or FP8 E4M3) grids -> the same numbers in real INT8/FP8.

``deploy(model)`` replaces every ``QuantizedLinear`` whose weight and input are both quantized onto a grid the
kernels hold by a ``DeployedLinear``: the weight stored as int8 (or float8_e4m3fn) with its calibrated scales,
the input rounded with the input quantizer's calibrated scale (row-wise from each row's absmax where the
quantizer uses dynamic ranges) and the product computed by ``ops.scaled_mm``, with the bias (and, for a
feed-forward fc1 followed by a plain GELU, the GELU) fused in the epilogue. Integer grids round exactly as the
fake quantizers do, so a deployed INT8 model differs from its fake-quantized twin only in float32 rounding
of the dequantised sums. Layers that cannot be deployed (an operand not quantized, an asymmetric grid,
per-embedding-group ranges, integer weights with FP8 inputs) keep their fake quantization, and the report says
why.
"""
from __future__ import annotations

import logging

import torch
from fairseq.modules.gelu import gelu as fairseq_gelu
from torch import nn

from ..core.formats import int_values
from ..kernels.ops import quantize_rows, scaled_mm, uses_triton
from ..plugin.layers import (
    QuantizedActivation,
    QuantizedLinear,
    QuantizedMultiheadAttention,
    gemm_input_quantizer,
    through,
)

__all__ = ["DeployError", "DeployedLinear", "deploy"]

logger = logging.getLogger(__name__)


class DeployError(ValueError):
    """The model has nothing the kernels can run; the message says what deployment needs."""


class DeployedLinear(nn.Module):
    """A linear layer executed in INT8 or FP8: ``y = scaled_mm(quantize(x), W_q) + bias`` (then GELU with
    ``gelu``), then the original output quantizer, if any."""

    def __init__(self, fmt: str, weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                 input_scale: torch.Tensor | None, input_grid: tuple[float, float, float | None],
                 output_quant: nn.Module | None):
        super().__init__()
        self.fmt = fmt
        self.out_features, self.in_features = weight_q.shape
        self.register_buffer("weight_q", weight_q)
        self.register_buffer("weight_scale", weight_scale.float().reshape(-1))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.register_buffer("input_scale", None if input_scale is None else input_scale.float().reshape(1))
        self.input_qmin, self.input_qmax, self.input_zero_point = input_grid
        # with a zero point, the int32 sums lose zero_point * (row sums of the weight): precomputed here, and the
        # zero point kept on the device
        zp = self.input_zero_point
        self.register_buffer("input_zero_point_i32", None if zp is None
                             else torch.tensor([int(zp)], dtype=torch.int32, device=weight_q.device))
        self.register_buffer("weight_sum", None if zp is None else weight_q.to(torch.int32).sum(1, dtype=torch.int32))
        self.output_quant = output_quant
        self.gelu = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        zp = self.input_zero_point
        q, s = quantize_rows(x.reshape(-1, shape[-1]), self.fmt, self.input_scale, self.input_qmax,
                             zero_point=zp or 0.0, qmin=self.input_qmin)
        y = scaled_mm(q, s, self.weight_q, self.weight_scale, self.bias, self.gelu, out_dtype=x.dtype,
                      a_zero_point=self.input_zero_point_i32, b_sum=self.weight_sum)
        return through(self.output_quant, y.reshape(*shape[:-1], self.out_features))

    def extra_repr(self) -> str:
        scale = "dynamic row-wise" if self.input_scale is None else "static"
        return (f"{self.fmt}, in_features={self.in_features}, out_features={self.out_features}, "
                f"input scale {scale}{', GELU fused' if self.gelu else ''}")


def kernel_grid(q, x: torch.Tensor | None = None) -> tuple[str, torch.Tensor | None, torch.Tensor | None, float,
                                                           float]:
    """The grid the quantizer ``q`` rounds ``x`` onto in evaluation mode, as the kernels take it: ``(kind, scale,
    zero_point, qmin, qmax)``. Kind ``int8``: an integer grid of at most 8 bits, values ``clamp(round(x / scale) +
    zero_point, qmin, qmax)`` (``zero_point`` None on symmetric grids); kind ``fp8``: E4M3, ``x / scale`` rounded to
    the format (``qmax`` 448). ``scale`` has one element per channel or one in all, or is ``None`` when the point
    takes its range from each tensor (dynamic ranges of activations). Raises ValueError for grids no such kernel
    holds, saying why."""
    p = q.eval_qparams(x)
    if p.axis == -1:
        raise ValueError("it has per-embedding-group ranges, which an integer GEMM cannot factor out")
    if p.format == "int":
        if q.spec.bits > 8:
            raise ValueError(f"its grid is {q.spec.grid_name}; the kernels take integer grids of at most 8 bits")
        kind = "int8"
    elif p.format == "fp8_e4m3":
        kind = "fp8"
    else:
        raise ValueError(f"its format is {p.format}; the kernels take integer grids and fp8_e4m3")
    if p.scale is None and p.source == "uncalibrated":
        raise ValueError("it has recorded no ranges: calibrate it first (evaluate.py --calib-batches N)")
    if p.scale is None and kind == "int8" and not q.spec.symmetric:
        raise ValueError("it has dynamic asymmetric ranges; dynamic ranges run on symmetric grids")
    return kind, p.scale, p.zero_point, p.qmin, p.qmax


def _quantize_weight(w: torch.Tensor, kind: str, scale: torch.Tensor, qmax: float) -> torch.Tensor:
    """The weight on the weight quantizer's own grid (as ``fake_quant_int`` / the float path round it)."""
    scale = scale.to(w.device)
    if kind == "int8":
        return int_values(w, scale, None, -qmax, qmax, axis=0 if scale.numel() > 1 else None).to(torch.int8)
    return (w.detach().float() / scale.reshape(-1, 1)).clamp(-qmax, qmax).to(torch.float8_e4m3fn)


def _deploy_linear(linear: QuantizedLinear, input_quant) -> DeployedLinear | str:
    """A DeployedLinear for ``linear``, or the reason it cannot be deployed."""
    wq = linear.weight_quant
    if wq is None or not wq.active:
        return "its weight is not quantized"
    if input_quant is None or not input_quant.active:
        return "its input is not quantized"
    try:
        w_kind, w_scale, w_zp, w_qmin, w_qmax = kernel_grid(wq, linear.weight)
        if w_zp is not None or w_qmin != -w_qmax:
            raise ValueError("it is asymmetric; the kernels take symmetric signed weight grids")
    except ValueError as e:
        return f"weight: {e}"
    try:
        kind, scale, zp, qmin, qmax = kernel_grid(input_quant)
    except ValueError as e:
        return f"input: {e}"
    if w_kind != kind:
        return f"its weight is {w_kind} but its input {kind}: the kernels multiply two operands of one kind"
    weight_q = _quantize_weight(linear.weight, w_kind, w_scale, w_qmax)
    shift = 128.0 if kind == "int8" and qmax > 127 else 0.0  # an unsigned 8-bit grid, stored as q - 128 in int8
    if shift or zp is not None:
        zp = (0.0 if zp is None else float(zp.reshape(-1)[0])) - shift
    return DeployedLinear(kind, weight_q, w_scale.to(linear.weight.device), linear.bias, scale,
                          (qmin - shift, qmax - shift, zp), linear.output_quant)


def _fuse_gelu(model: nn.Module) -> int:
    """Fuse ``activation_fn`` into a deployed ``fc1`` where it is fairseq's GELU, quantizes nothing, and fc1's
    output is not quantized (so ``activation_fn(fc1(x))`` is exactly ``fc1`` with a GELU epilogue). Returns how
    many were fused."""
    fused = 0
    for module in model.modules():
        fc1, act = getattr(module, "fc1", None), getattr(module, "activation_fn", None)
        if not isinstance(fc1, DeployedLinear) or act is None:
            continue
        if fc1.output_quant is not None and fc1.output_quant.active:
            continue  # fc1's output is quantized before the GELU: the epilogue would apply GELU first
        fn = act
        if isinstance(act, QuantizedActivation):
            if any(q is not None and q.active for q in (act.input_quant, act.output_quant)):
                continue
            fn = act.fn
        if fn is fairseq_gelu or fn is torch.nn.functional.gelu:
            fc1.gelu = True
            if "activation_fn" in module.__dict__:
                del module.__dict__["activation_fn"]
            module.activation_fn = nn.Identity()
            fused += 1
    return fused


@torch.no_grad()
def deploy(model: nn.Module, fuse_gelu: bool = True, cpu_reference: bool = False) -> dict[str, str]:
    """Turn ``model`` (in place, put in evaluation mode) into one whose quantized linear layers run in real INT8
    or FP8 with the calibrated scales (see the module docstring). Call it after calibration (or on a model whose
    checkpoint carries its ranges).

    The kernels are Triton's (a GPU, or its interpreter with ``TRITON_INTERPRET=1``). On a CPU the only other
    INT8 path is ``torch._int_mm``, 25-40x slower than an FP32 matmul there: so a CPU model is left in fake
    quantization, with a warning that names the CPU's fast path (ONNX Runtime: ``fairseq-quant-export``,
    ``evaluate.py --backend onnxruntime``), unless ``cpu_reference`` asks for that PyTorch reference path (tests,
    benchmarks). Returns ``{layer name: "int8" | "fp8" | "kept: <reason>"}``; raises
    DeployError when no layer can be deployed."""
    model.eval()
    probe = next(model.parameters(), None)
    if probe is not None and not uses_triton(probe) and not cpu_reference:
        logger.warning("deploy: no GPU (nor TRITON_INTERPRET=1): the CPU's INT8 fallback, torch._int_mm, is 25-40x "
                       "slower than FP32, so the model keeps its fake quantization; for real INT8 speed on a CPU "
                       "export it to ONNX Runtime (fairseq-quant-export, or evaluate.py --backend onnxruntime)")
        return {n: "kept: no GPU for the kernels (use ONNX Runtime on a CPU)" for n, m in model.named_modules()
                if isinstance(m, QuantizedLinear)}
    parents = {f"{pname}.{cname}" if pname else cname: (parent, cname)
               for pname, parent in model.named_modules() for cname, _ in parent.named_children()}
    report, deployed = {}, 0
    for name, linear in [(n, m) for n, m in model.named_modules() if isinstance(m, QuantizedLinear)]:
        result = _deploy_linear(linear, gemm_input_quantizer(*parents[name], linear))
        if isinstance(result, str):
            report[name] = f"kept: {result}"
            continue
        parent, child = parents[name]
        setattr(parent, child, result)
        report[name] = result.fmt
        deployed += 1
    if not deployed:
        reasons = sorted({r for r in report.values()})
        raise DeployError("nothing to deploy: the kernels run linear layers whose weights and inputs are both "
                          "quantized onto symmetric int8 grids (--quantw --quantin, at most 8 bits) or fp8_e4m3 "
                          f"(--formatw/--formatin fp8_e4m3); this model's layers: {'; '.join(reasons) or 'none'}")
    for module in model.modules():
        if isinstance(module, QuantizedMultiheadAttention):
            module.module_path = True  # fused attention would read the (now absent) float projection weights
            projections = (module.q_proj, module.k_proj, module.v_proj)
            if not module.encoder_decoder_attention and all(isinstance(p, DeployedLinear) for p in projections):
                # its input feeds only these three, which round it onto the same grid themselves
                module.input_quant = None
    fused = _fuse_gelu(model) if fuse_gelu else 0
    kept = [n for n, r in report.items() if r.startswith("kept")]
    logger.info(f"deployed {deployed} linear layers ({fused} with GELU fused); {len(kept)} kept in fake "
                f"quantization" + (f": {', '.join(f'{n} ({report[n][6:]})' for n in kept)}" if kept else ""))
    return report

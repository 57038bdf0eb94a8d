"""One quantization point as ONNX ``QuantizeLinear``/``DequantizeLinear``, with the scale and zero point of the
fake-quantized model.

``OnnxPoint`` stands in for an active ``QuantMeasure`` while a model is exported with torch's TorchScript-based
exporter: in PyTorch it *is* that QuantMeasure (its forward calls it, in evaluation mode), and in the ONNX graph it
is a Q/DQ pair (activations) or an integer constant and a DequantizeLinear (weights). How each grid is written:

- integer grids of 2-8 bits in 8-bit containers, 9-16 bits in 16-bit ones (opset 21): every 8-bit grid as uint8,
  signed ones (symmetric or not) shifted by 128 (``-128 .. 127`` with zero point ``z`` is ``0 .. 255`` with
  ``z + 128``), so that ONNX Runtime multiplies uint8 by uint8. Its x86 uint8 x int8 kernels on AVX2 CPUs without
  VNNI add pairs of products in 16 bits, saturating (``vpmaddubsw``): with int8 weights the logits of the test
  model came out 3e-3 off on an AMD EPYC, exact with uint8 ones;
- a grid narrower than its container (4 bits, or the symmetric ``-127 .. 127``) is first clipped, in floating
  point, to the values that round onto the grid's ends, so QuantizeLinear's own saturation never decides;
- weights: the integers the fake quantization rounds them to, stored as such (a quarter of the float size),
  dequantized per output channel (``axis`` 0) or per tensor;
- per-embedding-group ranges (PEG): per-axis Q/DQ over the embedding dimension, each dimension with its group's
  scale and zero point;
- FP8 (``fp8_e4m3``, ``fp8_e5m2``): float8 zero points (opset 19), saturating.

In PyTorch an ``OnnxPoint`` rounds with its ``QParams`` (``fake_quantize``), which equals the QuantMeasure's own
evaluation bit for bit. ONNX's QuantizeLinear divides integer grids' inputs by the scale, the fake quantization
multiplies them by its reciprocal: the two differ in the last bit of a few quotients, which moves a value across a
rounding boundary about once in 10^5-10^6 values (FP8 divides in both). Everything else (posits, other
minifloats, ranges taken from each batch, uncalibrated ranges) has no exact Q/DQ form and is refused
(``ExportError`` naming the point).
"""
from __future__ import annotations

import torch
from torch import nn

from ..core.formats import fake_quant_int, int_values
from ..core.quant_measure import QParams, QuantMeasure

__all__ = ["ExportError", "OnnxPoint", "onnx_point", "FLOAT8"]

FLOAT8 = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
# integer containers: (dtype, lowest, highest)
_CONTAINERS_16 = ((torch.uint16, 0, 65535), (torch.int16, -32768, 32767))  # unsigned, signed


class ExportError(ValueError):
    """A model, point or file the exporter cannot write; the message names the point or flag and what is
    allowed."""


def _container(p: QParams) -> tuple[torch.dtype, float, int, int]:
    """``(dtype, shift, lowest, highest)``: the ONNX integer type that holds the grid ``qmin + shift .. qmax +
    shift``. 8 bits: uint8, signed grids shifted by 128 (ONNX Runtime's uint8 x int8 kernels saturate on AVX2
    without VNNI; uint8 x uint8 was exact on the AMD EPYC where they did); 16 bits: uint16 or int16, unshifted."""
    if p.qmax - p.qmin > 255:
        dtype, lo, hi = _CONTAINERS_16[0 if p.qmin >= 0 else 1]
        return dtype, 0.0, lo, hi
    return torch.uint8, (128.0 if p.qmin < 0 else 0.0), 0, 255


class _Ref:
    """A plain reference to a module (no module state for the tracer to follow)."""

    def __init__(self, point):
        self.point = point


class OnnxPoint(nn.Module):
    """An active quantization point, ready for export: ``forward`` rounds onto its ``QParams`` as the QuantMeasure
    does in evaluation mode; the ONNX graph gets Q/DQ nodes with them (see the module docstring). Build it with
    ``onnx_point``."""

    def __init__(self, name: str, quantizer: QuantMeasure, qparams: QParams, weight: torch.Tensor | None):
        super().__init__()
        self.name, self.qparams = name, qparams
        # not a submodule: the tracer must not see its buffers (module state used inside a custom Function's
        # forward fails to trace)
        self._ref = _Ref(quantizer)
        self.bits16 = qparams.format == "int" and qparams.qmax - qparams.qmin > 255
        self._weight_values = None if weight is None else self._stored(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _QDQ.apply(x, _Ref(self))

    @property
    def quantizer(self) -> QuantMeasure:
        """The QuantMeasure it stands in for."""
        return self._ref.point

    @property
    def onnx_type(self) -> str:
        """The ONNX type it is stored in (``uint8``, ``uint16``, ``int16``, ``fp8_e4m3``, ``fp8_e5m2``),
        with the grid's width where it is narrower (``uint8 (4-bit grid)``)."""
        p = self.qparams
        if p.format != "int":
            return p.format
        dtype = str(_container(p)[0]).removeprefix("torch.")
        width = 16 if self.bits16 else 8
        return dtype if p.bits == width else f"{dtype} ({p.bits}-bit grid)"

    @torch.no_grad()
    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` rounded onto the grid of ``qparams`` in PyTorch: what the QuantMeasure computes in evaluation mode
        (a test checks they agree bit for bit), and what the ONNX nodes compute."""
        p = self.qparams
        # copies: the tracer fails ("unordered_map::at") on one tensor used inside two custom Functions' forwards
        scale = p.scale.to(x.device, copy=True)
        zero_point = None if p.zero_point is None else p.zero_point.to(x.device, copy=True)
        if p.format == "int":
            return fake_quant_int(x, scale, zero_point, int(p.qmin), int(p.qmax), p.axis)
        scale = self._broadcast(scale, x)
        # float8 by torch's own cast (round to nearest even, in range after the clamp): the same values as
        # formats' rounding, in ops the tracer can follow
        return (x / scale).clamp(p.qmin, p.qmax).to(FLOAT8[p.format]).to(x.dtype) * scale

    def _stored(self, w: torch.Tensor) -> torch.Tensor:
        """The weight as the graph stores it: the container integers, or the float8 values."""
        p = self.qparams
        if p.format in FLOAT8:
            return self.fake_quantize(w).div(self._broadcast(p.scale, w)).to(FLOAT8[p.format])
        dtype, shift, _, _ = _container(p)
        return (int_values(w, p.scale, p.zero_point, p.qmin, p.qmax, p.axis) + shift).to(dtype)

    def _broadcast(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """A per-channel (axis 0) or per-tensor ``t`` shaped to broadcast against ``x``."""
        return t.reshape([-1] + [1] * (x.dim() - 1) if self.qparams.axis == 0 else []).to(x.device, x.dtype)

    def constants(self) -> dict:
        """The scale, zero point (container dtype) and clipping bounds of the graph, as tensors."""
        p = self.qparams
        per_axis = p.axis is not None
        scale = p.scale.detach().float().reshape(-1)
        scale = scale if per_axis else scale.reshape(())
        if p.format in FLOAT8:
            zp = torch.zeros(scale.shape, dtype=FLOAT8[p.format])
            return {"scale": scale, "zero_point": zp, "low": None, "high": None}
        dtype, shift, lo, hi = _container(p)
        z = torch.zeros(scale.shape) if p.zero_point is None else p.zero_point.detach().float().reshape(scale.shape)
        low = high = None
        # clip (in floating point, to the values that round onto the grid's ends) where the grid is narrower
        if p.qmin + shift > lo:
            low = (p.qmin - z) * scale
        if p.qmax + shift < hi:
            high = (p.qmax - z) * scale
        return {"scale": scale, "zero_point": (z + shift).to(dtype), "low": low, "high": high}


class _QDQ(torch.autograd.Function):
    """The quantizer in PyTorch; Q/DQ nodes in the exported graph."""

    @staticmethod
    def forward(ctx, x, ref: _Ref):
        return ref.point.fake_quantize(x)

    @staticmethod
    def symbolic(g, x, ref: _Ref):
        point = ref.point
        c = point.constants()
        axis = point.qparams.axis
        kw = {} if axis is None else {"axis_i": axis}
        scale = g.op("Constant", value_t=c["scale"])
        zero_point = _constant(g, c["zero_point"])
        q_op, dq_op = "QuantizeLinear", "DequantizeLinear"
        if c["zero_point"].dtype in WIDE:
            # TorchScript holds no uint16, and its type inference no 16-bit Q/DQ: int32 constants and nodes of our
            # own domain, which export_onnx turns into standard (opset 21) 16-bit Q/DQ (wide_qdq_to_standard)
            q_op, dq_op = f"{DOMAIN}::QuantizeLinear", f"{DOMAIN}::DequantizeLinear"
            kw["zero_point_type_i"] = WIDE[c["zero_point"].dtype]
        if point._weight_values is not None:  # a constant: its integers, dequantized
            stored = _constant(g, point._weight_values)
            return g.op(dq_op, stored, scale, zero_point, **kw)
        if axis is None and (c["low"] is not None or c["high"] is not None):
            x = g.op("Clip", x, _scalar(g, c["low"], -1), _scalar(g, c["high"], 1))
        elif axis is not None:  # per embedding dimension (the last axis): bounds broadcast over it
            for bound, op in ((c["low"], "Max"), (c["high"], "Min")):
                if bound is not None:
                    x = g.op(op, x, g.op("Constant", value_t=bound.float()))
        q = g.op(q_op, x, scale, zero_point, **kw)
        return g.op(dq_op, q, scale, zero_point, **kw)


DOMAIN = "fairseq_quant"
WIDE = {torch.uint16: 4, torch.int16: 5}  # 16-bit containers: onnx.TensorProto.UINT16, INT16


def _constant(g, t: torch.Tensor):
    return g.op("Constant", value_t=t.to(torch.int32) if t.dtype in WIDE else t)


def wide_qdq_to_standard(model) -> int:
    """Turn the 16-bit Q/DQ nodes of ``DOMAIN`` in the ONNX ``model`` (an onnx.ModelProto, changed in place) into
    standard QuantizeLinear/DequantizeLinear with uint16/int16 zero points (and stored weights), setting the model to
    opset 21. Returns how many nodes it changed."""
    from onnx import helper, numpy_helper

    producers = {o: n for n in model.graph.node for o in n.output}
    changed = 0
    for node in model.graph.node:
        if node.domain != DOMAIN:
            continue
        attrs = {a.name: a for a in node.attribute}
        dtype = helper.tensor_dtype_to_np_dtype(attrs["zero_point_type"].i)
        inputs = [2] + ([0] if node.op_type == "DequantizeLinear" and node.input[0] in producers
                        and producers[node.input[0]].op_type == "Constant" else [])
        for i in inputs:
            const = producers[node.input[i]]
            value = numpy_helper.to_array(const.attribute[0].t).astype(dtype)
            const.attribute[0].t.CopyFrom(numpy_helper.from_array(value))
        node.domain = ""
        kept = [a for a in node.attribute if a.name != "zero_point_type"]
        del node.attribute[:]
        node.attribute.extend(kept)
        changed += 1
    if changed:
        for opset in model.opset_import:
            if opset.domain in ("", "ai.onnx"):
                opset.version = max(opset.version, 21)
        kept = [o for o in model.opset_import if o.domain != DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(kept)
    return changed


def _scalar(g, bound: torch.Tensor | None, sign: int):
    """A float32 scalar constant: ``bound``, or +-inf where there is none."""
    value = torch.tensor(sign * float("inf")) if bound is None else bound.float().reshape(())
    return g.op("Constant", value_t=value)


def onnx_point(name: str, quantizer: QuantMeasure, weight: torch.Tensor | None = None) -> OnnxPoint:
    """The ``OnnxPoint`` of the active quantizer ``quantizer`` (at path ``name``; ``weight``: the tensor a weight
    point quantizes). Raises ExportError, naming the point and why, for a point ONNX Q/DQ cannot express exactly."""
    spec = quantizer.spec
    try:
        p = quantizer.eval_qparams(weight)
    except ValueError as e:
        raise ExportError(f"quantization point {name}: {e}") from None
    if p.format != "int" and p.format not in FLOAT8:
        raise ExportError(f"quantization point {name}: its format {p.format} has no ONNX QuantizeLinear type (ONNX "
                          f"holds integer grids of up to 16 bits and float8 {', '.join(FLOAT8)}); posits and other "
                          f"minifloats cannot be exported")
    if p.source == "dynamic":
        raise ExportError(f"quantization point {name}: its range comes from each batch ({spec.grid_name}, dynamic "
                          f"ranges: --dynamic-qparams or \"dynamic\": true); the export needs fixed scales: quantize "
                          f"with running ranges and calibrate them (--calib-batches N)")
    if p.source == "uncalibrated":
        raise ExportError(f"quantization point {name} has recorded no range: calibrate the model first "
                          f"(--calib-batches N), or export a checkpoint trained with these quantizers")
    if p.axis == -1 and p.format != "int":
        raise ExportError(f"quantization point {name}: per-embedding-group ranges are for integer grids")
    if weight is None and quantizer.role == "weight":
        raise ExportError(f"quantization point {name}: a weight point needs its weight")
    return OnnxPoint(name, quantizer, p, weight if quantizer.role == "weight" else None)

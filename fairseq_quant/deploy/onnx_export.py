"""``export_onnx``: a (calibrated) quant_roberta sentence-prediction model -> an ONNX file that ONNX Runtime runs in
integer arithmetic, with the scales and zero points of the fake-quantized model.

The graph takes ``src_tokens`` (int64, ``batch x length``, both dynamic; right-padded with the dictionary's pad
index, as fairseq batches them) and returns ``logits`` (``batch x classes``, or ``batch x 1`` for regression) of
the classification head. It is written by torch's TorchScript-based exporter (``dynamo=False``): the dynamo
exporter of recent torch fails on fake-quantization ops and decomposes Q/DQ into arithmetic (pytorch issue
#167063), while the TorchScript exporter takes each point's own ONNX form (``qdq.OnnxPoint``).
"""
from __future__ import annotations

import copy
import logging
import os
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.quant_measure import QuantMeasure
from ..core.recipe import QuantRecipe, describe
from ..plugin.int8_training import set_int8_training
from ..plugin.layers import QuantizedLinear, QuantizedMultiheadAttention, quantizers
from .qdq import DOMAIN, ExportError, OnnxPoint, onnx_point, wide_qdq_to_standard

__all__ = ["ExportReport", "export_onnx", "onnx_twin", "OPSET"]

logger = logging.getLogger(__name__)

OPSET = 20  # the TorchScript exporter's newest; 16-bit integer points convert the graph to opset 21
HEAD = "sentence_classification_head"


@dataclass
class ExportReport:
    """What an export wrote: the file, its opset, and how many quantization points of each grid it holds (e.g.
    ``{"uint8": 196}``)."""

    path: str
    opset: int
    points: Counter = field(default_factory=Counter)

    def describe(self) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.points.items())) or "none (floating point)"
        return f"{self.path}: opset {self.opset}, quantization points: {kinds}"


class _Classifier(nn.Module):
    """``src_tokens -> logits`` of one classification head."""

    def __init__(self, model: nn.Module, head: str):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, src_tokens: torch.Tensor) -> torch.Tensor:
        return self.model(src_tokens, features_only=True, classification_head_name=self.head)[0]


def onnx_twin(model: nn.Module, head: str = HEAD, fp32: bool = False) -> tuple[nn.Module, Counter]:
    """A copy of ``model`` (a quant_roberta with the classification head ``head``, in evaluation mode, its ranges
    calibrated) whose every active quantization point is an ``OnnxPoint``: ``(src_tokens -> logits module,
    points per ONNX type)``. In PyTorch it computes exactly what ``model`` computes. ``fp32``: every quantizer off
    (the floating-point model). Raises ExportError naming the first point that cannot be exported, or a model
    that is not a sentence-prediction classifier."""
    heads = getattr(model, "classification_heads", None)
    if heads is None or head not in heads:
        have = ", ".join(heads or []) or "none"
        raise ExportError(f"the model has no classification head {head!r} (its heads: {have}); the export needs a "
                          f"sentence-prediction model (fairseq-train --task sentence_prediction)")
    cpt = getattr(model, "cpt", None)
    if cpt is not None and model.training:
        raise ExportError("a cyclic-precision model exports at its evaluation precision: call model.eval() first")
    twin = copy.deepcopy(model).eval()
    if fp32:
        twin.set_quant_recipe(QuantRecipe.from_dict({"ops": []}))
    if any(m.linear_fn is not None for m in twin.modules() if isinstance(m, QuantizedLinear)):
        set_int8_training(twin, "off")
        logger.warning("export: the linear layers ran with --int8-training (dynamic INT8 matmuls, a training "
                       "technique); the exported graph uses their quantization points' grids instead")
    counts: Counter = Counter()
    for mname, module in list(twin.named_modules()):
        for cname, child in list(module.named_children()):
            if not isinstance(child, QuantMeasure) or child.spec.mode != "quantize":
                continue
            name = f"{mname}.{cname}" if mname else cname
            weight = module.weight if child.role == "weight" else None
            point = onnx_point(name, child, weight)
            setattr(module, cname, point)
            counts[point.onnx_type] += 1
    for module in twin.modules():
        if isinstance(module, QuantizedMultiheadAttention):
            module.module_path = True  # fairseq's fused path would skip the projections' quantizers
            shared = module.input_quant
            if isinstance(shared, OnnxPoint) and not module.encoder_decoder_attention:
                # ONNX Runtime fuses Q/DQ into an integer GEMM only where each DequantizeLinear has one consumer:
                # q, k and v projections each get their own (the same scale and zero point)
                for proj in (module.q_proj, module.k_proj, module.v_proj):
                    if isinstance(proj, QuantizedLinear) and proj.input_quant is None:
                        proj.input_quant = OnnxPoint(shared.name, shared.quantizer, copy.deepcopy(shared.qparams), None)
                        counts[shared.onnx_type] += 1
                module.input_quant = None
                counts[shared.onnx_type] -= 1
    leftover = [n for n, q in twin.named_modules() if isinstance(q, QuantMeasure) and q.spec.mode == "quantize"
                and not n.endswith(".quantizer")]
    if leftover:  # a quantizer no wrapper slot holds: nothing to replace it with
        raise ExportError(f"quantization point {leftover[0]} is not in a slot the exporter knows")
    return _Classifier(twin, head).eval(), +counts


def _sample_tokens(model: nn.Module) -> torch.Tensor:
    """Two sentences for tracing, the second padded: fairseq's encoder takes its padding branch only when a batch
    has padding, so the traced graph must hold it (batches without padding pass through it unchanged)."""
    encoder = model.encoder.sentence_encoder
    pad, vocab = encoder.padding_idx, encoder.embed_tokens.num_embeddings
    length = max(2, min(8, int(model.max_positions()) if model.max_positions() else 8))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(min(4, vocab - 1), vocab, (2, length), generator=g)
    tokens[tokens == pad] = min(4, vocab - 1)
    tokens[1, length // 2:] = pad
    return tokens.to(next(model.parameters()).device)


def export_onnx(model: nn.Module, path: str, head: str = HEAD, fp32: bool = False, force: bool = False
                ) -> ExportReport:
    """Write ``model`` (a calibrated quant_roberta sentence-prediction model; see ``onnx_twin``) to ``path`` as ONNX
    with Q/DQ nodes (module docstring), its metadata naming the quantization (``fairseq_quant.quant``: ``W8A8``...).
    The file is written under a temporary name beside ``path`` and moved into place when complete; an existing
    ``path`` is refused unless ``force``. Returns an ``ExportReport``."""
    import onnx

    if os.path.exists(path) and not force:
        raise ExportError(f"--out {path} exists; give --force to overwrite it")
    if os.path.isdir(path):
        raise ExportError(f"--out {path} is a directory; give a file name such as model.onnx")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ExportError(f"--out {path}: no such directory {directory}")
    classifier, counts = onnx_twin(model, head, fp32)
    sample = _sample_tokens(model)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's notes on fairseq's shape asserts
            torch.onnx.export(classifier, (sample,), tmp, dynamo=False, opset_version=OPSET,
                              input_names=["src_tokens"], output_names=["logits"],
                              custom_opsets={DOMAIN: 1} if any(k.startswith(("int16", "uint16")) for k in counts)
                              else None,
                              dynamic_axes={"src_tokens": {0: "batch", 1: "length"}, "logits": {0: "batch"}})
        proto = onnx.load(tmp)
        opset = OPSET
        if wide_qdq_to_standard(proto):  # 16-bit Q/DQ: opset 21
            opset = 21
        quant = "FP32" if fp32 else describe(model.quant_recipe) if hasattr(model, "quant_recipe") else "?"
        onnx.helper.set_model_props(proto, {"fairseq_quant.quant": quant, "fairseq_quant.head": head})
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    report = ExportReport(os.path.abspath(path), opset, counts)
    logger.info(f"exported {report.describe()}")
    return report


def active_points(model: nn.Module) -> int:
    """How many quantizers of ``model`` quantize."""
    return sum(1 for q in quantizers(model) if q.spec.mode == "quantize")

"""Executing a calibrated fake-quantized model for real: on a GPU with the Triton INT8/FP8 kernels (``triton``:
``deploy``), on a CPU as an ONNX model with its Q/DQ scales run by ONNX Runtime (``onnx_export``, ``qdq``,
``runtime``)."""
from .onnx_export import ExportReport, export_onnx, onnx_twin
from .qdq import ExportError, OnnxPoint
from .triton import DeployedLinear, DeployError, deploy

__all__ = ["DeployError", "DeployedLinear", "ExportError", "ExportReport", "OnnxPoint", "deploy", "export_onnx",
           "onnx_twin"]

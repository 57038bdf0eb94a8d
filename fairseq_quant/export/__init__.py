"""Deployment on CPUs: ONNX export of a (calibrated) quantized model with its Q/DQ scales (``export_onnx``), and
ONNX Runtime sessions that run it (``runtime``)."""
from .onnx_export import ExportReport, export_onnx, onnx_twin
from .qdq import ExportError, OnnxPoint

__all__ = ["ExportError", "ExportReport", "OnnxPoint", "export_onnx", "onnx_twin"]

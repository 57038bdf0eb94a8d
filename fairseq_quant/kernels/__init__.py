"""Real low-bit operations: Triton INT8/FP8 GEMMs with fused epilogues and row-wise activation quantization, with
PyTorch references (``ops``). Pure functions over tensors; the model-level backends that use them are
``plugin.int8_training`` (INT8 mixed-precision training) and ``deploy.triton`` (``deploy``)."""
from .ops import (
    FORMATS,
    quantize_rows,
    quantize_rows_reference,
    scaled_mm,
    scaled_mm_reference,
    triton_available,
    uses_triton,
)

__all__ = [
    "FORMATS",
    "quantize_rows",
    "quantize_rows_reference",
    "scaled_mm",
    "scaled_mm_reference",
    "triton_available",
    "uses_triton",
]

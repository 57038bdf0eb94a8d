"""Real low-bit execution: Triton INT8/FP8 GEMMs with fused epilogues, row-wise activation quantization,
deployment of fake-quantized models onto them (``deploy``), and INT8 mixed-precision training."""
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

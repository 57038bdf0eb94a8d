"""Real low-bit execution: Triton INT8/FP8 GEMMs with fused epilogues and row-wise activation quantization
(``ops``), deployment of fake-quantized models onto them (``deployment.deploy``), and INT8 mixed-precision training
(``int8_training``)."""
from .int8_training import INT8_TRAINING_MODES, int8_linear, set_int8_training
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
    "INT8_TRAINING_MODES",
    "DeployError",
    "DeployedLinear",
    "deploy",
    "int8_linear",
    "quantize_rows",
    "quantize_rows_reference",
    "scaled_mm",
    "scaled_mm_reference",
    "set_int8_training",
    "triton_available",
    "uses_triton",
]


def __getattr__(name):
    # deploy needs the layers, which themselves use int8_linear: imported on first use
    if name in ("DeployError", "DeployedLinear", "deploy"):
        from . import deployment

        return getattr(deployment, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Real low-bit operations: Triton INT8/FP8 GEMMs with fused epilogues and row-wise activation quantization, with
PyTorch references (``ops``). Pure functions over tensors; the model-level backends that use them are
``plugin.int8_training`` (INT8 mixed-precision training) and ``deploy.triton`` (``deploy``)."""
from . import ops
from .ops import *  # noqa: F403  (the public functions of ops)

__all__ = list(ops.__all__)

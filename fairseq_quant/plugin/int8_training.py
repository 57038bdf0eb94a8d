"""INT8 mixed-precision training: the matmuls of a linear layer in dynamically quantized INT8.

A linear layer has three matmuls per training step: the forward product ``x W^T``, the input gradient
``g W`` (dgrad) and the weight gradient ``g^T x`` (wgrad). Each operand is quantized row-wise along the summed
dimension (absmax scales, symmetric int8 grid) and the product runs in ``ops.scaled_mm`` with the
dequantisation fused. Modes: ``fwd`` (forward only), ``fwd_dgrad`` (and the input gradient), ``all`` (all three);
the rest stays in the input's floating-point type. With ``stochastic`` the gradient operands are rounded
stochastically (unbiased); the Triton kernel draws the noise in registers, so it costs no extra memory
(the PyTorch fallback materialises one noise tensor per operand).
"""
from __future__ import annotations

import argparse
import functools

import torch
from torch import nn

from ..kernels.ops import quantize_rows, scaled_mm
from .layers import QuantizedLinear, QuantizedMultiheadAttention
from .options import INT8_TRAINING_MODES

__all__ = ["check_int8_training_args", "int8_linear", "set_int8_training"]



def _check_mode(mode: str) -> None:
    if mode not in INT8_TRAINING_MODES:
        raise ValueError(f"--int8-training must be one of {', '.join(INT8_TRAINING_MODES)}, got {mode!r}")


def _int8_mm(a: torch.Tensor, b: torch.Tensor, out_dtype, stochastic_a: bool = False, bias=None) -> torch.Tensor:
    """``a @ b^T`` with both operands quantized row-wise to int8 (``a`` stochastically if asked)."""
    qa, sa = quantize_rows(a.contiguous(), stochastic=stochastic_a)
    qb, sb = quantize_rows(b.contiguous())
    return scaled_mm(qa, sa, qb, sb, bias, out_dtype=out_dtype)


class _Int8Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, weight, bias, mode, stochastic):
        ctx.save_for_backward(x2, weight)
        ctx.mode, ctx.stochastic, ctx.has_bias = mode, stochastic, bias is not None
        return _int8_mm(x2, weight, x2.dtype, bias=bias)

    @staticmethod
    def backward(ctx, g):
        x2, weight = ctx.saved_tensors
        mode, sr = ctx.mode, ctx.stochastic
        g = g.contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            if mode in ("fwd_dgrad", "all"):  # (M, N) x (N, K): rows of g, columns of W
                dx = _int8_mm(g, weight.t(), g.dtype, stochastic_a=sr)
            else:
                dx = g @ weight.to(g.dtype)
        if ctx.needs_input_grad[1]:
            if mode == "all":  # (N, M) x (M, K): summed over the tokens
                dw = _int8_mm(g.t(), x2.t(), weight.dtype, stochastic_a=sr)
            else:
                dw = (g.t() @ x2.to(g.dtype)).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g.sum(0).to(weight.dtype)
        return dx, dw, db, None, None


def int8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mode: str,
                stochastic: bool = False) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` with its matmuls in INT8 as ``mode`` says (``off``: plain F.linear)."""
    _check_mode(mode)
    if mode == "off":
        return torch.nn.functional.linear(x, weight, bias)
    device = x.device.type
    if torch.is_autocast_enabled(device):  # as autocast runs F.linear: operands in its 16-bit type
        dtype = torch.get_autocast_dtype(device)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    shape = x.shape
    y = _Int8Linear.apply(x.reshape(-1, shape[-1]), weight, bias, mode, stochastic)
    return y.reshape(*shape[:-1], weight.shape[0])


def set_int8_training(model: nn.Module, mode: str, stochastic: bool = False) -> int:
    """Run every ``QuantizedLinear`` of ``model`` through ``int8_linear`` with ``mode`` (``off`` restores
    F.linear): installed as the layer's ``linear_fn``; attention then takes fairseq's module path so its
    projections are these layers. Returns the number of layers set."""
    _check_mode(mode)
    n = 0
    for m in model.modules():
        if isinstance(m, QuantizedLinear):
            m.linear_fn = None if mode == "off" else functools.partial(int8_linear, mode=mode, stochastic=stochastic)
            n += 1
        elif isinstance(m, QuantizedMultiheadAttention):
            m.module_path = mode != "off"
    return n


def check_int8_training_args(args: argparse.Namespace) -> None:
    mode = getattr(args, "int8_training", "off") or "off"
    _check_mode(mode)
    if getattr(args, "int8_stochastic_rounding", False) and mode in ("off", "fwd"):
        raise ValueError(f"--int8-stochastic-rounding rounds INT8 gradients: it needs --int8-training fwd_dgrad "
                         f"or all, got --int8-training {mode}")

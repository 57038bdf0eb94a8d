"""Bit-operations account of training: GEMM multiply-accumulates (MACs) x operand bit widths, cumulatively.

For every forward pass in training mode, each wrapped GEMM reports its MACs from its tensor shapes (no device
sync): a ``QuantizedLinear`` ``tokens x in_features x out_features``, a ``QuantizedMultiheadAttention`` its two
matmuls ``q @ k^T`` and ``probs @ v``, ``2 x batch x target length x source length x embed dim``. They are
weighted with the bit widths of the recipe in force (a point that is not quantized counts as 32 bits):

    bitops = linear MACs x weight bits x input bits + attention MACs x input bits x input bits

The backward GEMMs are counted separately, as CPT's cost model does: each forward GEMM has two in the backward
pass of its MACs (a linear layer's input and weight gradients; each attention matmul's two operand gradients),
whose operands are the gradient (``gbits``: 32, or the ``--formatgrad`` format's bits) and the forward operand:

    bw_bitops = linear MACs x gbits x (weight bits + input bits) + attention MACs x 2 x gbits x input bits

The cumulative totals are saved with the model (buffers ``macs``, ``bitops``, ``bw_macs``, ``bw_bitops``,
float64), so a resumed run continues its account, and logged on every update as ``macs``, ``bitops``,
``bw_macs``, ``bw_bitops``, ``wbits`` and ``inbits`` through fairseq's metrics (``train_inner`` lines,
TensorBoard). A static 8-bit run has ``bitops == 64 * macs``. ``reset()`` starts the account again at zero (the
model calls it when fairseq resets its meters or its optimizer on a ``--restore-file``).
"""
from __future__ import annotations

import logging
import weakref

import torch
from fairseq.logging import metrics
from torch import nn

from ..core.formats import get_format
from ..core.spec import QuantSpec
from .layers import QuantizedLinear, QuantizedMultiheadAttention

__all__ = ["BitOpsCounter", "operand_bits"]

logger = logging.getLogger(__name__)

FULL_PRECISION_BITS = 32


_TOTALS = ("macs", "bitops", "bw_macs", "bw_bitops")


def grad_bits(input_spec: QuantSpec) -> int:
    """Bits of the gradients in the backward GEMMs: the ``--formatgrad`` format's, else 32."""
    return get_format(input_spec.grad_format).bits if input_spec.grad_format else FULL_PRECISION_BITS


def operand_bits(spec: QuantSpec) -> int:
    """The bit width a GEMM operand has under ``spec``: its bits when quantized, else 32."""
    return spec.bits if spec.mode == "quantize" else FULL_PRECISION_BITS


class BitOpsCounter(nn.Module):
    """Counts the GEMM MACs and bit operations of a model's training forwards; see the module docstring.

    ``attach(model)`` registers the shape hooks; the model calls ``step(weight_spec, input_spec)`` after each
    training forward, which adds the pending MACs to the totals at those bit widths and logs them.
    """

    def __init__(self):
        super().__init__()
        for name in _TOTALS:
            self.register_buffer(name, torch.zeros((), dtype=torch.float64))
        self._totals = dict.fromkeys(_TOTALS, 0.0)  # as Python floats: counting and logging never wait for a device
        self._linear = 0
        self._attention = 0
        self._hooked: weakref.WeakSet = weakref.WeakSet()

    def attach(self, model: nn.Module) -> None:
        """Hook every QuantizedLinear and QuantizedMultiheadAttention of ``model`` not hooked yet (call it again
        after adding modules, e.g. a classification head)."""
        for module in model.modules():
            if module in self._hooked:
                continue
            self._hooked.add(module)
            if isinstance(module, QuantizedLinear):
                module.register_forward_hook(self._count_linear)
            elif isinstance(module, QuantizedMultiheadAttention):
                module.register_forward_hook(self._count_attention, with_kwargs=True)

    def _count_linear(self, module: QuantizedLinear, args: tuple, output: torch.Tensor) -> None:
        if module.training:
            self._linear += output.numel() * module.in_features

    def _count_attention(self, module: QuantizedMultiheadAttention, args: tuple, kwargs: dict, output) -> None:
        if not module.training:
            return
        query = kwargs.get("query", args[0] if args else None)
        key = kwargs.get("key", args[1] if len(args) > 1 else None)
        key = query if key is None else key
        tgt_len, bsz, embed_dim = query.shape
        self._attention += 2 * bsz * tgt_len * key.shape[0] * embed_dim

    @property
    def pending(self) -> list[float]:
        """The MACs counted since the last step: ``[linear, attention]`` (summed over data-parallel workers by
        ``RangeSync.flush``, so the account is global)."""
        return [float(self._linear), float(self._attention)]

    @pending.setter
    def pending(self, counts: list[float]) -> None:
        self._linear, self._attention = counts

    def step(self, weight_spec: QuantSpec, input_spec: QuantSpec) -> None:
        """Add the MACs counted since the last step at these bit widths; log the totals and the bits."""
        w, i = operand_bits(weight_spec), operand_bits(input_spec)
        g = grad_bits(input_spec)
        lin, att = self._linear, self._attention
        t = self._totals
        t["macs"] += lin + att
        t["bitops"] += lin * w * i + att * i * i
        t["bw_macs"] += 2 * (lin + att)
        t["bw_bitops"] += lin * g * (w + i) + att * 2 * g * i
        self._linear = self._attention = 0
        metrics.log_scalar("wbits", w, weight=0, round=0)
        metrics.log_scalar("inbits", i, weight=0, round=0)
        for name in _TOTALS:
            metrics.log_scalar(name, t[name], weight=0)

    def totals(self) -> tuple[float, float]:
        """(cumulative MACs, cumulative bit operations) of the forward GEMMs."""
        return self._totals["macs"], self._totals["bitops"]

    def backward_totals(self) -> tuple[float, float]:
        """(cumulative MACs, cumulative bit operations) of the backward GEMMs."""
        return self._totals["bw_macs"], self._totals["bw_bitops"]

    def reset(self) -> None:
        """Start the account again at zero."""
        self._totals = dict.fromkeys(_TOTALS, 0.0)
        self._linear = self._attention = 0

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for name in _TOTALS:
            getattr(self, name).fill_(self._totals[name])
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, buf in self._buffers.items():  # checkpoints from before the account start it at zero
            state_dict.setdefault(prefix + name, torch.zeros_like(buf))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._totals = {name: float(getattr(self, name)) for name in _TOTALS}

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name in _TOTALS:  # casting the model to fp16 must not round the totals
            buf = getattr(self, name)
            if buf.dtype != torch.float64:
                setattr(self, name, buf.double())
        return self

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={self._totals[name]:g}" for name in _TOTALS)

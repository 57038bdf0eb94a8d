"""Bit-operations account of training: GEMM multiply-accumulates (MACs) x operand bit widths, cumulatively.

For every forward pass in training mode, each wrapped GEMM reports its MACs from its tensor shapes (no device
sync): a ``QuantizedLinear`` ``tokens x in_features x out_features``, a ``QuantizedMultiheadAttention`` its two
matmuls ``q @ k^T`` and ``probs @ v``, ``2 x batch x target length x source length x embed dim``. They are
weighted with the bit widths of its own operands' quantizers at that moment (a point that is not quantized
counts as 32 bits), so points kept at a fixed precision while the rest cycles are counted at theirs:

    bitops = linear MACs x weight bits x input bits + (attention MACs / 2) x (q bits x k bits + probs bits x v bits)

The backward GEMMs are counted separately, as CPT's cost model does: each forward GEMM has two in the backward
pass of its MACs (a linear layer's input and weight gradients; each attention matmul's two operand gradients),
whose operands are the gradient (``gbits``: 32, or the ``--formatgrad`` format's bits) and the forward operand:

    bw_bitops = linear MACs x gbits x (weight bits + input bits) + attention MACs x gbits x (q + k + probs + v bits)

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
from ..core.quant_measure import QuantMeasure
from ..core.spec import QuantSpec
from .layers import QuantizedLinear, QuantizedMultiheadAttention, gemm_input_quantizer

__all__ = ["BitOpsCounter", "operand_bits"]

logger = logging.getLogger(__name__)

FULL_PRECISION_BITS = 32


_TOTALS = ("macs", "bitops", "bw_macs", "bw_bitops")


def _bits(q: QuantMeasure | None) -> int:
    return FULL_PRECISION_BITS if q is None else operand_bits(q.spec)


def _grad_bits(q: QuantMeasure | None) -> int:
    """Bits of the gradient a GEMM operand gets back: ``--formatgrad``'s where its quantizer rounds it, else 32."""
    if q is None or q.spec.mode != "quantize" or not q.spec.grad_format:
        return FULL_PRECISION_BITS
    return get_format(q.spec.grad_format).bits


def operand_bits(spec: QuantSpec) -> int:
    """The bit width a GEMM operand has under ``spec``: its bits when quantized, else 32."""
    return spec.bits if spec.mode == "quantize" else FULL_PRECISION_BITS


class BitOpsCounter(nn.Module):
    """Counts the GEMM MACs and bit operations of a model's training forwards; see the module docstring.

    ``attach(model)`` registers the shape hooks, which count each training GEMM at its operands' bits; the model
    calls ``step(weight_spec, input_spec)`` after each training forward, which adds what is pending to the totals
    and logs them with the base bit widths.
    """

    def __init__(self):
        super().__init__()
        for name in _TOTALS:
            self.register_buffer(name, torch.zeros((), dtype=torch.float64))
        self._totals = dict.fromkeys(_TOTALS, 0.0)  # as Python floats: counting and logging never wait for a device
        self._pending = [0.0] * len(_TOTALS)  # this forward's macs, bitops, bw_macs, bw_bitops
        self._hooked: weakref.WeakSet = weakref.WeakSet()
        self._inputs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # linear -> its input's quantizer

    def attach(self, model: nn.Module) -> None:
        """Hook every QuantizedLinear and QuantizedMultiheadAttention of ``model`` not hooked yet (call it again
        after adding modules, e.g. a classification head)."""
        for parent in model.modules():  # a linear's input quantizer may be its parent's (q/k/v: the attention's)
            for child, module in parent.named_children():
                if module in self._hooked:
                    continue
                self._hooked.add(module)
                if isinstance(module, QuantizedLinear):
                    self._inputs[module] = gemm_input_quantizer(parent, child, module)
                    module.register_forward_hook(self._count_linear)
                elif isinstance(module, QuantizedMultiheadAttention):
                    module.register_forward_hook(self._count_attention, with_kwargs=True)

    def _add(self, macs: float, pairs: tuple[tuple[QuantMeasure | None, QuantMeasure | None], ...]) -> None:
        """``macs`` multiply-accumulates shared equally by the GEMMs whose operand quantizers ``pairs`` lists."""
        share = macs / len(pairs)
        p = self._pending
        for a, b in pairs:
            bits_a, bits_b = _bits(a), _bits(b)
            g = min(_grad_bits(a), _grad_bits(b))  # the operand whose quantizer rounds gradients (--formatgrad)
            p[0] += share
            p[1] += share * bits_a * bits_b
            p[2] += 2 * share
            p[3] += share * g * (bits_a + bits_b)

    def _count_linear(self, module: QuantizedLinear, args: tuple, output: torch.Tensor) -> None:
        if module.training:
            self._add(output.numel() * module.in_features, ((module.weight_quant, self._inputs.get(module)),))

    def _count_attention(self, module: QuantizedMultiheadAttention, args: tuple, kwargs: dict, output) -> None:
        if not module.training:
            return
        query = kwargs.get("query", args[0] if args else None)
        key = kwargs.get("key", args[1] if len(args) > 1 else None)
        key = query if key is None else key
        tgt_len, bsz, embed_dim = query.shape
        self._add(2 * bsz * tgt_len * key.shape[0] * embed_dim,
                  ((module.q_proj.output_quant, module.k_proj.output_quant),
                   (module.probs_quant, module.v_proj.output_quant)))

    @property
    def pending(self) -> list[float]:
        """This forward's ``[macs, bitops, bw_macs, bw_bitops]`` (summed over data-parallel workers by
        ``RangeSync.flush``, so the account is global)."""
        return list(self._pending)

    @pending.setter
    def pending(self, counts: list[float]) -> None:
        self._pending = list(counts)

    def step(self, weight_spec: QuantSpec, input_spec: QuantSpec) -> None:
        """Add what was counted since the last step to the totals; log them and the base bit widths."""
        for name, value in zip(_TOTALS, self._pending):
            self._totals[name] += value
        self._pending = [0.0] * len(_TOTALS)
        metrics.log_scalar("wbits", operand_bits(weight_spec), weight=0, round=0)
        metrics.log_scalar("inbits", operand_bits(input_spec), weight=0, round=0)
        for name in _TOTALS:
            metrics.log_scalar(name, self._totals[name], weight=0)

    def totals(self) -> tuple[float, float]:
        """(cumulative MACs, cumulative bit operations) of the forward GEMMs."""
        return self._totals["macs"], self._totals["bitops"]

    def backward_totals(self) -> tuple[float, float]:
        """(cumulative MACs, cumulative bit operations) of the backward GEMMs."""
        return self._totals["bw_macs"], self._totals["bw_bitops"]

    def reset(self) -> None:
        """Start the account again at zero."""
        self._totals = dict.fromkeys(_TOTALS, 0.0)
        self._pending = [0.0] * len(_TOTALS)

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

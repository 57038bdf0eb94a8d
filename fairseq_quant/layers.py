"""QuantizedLayer wrappers: route tensors through named QuantMeasures, compute nothing else.

Wrapping swaps the class of an existing module in place (as NVIDIA ModelOpt does), so parameter names, hooks
(spectral norm, quant-noise) and fairseq's own forward code stay exactly as they were, and fairseq checkpoints
load unchanged; the quantizers only add buffers.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from fairseq.modules import MultiheadAttention
from torch import nn

from .quant_measure import QuantMeasure
from .spec import QuantSpec

__all__ = ["QuantizedLinear", "QuantizedMultiheadAttention", "quantizers"]


def _measure(spec: QuantSpec | None, channels: int = 1) -> QuantMeasure | None:
    return None if spec is None else QuantMeasure(spec, channels)


class QuantizedLinear(nn.Linear):
    """``nn.Linear`` with quantizers on its input, its weight and (optionally) its output.

    Any of ``input_quant``, ``weight_quant``, ``output_quant`` may be ``None`` (that tensor is never quantized
    here, e.g. because the caller already quantized it). The bias stays in floating point.
    """

    input_quant: QuantMeasure | None
    weight_quant: QuantMeasure | None
    output_quant: QuantMeasure | None

    @classmethod
    def wrap(
        cls,
        linear: nn.Linear,
        input_spec: QuantSpec | None,
        weight_spec: QuantSpec | None,
        output_spec: QuantSpec | None = None,
    ) -> QuantizedLinear:
        """Turn ``linear`` (in place) into a QuantizedLinear with quantizers for the given specs."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"QuantizedLinear wraps nn.Linear, got {type(linear).__name__}")
        linear.__class__ = cls
        linear.input_quant = _measure(input_spec)
        linear.weight_quant = _measure(weight_spec, linear.out_features)
        linear.output_quant = _measure(output_spec)
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        weight = self.weight if self.weight_quant is None else self.weight_quant(self.weight)
        y = F.linear(x, weight, self.bias)
        if self.output_quant is not None:
            y = self.output_quant(y)
        return y


class QuantizedMultiheadAttention(MultiheadAttention):
    """fairseq's MultiheadAttention with its GEMM operands quantized, each exactly once.

    - ``input_quant``: the attention input (the one tensor that feeds the q, k and v projections in
      self-attention); ``key_input_quant``: the key/value input of encoder-decoder attention;
    - ``q_proj``, ``k_proj``, ``v_proj``: their weights, and their outputs q, k, v — the operands of
      ``q @ k^T`` and ``probs @ v`` (q is quantized before fairseq multiplies it by ``head_dim ** -0.5``, which only
      rescales the grid);
    - ``probs_quant``: the softmax probabilities (unsigned grid), applied as they enter ``dropout_module``;
    - ``out_proj``: its input (the attention context) and its weight.

    fairseq normally runs ``F.multi_head_attention_forward``, which reads the projection weights directly and
    never calls the projection modules; while any quantizer here is active this wrapper makes fairseq take its
    own module-by-module path instead (``skip_embed_dim_check``), and the fused path otherwise.
    """

    input_quant: QuantMeasure | None
    key_input_quant: QuantMeasure | None
    probs_quant: QuantMeasure | None

    @classmethod
    def wrap(
        cls,
        attn: MultiheadAttention,
        input_spec: QuantSpec | None,
        weight_spec: QuantSpec | None,
        probs_spec: QuantSpec | None,
    ) -> QuantizedMultiheadAttention:
        """Turn fairseq's ``attn`` (in place) into a QuantizedMultiheadAttention."""
        if not isinstance(attn, MultiheadAttention):
            raise TypeError(
                f"QuantizedMultiheadAttention wraps fairseq's MultiheadAttention, got {type(attn).__name__}"
            )
        attn.__class__ = cls
        attn.input_quant = _measure(input_spec)
        attn.key_input_quant = _measure(input_spec) if attn.encoder_decoder_attention else None
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            QuantizedLinear.wrap(proj, None, weight_spec, input_spec)
        QuantizedLinear.wrap(attn.out_proj, input_spec, weight_spec)
        attn.probs_quant = _measure(probs_spec)
        attn.dropout_module.register_forward_pre_hook(attn._quantize_probs)
        return attn

    def _quantize_probs(self, module: nn.Module, args: tuple) -> tuple | None:
        if self.probs_quant is None:
            return None
        return (self.probs_quant(args[0]),) + tuple(args[1:])

    def forward(self, query, key, value, key_padding_mask=None, incremental_state=None, need_weights=True,
                static_kv=False, attn_mask=None, before_softmax=False, need_head_weights=False):
        self.skip_embed_dim_check = any(q.active for q in quantizers(self))
        same_kv = value is key
        if self.input_quant is not None:
            self_attention = key is query
            query = self.input_quant(query)
            if self_attention:
                key = query
        # while decoding, encoder-decoder attention reads its keys and values from the cache after the first step
        cached = static_kv and incremental_state is not None and "prev_key" in (
            self._get_input_buffer(incremental_state) or {})
        if self.key_input_quant is not None and key is not None and key is not query and not cached:
            key = self.key_input_quant(key)
        if same_kv:
            value = key
        return super().forward(query, key, value, key_padding_mask, incremental_state, need_weights, static_kv,
                               attn_mask, before_softmax, need_head_weights)


def quantizers(module: nn.Module) -> Iterator[QuantMeasure]:
    """Every QuantMeasure inside ``module`` (itself included)."""
    return (m for m in module.modules() if isinstance(m, QuantMeasure))

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
from fairseq.modules.transformer_layer import (
    TransformerDecoderLayer,
    TransformerDecoderLayerBase,
    TransformerEncoderLayer,
    TransformerEncoderLayerBase,
)
from torch import nn

from ..core.quant_measure import QuantMeasure
from ..core.spec import QuantSpec

__all__ = [
    "QuantizedActivation",
    "QuantizedEmbedding",
    "QuantizedLayerNorm",
    "QuantizedLinear",
    "QuantizedMultiheadAttention",
    "gemm_input_quantizer",
    "quantize_residuals",
    "quantizers",
    "through",
]


def through(q: QuantMeasure | None, x: torch.Tensor) -> torch.Tensor:
    """``x`` through the quantizer ``q``, or unchanged where the wrapper has none at that point."""
    return x if q is None else q(x)


def _measure(spec: QuantSpec | None, channels: int = 1, role: str = "input", op: str = "gemm") -> QuantMeasure | None:
    return None if spec is None else QuantMeasure(spec, channels, role, op)


class QuantizedLinear(nn.Linear):
    """``nn.Linear`` with quantizers on its input, its weight and (optionally) its output.

    Any of ``input_quant``, ``weight_quant``, ``output_quant`` may be ``None`` (that tensor is never quantized
    here, e.g. because the caller already quantized it). The bias stays in floating point.
    """

    input_quant: QuantMeasure | None
    weight_quant: QuantMeasure | None
    output_quant: QuantMeasure | None
    # the product itself, ``F.linear`` unless a backend installs another with the same signature (INT8 training:
    # ``int8_training.set_int8_training``)
    linear_fn = None

    @classmethod
    def wrap(
        cls,
        linear: nn.Linear,
        input_spec: QuantSpec | None,
        weight_spec: QuantSpec | None,
        output_spec: QuantSpec | None = None,
        output_op: str = "output",
    ) -> QuantizedLinear:
        """Turn ``linear`` (in place) into a QuantizedLinear with quantizers for the given specs. The output
        quantizer belongs to ``output_op``: ``gemm`` where the output is itself a GEMM operand (q, k, v),
        ``output`` otherwise (quantized only when a recipe names it, e.g. ``h``)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"QuantizedLinear wraps nn.Linear, got {type(linear).__name__}")
        linear.__class__ = cls
        linear.input_quant = _measure(input_spec)
        linear.weight_quant = _measure(weight_spec, linear.out_features, role="weight")
        linear.output_quant = _measure(output_spec, op=output_op)
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = through(self.input_quant, x), through(self.weight_quant, self.weight)
        y = (self.linear_fn or F.linear)(x, w, self.bias)
        return through(self.output_quant, y)


class QuantizedMultiheadAttention(MultiheadAttention):
    """fairseq's MultiheadAttention with its GEMM operands quantized, each exactly once.

    - ``input_quant``: the attention input (the one tensor that feeds the q, k and v projections in
      self-attention); ``key_input_quant``: the key/value input of encoder-decoder attention;
    - ``q_proj``, ``k_proj``, ``v_proj``: their weights, and their outputs q, k, v — the operands of
      ``q @ k^T`` and ``probs @ v`` (q is quantized before fairseq multiplies it by ``head_dim ** -0.5``, which only
      rescales the grid);
    - ``probs_quant``: the softmax probabilities (unsigned grid), applied as they enter ``dropout_module``;
    - ``scores_quant``: the scaled scores ``(q * head_dim ** -0.5) @ k^T``, the softmax input (the
      ``attn_scaling`` operation), applied where fairseq passes them through ``apply_sparse_mask``;
    - ``out_proj``: its input (the attention context) and its weight.

    fairseq normally runs ``F.multi_head_attention_forward``, which reads the projection weights directly and
    never calls the projection modules; while any quantizer here is active this wrapper makes fairseq take its
    own module-by-module path instead (``skip_embed_dim_check``), and the fused path otherwise.
    """

    input_quant: QuantMeasure | None
    key_input_quant: QuantMeasure | None
    probs_quant: QuantMeasure | None
    module_path: bool = False  # always take fairseq's module-by-module path (projections run other kernels)

    @classmethod
    def wrap(
        cls,
        attn: MultiheadAttention,
        input_spec: QuantSpec | None,
        weight_spec: QuantSpec | None,
        probs_spec: QuantSpec | None,
        scores_spec: QuantSpec | None = None,
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
            QuantizedLinear.wrap(proj, None, weight_spec, input_spec, output_op="gemm")
        QuantizedLinear.wrap(attn.out_proj, input_spec, weight_spec)
        attn.probs_quant = _measure(probs_spec, role="probs")
        attn.scores_quant = _measure(scores_spec, op="attn_scaling")
        attn.dropout_module.register_forward_pre_hook(attn._quantize_probs)
        return attn

    def apply_sparse_mask(self, attn_weights, tgt_len: int, src_len: int, bsz: int):
        attn_weights = super().apply_sparse_mask(attn_weights, tgt_len, src_len, bsz)
        return through(getattr(self, "scores_quant", None), attn_weights)

    def _quantize_probs(self, module: nn.Module, args: tuple) -> tuple | None:
        if self.probs_quant is None:
            return None
        return (self.probs_quant(args[0]),) + tuple(args[1:])

    def forward(self, query, key, value, key_padding_mask=None, incremental_state=None, need_weights=True,
                static_kv=False, attn_mask=None, before_softmax=False, need_head_weights=False):
        self.skip_embed_dim_check = self.module_path or any(q.active for q in quantizers(self))
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


class QuantizedActivation(nn.Module):
    """An activation function (a module attribute such as fairseq's ``layer.activation_fn``) with quantizers on
    its input and output (the ``act`` operation)."""

    def __init__(self, fn, input_spec: QuantSpec | None, output_spec: QuantSpec | None):
        super().__init__()
        if isinstance(fn, QuantizedActivation):
            raise TypeError("this activation function is already quantized")
        self.fn = fn
        self.input_quant = _measure(input_spec, op="act")
        self.output_quant = _measure(output_spec, op="act")

    @classmethod
    def wrap(cls, owner: nn.Module, input_spec: QuantSpec | None, output_spec: QuantSpec | None,
             attr: str = "activation_fn") -> QuantizedActivation:
        """Replace ``owner.<attr>`` (a callable) by a QuantizedActivation around it; returns the wrapper."""
        act = cls(getattr(owner, attr), input_spec, output_spec)
        if attr in owner.__dict__:
            del owner.__dict__[attr]  # a plain attribute: nn.Module registers the wrapper as a submodule instead
        setattr(owner, attr, act)
        return act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return through(self.output_quant, self.fn(through(self.input_quant, x)))

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", type(self.fn).__name__)


class QuantizedLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` with quantizers on its input and output (the ``norm`` operation); the affine parameters
    stay in floating point."""

    input_quant: QuantMeasure | None
    output_quant: QuantMeasure | None

    @classmethod
    def wrap(cls, norm: nn.LayerNorm, input_spec: QuantSpec | None, output_spec: QuantSpec | None
             ) -> QuantizedLayerNorm:
        """Turn ``norm`` (exactly an ``nn.LayerNorm``) into a QuantizedLayerNorm in place."""
        if type(norm) is not nn.LayerNorm:
            raise TypeError(f"QuantizedLayerNorm wraps torch.nn.LayerNorm, got {type(norm).__name__}")
        norm.__class__ = cls
        norm.input_quant = _measure(input_spec, op="norm")
        norm.output_quant = _measure(output_spec, op="norm")
        return norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return through(self.output_quant, super().forward(through(self.input_quant, x)))


class QuantizedEmbedding(nn.Embedding):
    """``nn.Embedding`` whose table goes through ``weight_quant`` (the token embeddings ``Et``); the looked-up
    rows are those of the quantized table."""

    weight_quant: QuantMeasure | None

    @classmethod
    def wrap(cls, emb: nn.Embedding, weight_spec: QuantSpec | None) -> QuantizedEmbedding:
        if type(emb) is not nn.Embedding:
            raise TypeError(f"QuantizedEmbedding wraps torch.nn.Embedding, got {type(emb).__name__}")
        emb.__class__ = cls
        emb.weight_quant = _measure(weight_spec, emb.num_embeddings, role="weight", op="embedding")
        return emb

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, through(self.weight_quant, self.weight), self.padding_idx, self.max_norm,
                           self.norm_type, self.scale_grad_by_freq, self.sparse)


class _QuantizedResiduals:
    """Mixin for fairseq's transformer layers: quantizes the sums their ``residual_connection`` returns (the
    ``residual`` operation). fairseq calls it once per sublayer, in order, so the n-th call of a forward pass
    goes through the n-th of ``residual_names`` (``attn_residual_quant``, [``cross_residual_quant``,]
    ``ffn_residual_quant`` — the last is the ``y`` point)."""

    residual_names: tuple[str, ...]

    def forward(self, *args, **kwargs):
        self._residual_calls = 0
        return super().forward(*args, **kwargs)

    def residual_connection(self, x, residual):
        y = super().residual_connection(x, residual)
        i = self._residual_calls
        self._residual_calls += 1
        return through(getattr(self, self.residual_names[i]) if i < len(self.residual_names) else None, y)


class QuantizedTransformerEncoderLayerBase(_QuantizedResiduals, TransformerEncoderLayerBase):
    pass


class QuantizedTransformerEncoderLayer(_QuantizedResiduals, TransformerEncoderLayer):
    pass


class QuantizedTransformerDecoderLayerBase(_QuantizedResiduals, TransformerDecoderLayerBase):
    pass


class QuantizedTransformerDecoderLayer(_QuantizedResiduals, TransformerDecoderLayer):
    pass


_RESIDUAL_CLASSES = {
    TransformerEncoderLayerBase: QuantizedTransformerEncoderLayerBase,
    TransformerEncoderLayer: QuantizedTransformerEncoderLayer,
    TransformerDecoderLayerBase: QuantizedTransformerDecoderLayerBase,
    TransformerDecoderLayer: QuantizedTransformerDecoderLayer,
}


def quantize_residuals(layer: nn.Module, spec: QuantSpec | None) -> bool:
    """Give a fairseq transformer layer (exactly one of fairseq's four layer classes) quantizers on its residual
    sums, in place. Returns False (and leaves it alone) for any other module."""
    cls = _RESIDUAL_CLASSES.get(type(layer))
    if cls is None:
        return False
    names = ["attn_residual_quant"]
    if getattr(layer, "encoder_attn", None) is not None:
        names.append("cross_residual_quant")
    names.append("ffn_residual_quant")
    layer.__class__ = cls
    layer.residual_names = tuple(names)
    for name in names:
        setattr(layer, name, _measure(spec, op="residual"))
    return True


def gemm_input_quantizer(parent: nn.Module, child: str, linear: QuantizedLinear) -> QuantMeasure | None:
    """The quantizer of what ``linear`` (the child ``child`` of ``parent``) multiplies: its own input quantizer,
    or, for an attention's q/k/v projection, the attention's (``input_quant``; ``key_input_quant`` for k and v of
    encoder-decoder attention), which quantizes the one tensor the three projections share."""
    if linear.input_quant is not None:
        return linear.input_quant
    if isinstance(parent, QuantizedMultiheadAttention) and child in ("q_proj", "k_proj", "v_proj"):
        if child != "q_proj" and parent.encoder_decoder_attention:
            return parent.key_input_quant
        return parent.input_quant
    return None


def quantizers(module: nn.Module) -> Iterator[QuantMeasure]:
    """Every QuantMeasure inside ``module`` (itself included)."""
    return (m for m in module.modules() if isinstance(m, QuantMeasure))

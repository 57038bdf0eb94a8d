"""``quant_transformer``: fairseq's translation ``transformer``, opted in to quantization by a user.

This is what a user writes to quantize their own fairseq model with fairseq-quant: extend the model, add the
plugin's flags to its ``add_args``, wrap it with ``quantize_model`` in ``build_model``, and give each architecture
the plugin's defaults. Nothing else: every ``transformer`` option keeps working, parameter names are unchanged,
and the quantizers only add buffers (their ranges), which checkpoints carry.

What is quantized (with ``--quantw --quantin``): every GEMM of the encoder and the decoder — the inputs and
weights of the attention projections and of ``fc1``/``fc2``, the attention's q, k, v and softmax probabilities,
in encoder self-attention, decoder self-attention and encoder-decoder attention (whose key/value input, the
encoder output, has its own quantizer), and the decoder's output projection (tied to the embeddings under
``--share-decoder-input-output-embed``/``--share-all-embeddings``: its weight is quantized for the projection
only; the embedding lookup stays in floating point).
"""
from __future__ import annotations

from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerModel, base_architecture, transformer_iwslt_de_en
from fairseq.utils import safe_getattr

from fairseq_quant import QuantRecipe, add_quant_args, quantize_model, recipe_from_args, set_quant_defaults

__all__ = ["QuantTransformerModel"]


@register_model("quant_transformer")
class QuantTransformerModel(TransformerModel):
    """fairseq's ``TransformerModel`` with its linear layers and attention GEMM operands quantized."""

    quant_recipe: QuantRecipe

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        add_quant_args(parser, training=False)  # no --freeze: it freezes a RoBERTa encoder for its head

    @classmethod
    def build_model(cls, args, task):
        # The recipe is read from ``args`` here: TransformerModel converts them to a TransformerConfig, which
        # has no quantization fields, before it builds the encoder and decoder.
        set_quant_defaults(args)  # old checkpoints: the options they were saved without
        recipe = recipe_from_args(args)  # validates the flags
        model = super().build_model(args, task)
        quantize_model(model, recipe, skip=())  # every GEMM, the output projection included
        model.quant_recipe = recipe
        return model


@register_model_architecture("quant_transformer", "quant_transformer")
def quant_transformer_architecture(args):
    """``transformer``'s defaults (transformer base: 6+6 layers, 512 dims, 8 heads), quantization off."""
    set_quant_defaults(args)
    base_architecture(args)


@register_model_architecture("quant_transformer", "quant_transformer_iwslt_de_en")
def quant_transformer_iwslt_de_en_architecture(args):
    """``transformer_iwslt_de_en``'s defaults (6+6 layers, 512 dims, ffn 1024, 4 heads)."""
    set_quant_defaults(args)
    transformer_iwslt_de_en(args)


@register_model_architecture("quant_transformer", "quant_transformer_tiny")
def quant_transformer_tiny_architecture(args):
    """The transformer's structure at small dimensions (2+2 layers, 64 dims, ffn 128, 4 heads), for the
    translation example and the tests."""
    args.encoder_layers = safe_getattr(args, "encoder_layers", 2)
    args.encoder_embed_dim = safe_getattr(args, "encoder_embed_dim", 64)
    args.encoder_ffn_embed_dim = safe_getattr(args, "encoder_ffn_embed_dim", 128)
    args.encoder_attention_heads = safe_getattr(args, "encoder_attention_heads", 4)
    args.decoder_layers = safe_getattr(args, "decoder_layers", 2)
    args.decoder_attention_heads = safe_getattr(args, "decoder_attention_heads", 4)
    # the decoder's dims default to the encoder's (base_architecture)
    quant_transformer_architecture(args)

"""The ``quant_roberta`` model: fairseq's RoBERTa with quantized GEMMs, and its architectures.

It extends ``RobertaModel`` the way fairseq's own Linformer does: same options (every ``roberta`` flag keeps
working), plus the quantization flags; same parameter names, so fairseq RoBERTa checkpoints (e.g. the published
``roberta.base``) load through ``--restore-file`` or ``QuantRobertaModel.from_pretrained``; quantizer state that
the checkpoint lacks stays initialised (``QuantMeasure._load_from_state_dict``).
"""
from __future__ import annotations

import logging

from fairseq.models import register_model, register_model_architecture
from fairseq.models.roberta import RobertaModel
from fairseq.models.roberta.hub_interface import RobertaHubInterface
from fairseq.models.roberta.model import (
    base_architecture,
    roberta_base_architecture,
    roberta_large_architecture,
)
from fairseq.utils import safe_getattr
from omegaconf import open_dict
from torch import nn

from ..recipe import QuantRecipe, add_quant_args, apply_recipe, quantize_model, set_quant_defaults

logger = logging.getLogger(__name__)

__all__ = ["QuantRobertaModel"]


@register_model("quant_roberta")
class QuantRobertaModel(RobertaModel):
    """RoBERTa whose linear layers and attention GEMM operands go through QuantMeasures (see ``layers.py``)."""

    def __init__(self, args, encoder):
        super().__init__(args, encoder)
        self.quant_recipe = QuantRecipe.from_args(args)

    @staticmethod
    def add_args(parser):
        RobertaModel.add_args(parser)
        parser.add_argument("--layernorm-eps", type=float, metavar="EPS",
                            help="epsilon of every LayerNorm (default 1e-5, fairseq's; BERT models use 1e-12)")
        add_quant_args(parser)

    @classmethod
    def build_model(cls, args, task):
        set_quant_defaults(args)
        args.layernorm_eps = getattr(args, "layernorm_eps", None) or 1e-5
        QuantRecipe.from_args(args)  # validate the flags before building anything
        model = super().build_model(args, task)
        quantize_model(model, model.quant_recipe)
        if args.layernorm_eps <= 0:
            raise ValueError(f"--layernorm-eps must be positive, got {args.layernorm_eps}")
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = args.layernorm_eps
        if args.freeze:
            for p in model.encoder.parameters():
                p.requires_grad_(False)
        return model

    def register_classification_head(self, name, num_classes=None, inner_dim=None, **kwargs):
        super().register_classification_head(name, num_classes, inner_dim, **kwargs)
        quantize_model(self.classification_heads[name], self.quant_recipe)

    def set_quant_recipe(self, recipe: QuantRecipe) -> None:
        """Use ``recipe`` for every quantizer from now on (e.g. post-training quantization)."""
        self.quant_recipe = recipe
        apply_recipe(self, recipe)

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path,
        checkpoint_file="model.pt",
        data_name_or_path=".",
        bpe="gpt2",
        arch="quant_roberta",
        **kwargs,
    ):
        """Load a fairseq RoBERTa checkpoint (ours, or fairseq's own, e.g. ``roberta.base``) as ``arch``.

        Quantization flags are keyword arguments (``quantw=True, bitsw=4``). Returns fairseq's
        ``RobertaHubInterface``.
        """
        from fairseq import hub_utils

        x = hub_utils.from_pretrained(
            model_name_or_path,
            checkpoint_file,
            data_name_or_path,
            archive_map=cls.hub_models(),
            bpe=bpe,
            load_checkpoint_heads=True,
            arch=arch,  # old checkpoints (args Namespace, like roberta.base) build the model from args.arch
            **kwargs,
        )
        model = x["models"][0]
        if not isinstance(model, cls):
            # newer checkpoints name their model in cfg.model._name, which an override cannot reach without
            # renaming the task too: rebuild as ``arch`` from the loaded configuration and weights
            cfg = x["args"]
            with open_dict(cfg):
                cfg.model._name = arch
            plain = model
            model = x["task"].build_model(cfg.model)
            model.load_state_dict(plain.state_dict(), strict=True, model_cfg=cfg.model)
        return RobertaHubInterface(x["args"], x["task"], model)


@register_model_architecture("quant_roberta", "quant_roberta")
def quant_roberta_architecture(args):
    set_quant_defaults(args)
    base_architecture(args)


@register_model_architecture("quant_roberta", "quant_roberta_base")
def quant_roberta_base_architecture(args):
    set_quant_defaults(args)
    roberta_base_architecture(args)


@register_model_architecture("quant_roberta", "quant_roberta_large")
def quant_roberta_large_architecture(args):
    set_quant_defaults(args)
    roberta_large_architecture(args)


@register_model_architecture("quant_roberta", "quant_roberta_tiny")
def quant_roberta_tiny_architecture(args):
    """RoBERTa's structure at small dimensions, for tests and the quickstart."""
    args.encoder_layers = safe_getattr(args, "encoder_layers", 2)
    args.encoder_embed_dim = safe_getattr(args, "encoder_embed_dim", 64)
    args.encoder_ffn_embed_dim = safe_getattr(args, "encoder_ffn_embed_dim", 128)
    args.encoder_attention_heads = safe_getattr(args, "encoder_attention_heads", 4)
    set_quant_defaults(args)
    base_architecture(args)

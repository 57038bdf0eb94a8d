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

from ..core.recipe import QuantRecipe
from ..core.schedule import CPTConfig, parse_eval_bits
from .bitops import BitOpsCounter
from .cpt import CyclicPrecision, check_cpt_args, cpt_config_from_args, total_updates
from .distributed import RangeSync, data_parallel_sync
from .int8_training import check_int8_training_args, set_int8_training
from .options import add_options, recipe_from_args, set_quant_defaults
from .quantize import apply_recipe, point_names, quantize_model

logger = logging.getLogger(__name__)

__all__ = ["QuantRobertaModel"]


@register_model("quant_roberta")
class QuantRobertaModel(RobertaModel):
    """RoBERTa whose linear layers and attention GEMM operands go through QuantMeasures (see ``layers.py``)."""

    def __init__(self, args, encoder):
        super().__init__(args, encoder)
        self.quant_recipe: QuantRecipe | None = None  # build_model sets the recipe it resolved from the flags
        self.int8_training = ("off", False)
        self.cpt: CyclicPrecision | None = None
        self._num_updates: int | None = None
        self.bitops_counter = BitOpsCounter()
        self._points_checked = False
        self._sync: RangeSync | None | bool = False  # False: not looked up yet (the first training forward does)

    @staticmethod
    def add_args(parser):
        RobertaModel.add_args(parser)
        add_options(parser, ("quant", "train", "cpt", "int8", "model"))

    @classmethod
    def check_args(cls, args) -> tuple[QuantRecipe, CPTConfig | None]:
        """Resolve the flags: ``(recipe, cpt config or None)``, the recipe at the evaluation precision of a CPT
        run. Rejects bad combinations naming the flags (``ValueError``): fairseq-train reports it as a usage error
        at parse time (``patches/model_checks_args.py``); ``build_model`` resolves once more, for the build."""
        set_quant_defaults(args)
        check_int8_training_args(args)
        recipe = recipe_from_args(args)
        config = cpt_config_from_args(args)
        if config is None:
            return recipe, None
        check_cpt_args(args, config)
        return recipe.with_bits(*parse_eval_bits(args.cpt_eval_bits, config)), config

    @classmethod
    def build_model(cls, args, task):
        recipe, config = cls.check_args(args)
        if config is not None:
            # the saved configuration carries the schedule and the evaluation precision, so a CPT checkpoint
            # loads (evaluate.py, hub) without its JSON file and evaluates at the fixed precision
            args.cpt_schedule = config.to_json()
            args.bitsw, args.bitsin = parse_eval_bits(args.cpt_eval_bits, config)
        if args.quant_recipe and not getattr(args, "quant_recipe_json", None):
            # saved with the checkpoint, so the model loads (evaluate.py, hub) without the recipe file
            args.quant_recipe_json = recipe.to_json()
        model = super().build_model(args, task)
        model.quant_recipe = recipe
        model.int8_training = (args.int8_training, bool(args.int8_stochastic_rounding))
        quantize_model(model, recipe)
        set_int8_training(model, *model.int8_training)
        model.bitops_counter.attach(model)
        # fairseq-train --restore-file CKPT --reset-meters (or --reset-optimizer: the update count restarts) starts
        # a new run from CKPT's weights: its bit-operation account starts at zero, at the first training forward
        model._reset_account = bool(safe_getattr(args, "reset_meters", False)
                                    or safe_getattr(args, "reset_optimizer", False))
        if config is not None:
            minmax_weights = bool(args.quantw) and safe_getattr(args, "estimatorw", "minmax") == "minmax"
            model.cpt = CyclicPrecision(config, (args.bitsw, args.bitsin),
                                        total=lambda: total_updates(args, task, model), minmax_weights=minmax_weights)
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = args.layernorm_eps
        if args.freeze:
            for p in model.encoder.parameters():
                p.requires_grad_(False)
        return model

    def register_classification_head(self, name, num_classes=None, inner_dim=None, **kwargs):
        super().register_classification_head(name, num_classes, inner_dim, **kwargs)
        quantize_model(self.classification_heads[name], self.quant_recipe, prefix=f"classification_heads.{name}.")
        set_int8_training(self.classification_heads[name], *self.int8_training)
        self.bitops_counter.attach(self.classification_heads[name])
        if self._sync:
            self._sync.attach(self.classification_heads[name])

    def set_quant_recipe(self, recipe: QuantRecipe) -> None:
        """Use ``recipe`` for every quantizer from now on (e.g. post-training quantization)."""
        self.quant_recipe = recipe
        apply_recipe(self, recipe)

    def forward(self, *args, **kwargs):
        if not self._points_checked:
            # after the task has added its heads: a recipe point that names nothing is most likely a typo
            self._points_checked = True
            for key in self.quant_recipe.unmatched_points(point_names(self)):
                logger.warning(f"quantization recipe: points key {key!r} matches no quantizer of this model")
        if self.training and getattr(self, "_reset_account", False):
            # the first training forward of a run that resets its meters (after the checkpoint has loaded)
            self._reset_account = False
            self.bitops_counter.reset()
        if self.training and self._sync is False:
            # fairseq has initialised distributed training before the first training forward, if at all
            self._sync = data_parallel_sync()
            if self._sync is not None:
                self._sync.attach(self)
        out = super().forward(*args, **kwargs)
        if self.training:
            if self._sync is not None:
                counter = self.bitops_counter
                counter.pending = self._sync.flush(counter.pending)
            self.bitops_counter.step(self.quant_recipe.weight, self.quant_recipe.input)
        return out

    def set_num_updates(self, num_updates):
        """fairseq's task calls this before every training step with the number of updates done."""
        super().set_num_updates(num_updates)
        self._num_updates = num_updates
        self._apply_cpt_bits()

    def train(self, mode: bool = True):
        if not mode and self.training and getattr(self, "_sync", None):
            self._sync.check(self)  # fairseq switches to evaluation for each validation
        super().train(mode)
        self._apply_cpt_bits()
        return self

    def _apply_cpt_bits(self) -> None:
        """With cyclic precision: the schedule's bits in training, the fixed evaluation bits otherwise."""
        if getattr(self, "cpt", None) is None:
            return
        w, i = self.cpt.bits(self.training, self._num_updates)
        r = self.quant_recipe
        if (r.weight.bits, r.input.bits) != (w, i):
            self.set_quant_recipe(r.with_bits(w, i))

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

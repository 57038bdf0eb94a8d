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

from ..core.schedule import CPTConfig, CPTConfigError, parse_eval_bits
from .bitops import BitOpsCounter
from .cpt import CyclicPrecision, add_cpt_args, cpt_config_from_args, total_updates
from .int8_training import add_int8_training_args, check_int8_training_args, set_int8_training
from .recipe import (
    QuantRecipe,
    add_quant_args,
    apply_recipe,
    check_quant_args,
    point_names,
    quantize_model,
    set_quant_defaults,
)

logger = logging.getLogger(__name__)

__all__ = ["QuantRobertaModel"]


@register_model("quant_roberta")
class QuantRobertaModel(RobertaModel):
    """RoBERTa whose linear layers and attention GEMM operands go through QuantMeasures (see ``layers.py``)."""

    def __init__(self, args, encoder):
        super().__init__(args, encoder)
        self.quant_recipe = QuantRecipe.from_args(args)
        self.int8_training = (getattr(args, "int8_training", None) or "off",
                              bool(getattr(args, "int8_stochastic_rounding", False)))
        self.cpt: CyclicPrecision | None = None
        self._num_updates: int | None = None
        self.bitops_counter = BitOpsCounter()
        self._points_checked = False

    @staticmethod
    def add_args(parser):
        RobertaModel.add_args(parser)
        parser.add_argument("--layernorm-eps", type=float, metavar="EPS",
                            help="epsilon of every LayerNorm (default 1e-5, fairseq's; BERT models use 1e-12)")
        add_quant_args(parser)
        add_int8_training_args(parser)
        add_cpt_args(parser)

    @classmethod
    def check_args(cls, args) -> CPTConfig | None:
        """Reject flag combinations, naming the flags (``ValueError``); ``fairseq-train`` reports it as a usage
        error (``patches/model_checks_args.py``), ``build_model`` raises it. Returns the CPT config it checked
        (``None`` without ``--cpt-config``)."""
        set_quant_defaults(args)
        check_quant_args(args)
        check_int8_training_args(args)
        eps = getattr(args, "layernorm_eps", None)
        if eps is not None and eps <= 0:
            raise ValueError(f"--layernorm-eps must be positive, got {eps}")
        config = cpt_config_from_args(args)
        if config is None:
            return None
        if getattr(args, "quant_recipe", None) or getattr(args, "quant_recipe_json", None):
            raise CPTConfigError("--cpt-config cycles the bit widths of --bitsw/--bitsin: it cannot be combined "
                                 "with --quant-recipe")
        floats = [f"--{k} {getattr(args, k)}" for k in ("formatw", "formatin") if getattr(args, k, "int") != "int"]
        if floats:
            raise CPTConfigError(f"--cpt-config cycles integer bit widths: it cannot be combined with "
                                 f"{' '.join(floats)}")
        if not (args.quantw or args.quantin):
            raise CPTConfigError("--cpt-config cycles the bit widths of quantized weights and inputs: it needs "
                                 "--quantw and/or --quantin")
        parse_eval_bits(getattr(args, "cpt_eval_bits", "max"), config)
        max_update, max_epoch = getattr(args, "max_update", 0) or 0, getattr(args, "max_epoch", 0) or 0
        if max_update <= 0 and max_epoch <= 0:
            raise CPTConfigError("--cpt-config needs the length of the run: give --max-update or --max-epoch")
        if max_epoch <= 0 and max_update < config.num_cyclic_period:
            raise CPTConfigError(f"num_cyclic_period ({config.num_cyclic_period}) in the --cpt-config file exceeds "
                                 f"--max-update ({max_update}): each cycle needs at least one update")
        return config

    @classmethod
    def build_model(cls, args, task):
        set_quant_defaults(args)
        args.layernorm_eps = getattr(args, "layernorm_eps", None) or 1e-5
        config = cls.check_args(args)
        if config is not None:
            # the saved configuration carries the schedule and the evaluation precision, so a CPT checkpoint
            # loads (evaluate.py, hub) without its JSON file and evaluates at the fixed precision
            args.cpt_schedule = config.to_json()
            args.bitsw, args.bitsin = parse_eval_bits(getattr(args, "cpt_eval_bits", "max"), config)
        if getattr(args, "quant_recipe", None) and not getattr(args, "quant_recipe_json", None):
            # saved with the checkpoint, so the model loads (evaluate.py, hub) without the recipe file
            args.quant_recipe_json = QuantRecipe.from_args(args).to_json()
        model = super().build_model(args, task)
        quantize_model(model, model.quant_recipe)
        set_int8_training(model, *model.int8_training)
        model.bitops_counter.attach(model)
        if config is not None:
            model.cpt = CyclicPrecision(config, (args.bitsw, args.bitsin),
                                        total=lambda: total_updates(args, task, model))
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
        out = super().forward(*args, **kwargs)
        if self.training:
            self.bitops_counter.step(self.quant_recipe.weight, self.quant_recipe.input)
        return out

    def set_num_updates(self, num_updates):
        """fairseq's task calls this before every training step with the number of updates done."""
        super().set_num_updates(num_updates)
        self._num_updates = num_updates
        self._apply_cpt_bits()

    def train(self, mode: bool = True):
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

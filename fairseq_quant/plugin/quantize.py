"""Model surgery: give a model every quantization point (wrapping fairseq's modules in place) and set each
point's spec from a recipe."""
from __future__ import annotations

from fairseq.modules import MultiheadAttention
from torch import nn

from ..core.quant_measure import QuantMeasure
from ..core.recipe import QuantRecipe
from ..core.spec import QuantSpec
from .layers import (
    QuantizedActivation,
    QuantizedEmbedding,
    QuantizedLayerNorm,
    QuantizedLinear,
    QuantizedMultiheadAttention,
    quantize_residuals,
)

__all__ = ["apply_recipe", "point_names", "quantize_model"]


OFF = QuantSpec()


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    return any(part in skip for part in name.split("."))


def quantize_model(model: nn.Module, recipe: QuantRecipe, skip: tuple[str, ...] = ("lm_head",),
                   prefix: str = "") -> nn.Module:
    """Give ``model`` (in place) every quantization point, then set each to its spec in ``recipe``.

    Points: fairseq MultiheadAttention (GEMM operands, scaled scores, softmax probabilities), nn.Linear (input,
    weight, output), the ``activation_fn`` attribute of any module, nn.LayerNorm (input, output), fairseq's
    transformer layers (residual sums) and nn.Embedding modules named ``embed_tokens``. Modules under a child
    named in ``skip`` stay as they are (RoBERTa's masked-LM head is not part of a fine-tuned model).
    Already-wrapped modules just get the recipe's specs. ``prefix``: the path of ``model`` inside the whole
    model, for the recipe's path patterns. Returns ``model``.
    """
    modules = [(n, m) for n, m in model.named_modules() if not _skipped(n, skip)]
    for _, module in modules:
        if isinstance(module, MultiheadAttention) and not isinstance(module, QuantizedMultiheadAttention):
            QuantizedMultiheadAttention.wrap(module, OFF, OFF, OFF, OFF)
    for name, module in modules:
        if type(module) is nn.Linear:
            QuantizedLinear.wrap(module, OFF, OFF, OFF)
        elif type(module) is nn.LayerNorm:
            QuantizedLayerNorm.wrap(module, OFF, OFF)
        elif type(module) is nn.Embedding and name.split(".")[-1] == "embed_tokens":
            QuantizedEmbedding.wrap(module, OFF)
        else:
            quantize_residuals(module, OFF)
        fn = module.__dict__.get("activation_fn")
        if callable(fn) and not isinstance(module, QuantizedActivation):
            QuantizedActivation.wrap(module, OFF, OFF)
    apply_recipe(model, recipe, prefix)
    return model


def apply_recipe(model: nn.Module, recipe: QuantRecipe, prefix: str = "") -> None:
    """Set every quantizer of ``model`` to its spec in ``recipe`` (``prefix``: ``model``'s path in the whole
    model). Raises ``RecipeError`` for a spec a point cannot take."""
    for name, q in model.named_modules():
        if isinstance(q, QuantMeasure):
            q.set_spec(recipe.spec_for(prefix + name, q.role, q.op))


def point_names(model: nn.Module) -> list[tuple[str, str]]:
    """``(path, op)`` of every quantizer of ``model``."""
    return [(n, q.op) for n, q in model.named_modules() if isinstance(q, QuantMeasure)]

"""fairseq-quant: a fairseq plugin for quantized fine-tuning and evaluation.

Load it with ``fairseq-train --user-dir fairseq_quant`` (or ``import fairseq_quant``): importing registers the
``quant_roberta`` model and its architectures, and applies the fairseq fixes under ``patches/``.
"""
import fairseq_quant_patches

fairseq_quant_patches.apply_all()

from .core.quant_measure import QuantMeasure  # noqa: E402
from .core.recipe import QuantRecipe  # noqa: E402
from .core.spec import QuantSpec  # noqa: E402
from .plugin import QuantRobertaModel  # noqa: E402  (registers quant_roberta and its architectures)
from .plugin.layers import QuantizedLinear, QuantizedMultiheadAttention, quantizers  # noqa: E402
from .plugin.options import add_quant_args, recipe_from_args, set_quant_defaults  # noqa: E402
from .plugin.quantize import apply_recipe, quantize_model  # noqa: E402

__all__ = [
    "QuantMeasure",
    "QuantRecipe",
    "QuantRobertaModel",
    "QuantSpec",
    "QuantizedLinear",
    "QuantizedMultiheadAttention",
    "add_quant_args",
    "apply_recipe",
    "quantize_model",
    "quantizers",
    "recipe_from_args",
    "set_quant_defaults",
]

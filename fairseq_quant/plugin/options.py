"""Every option of the plugin, declared once (``OPTIONS``): the argparse flags, their defaults and the architecture
defaults come from this table, and ``recipe_from_args`` turns the flags into a recipe, checking each rule that
spans several flags once. Rules on one value (a bit width, a momentum, a format name) live in ``core.spec``;
the flags' argparse types only ask it, so its message is the flag's.

Flow: ``--bitsw 4`` -> ``bits_type`` (QuantSpec's rule) -> ``args.bitsw`` -> ``recipe_from_args`` ->
``QuantSpec(format="int4")`` -> ``plugin.quantize`` sets it on every weight quantizer.
"""
from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..core.estimators import ESTIMATORS
from ..core.formats import MAX_BITS, MIN_BITS, ROUNDINGS
from ..core.jsonfiles import validated_file_type
from ..core.points import OPS
from ..core.recipe import (
    QUANT_DICT_ACTIVATIONS,
    QUANT_DICT_KEYS,
    QuantRecipe,
    RecipeError,
    load_recipe,
    parse_quant_dict,
)
from ..core.schedule import CPTConfig, CPTConfigError, load_cpt_config, parse_eval_bits
from ..core.spec import SCALINGS, QuantSpec, float_format_error, int_format

__all__ = [
    "INT8_TRAINING_MODES",
    "OPTIONS",
    "Option",
    "QUANT_DEFAULTS",
    "add_options",
    "add_quant_args",
    "bits_type",
    "recipe_from_args",
    "set_quant_defaults",
]

INT8_TRAINING_MODES = ("off", "fwd", "fwd_dgrad", "all")


def _spec_type(field: str, parse: Callable[[str], object], what: str) -> Callable[[str], object]:
    """An argparse type: ``parse`` the text, then let QuantSpec's own rule on ``field`` judge it."""
    def check(value: str):
        try:
            parsed = parse(value)
            QuantSpec(**{field: parsed})
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(f"invalid {what} {value!r}: {e}") from None
        return parsed
    return check


def _bits(value: str) -> int:
    bits = int(value, 10)
    QuantSpec(format=int_format(bits))
    return bits


def bits_type(value: str) -> int:
    """argparse type for bit widths: an integer from 2 to 16 (the spec's rule)."""
    try:
        return _bits(value)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"invalid bit width {value!r}: expected an integer from {MIN_BITS} to {MAX_BITS}") from None


def _float_format_type(value: str) -> str:
    why = float_format_error(value)
    if why:
        raise argparse.ArgumentTypeError(why)
    return value


def _format_type(value: str) -> str:
    if value == "int":
        return value
    m = re.fullmatch(r"u?int(\d+)(_sym)?", value)
    if m:
        raise argparse.ArgumentTypeError(f"{value!r} is an integer format: give 'int' here and its width with "
                                         f"--bitsw/--bitsin {m[1]}")
    return _float_format_type(value)


def _ops_type(value: str) -> str:
    ops = [o.strip() for o in value.split(",") if o.strip()]
    bad = [o for o in ops if o not in OPS]
    if bad or not ops:
        raise argparse.ArgumentTypeError(f"invalid operation(s) {bad or value!r}: expected a comma-separated list "
                                         f"of {', '.join(OPS)}")
    return ",".join(o for o in OPS if o in ops)


def _quant_dict_type(value: str) -> str:
    try:
        parse_quant_dict(value)
    except RecipeError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--quant-dict: ")) from None
    return value


def _eval_bits_type(value: str) -> str:
    try:
        parse_eval_bits(value, CPTConfig(2, 16, 2, 16, 1))
    except CPTConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def _positive_float(value: str) -> float:
    try:
        eps = float(value)
    except ValueError:
        eps = -1.0
    if not eps > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return eps


@dataclass(frozen=True)
class Option:
    """One flag: ``--name-with-dashes`` <-> ``args.name``. ``switch``: a store_true flag. ``group``: ``quant`` (the
    quantization flags every command that builds a model takes), ``train`` (meaningful only in fairseq-train:
    ``--freeze``), ``cpt``, ``int8`` and ``model``: fairseq-train's other plugin flags."""

    name: str
    default: object
    help: str
    type: Callable | None = None
    choices: tuple | None = None
    metavar: str | None = None
    switch: bool = False
    group: str = "quant"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


_FORMAT_HELP = ("'int' (default; --bitsw wide) or a floating-point format such as fp8_e4m3, fp8_e5m2, e3m2, e8m7 "
                "(bfloat16), posit8_1, posit16_1")
OPTIONS: tuple[Option, ...] = (
    Option("quantw", False, "fake-quantize the weights of every GEMM (linear layers, attention projections, head)",
           switch=True),
    Option("quantin", False, "fake-quantize every GEMM input: linear-layer inputs and the attention's q, k, softmax "
           "probabilities and v", switch=True),
    Option("bitsw", 8, f"weight bit width, an integer from {MIN_BITS} to {MAX_BITS} (default 8)", bits_type,
           metavar="N"),
    Option("bitsin", 8, f"input bit width, an integer from {MIN_BITS} to {MAX_BITS} (default 8)", bits_type,
           metavar="N"),
    Option("measurew", False, "record weight ranges without quantizing (not together with --quantw)", switch=True),
    Option("measurein", False, "record input ranges (running average, training mode) without quantizing (not "
           "together with --quantin)", switch=True),
    Option("freeze", False, "freeze the pretrained encoder (embeddings and transformer layers); train only the "
           "classification head", switch=True, group="train"),
    Option("quantw_range", "symmetric", "weight grid: symmetric around zero, or asymmetric with a zero point "
           "(default symmetric)", choices=("symmetric", "asymmetric")),
    Option("quantin_range", "asymmetric", "input grid: symmetric around zero, or asymmetric with a zero point "
           "(default asymmetric)", choices=("symmetric", "asymmetric")),
    Option("quantw_granularity", "channel", "one weight range per tensor or per output channel (default channel)",
           choices=("tensor", "channel")),
    Option("dynamic_qparams", False, "input ranges from the current batch; default: a running average, updated in "
           "training", switch=True),
    Option("qparams_momentum", 0.9, "running-average momentum for input ranges: r <- M*r + (1-M)*batch "
           "(default 0.9)", _spec_type("momentum", float, "momentum"), metavar="M"),
    Option("formatw", "int", f"weight number format: {_FORMAT_HELP}", _format_type, metavar="FMT"),
    Option("formatin", "int", "input (activation) number format, as --formatw (default 'int', --bitsin wide)",
           _format_type, metavar="FMT"),
    Option("formatw_scaling", "none", "floating-point weight formats: 'none' (default, the format's own values) or "
           "'amax' (scale each tensor, or channel, so its largest magnitude maps to the format's maximum)",
           choices=SCALINGS),
    Option("formatin_scaling", "none", "floating-point input formats: 'none' (default) or 'amax' (per tensor, from "
           "the running or current range, as FP8 training does)", choices=SCALINGS),
    Option("formatgrad", None, "round the gradient of every quantized input to this floating-point format, "
           "amax-scaled per tensor (e.g. fp8_e5m2); needs --quantin (default: full-precision gradients)",
           _float_format_type, metavar="FMT"),
    Option("quant_rounding", "nearest", "rounding of every quantizer (and of --formatgrad): nearest (ties to even, "
           "default) or stochastic", choices=ROUNDINGS),
    Option("quantize_ops", "gemm", f"operations whose tensors --quantin/--measurein reach, comma-separated from "
           f"{','.join(OPS)}: GEMM operands, the activation function's input/output, LayerNorm input/output, the "
           f"scaled attention scores (softmax input), residual sums (default gemm)", _ops_type, metavar="OPS"),
    Option("estimatorw", "minmax", "weight range estimator: minmax, percentile (--percentile), mse (the clipping "
           "range with the least quantization error, golden-section search) or mse_grid (100 candidates); in training "
           "a clipping range is searched when the bits change or every 50 forwards, as a fraction of the weight's "
           "min-max (minmax)",
           choices=tuple(ESTIMATORS)),
    Option("estimatorin", "minmax", "input range estimator, as --estimatorw, applied to each batch that updates "
           "the running range (training, or evaluate.py --calib-batches) (minmax)", choices=tuple(ESTIMATORS)),
    Option("percentile", 99.99, "the percentile estimator's P: the range is the (100-P)-th .. P-th percentile "
           "(99.99)", _spec_type("percentile", float, "percentile"), metavar="P"),
    Option("learn_ranges", False, "learn the scales (and asymmetric zero points) of quantized weights and inputs by "
           "gradient descent (LSQ), starting from the estimated ranges", switch=True),
    Option("quant_dict", None, "mixed precision by point, e.g. \"{'y': 16, 'h': 16, 'x': 16}\" or \"{'y': 'ng6', "
           f"'h': 'ngp6', 'Et': 2}}\": bit widths, or ngN / ngpN (N embedding groups, with permutation) for "
           f"{', '.join(QUANT_DICT_ACTIVATIONS)}; keys {', '.join(QUANT_DICT_KEYS)}, or patterns over quantizer paths "
           f"('*.layers.0.fc1.weight_quant': 8)", _quant_dict_type,
           metavar="DICT"),
    Option("quant_recipe", None, "a JSON recipe (see configs/recipes/): base weight/input specs, operations and "
           "per-point overrides (x, h, y, P, C, Et, operation names, or path patterns); replaces the other "
           "quantization flags", validated_file_type(load_recipe, RecipeError), metavar="JSON"),
    Option("cpt_config", None, "cyclic precision training: cycle the weight and input bit widths during training as "
           "cfg_cpt.json says (keys wbit_min, wbit_max, inbit_min, inbit_max, num_cyclic_period, optionally "
           "input_offset and schedule; see "
           "configs/cfg_cpt.json); needs --quantw and/or --quantin, and --max-update or --max-epoch; replaces "
           "--bitsw/--bitsin", validated_file_type(load_cpt_config, CPTConfigError), metavar="JSON", group="cpt"),
    Option("cpt_eval_bits", "max", "with --cpt-config: the fixed precision of validation and of the saved model, "
           "'max' (default: the top of the cycle), 'min', or weight,input bits such as 6,8", _eval_bits_type,
           metavar="max|min|W,I", group="cpt"),
    Option("int8_training", "off", "run the matmuls of every linear layer in dynamically quantized INT8 (row-wise "
           "scales): fwd (forward), fwd_dgrad (and the input gradient), all (and the weight gradient); default off",
           choices=INT8_TRAINING_MODES, group="int8"),
    Option("int8_stochastic_rounding", False, "with --int8-training fwd_dgrad/all: round the gradients to INT8 "
           "stochastically", switch=True, group="int8"),
    Option("layernorm_eps", 1e-5, "epsilon of every LayerNorm (default 1e-5, fairseq's; BERT models use 1e-12)",
           _positive_float, metavar="EPS", group="model"),
)
_BY_NAME = {o.name: o for o in OPTIONS}
QUANT_GROUPS = ("quant", "train")
# the quantization options (what evaluate.py's flags override in a checkpoint), with their defaults
QUANT_DEFAULTS = {o.name: o.default for o in OPTIONS if o.group in QUANT_GROUPS}


def add_options(parser, groups: tuple[str, ...], defaults: bool = True) -> None:
    """Add the options of ``groups`` to ``parser`` (an ArgumentParser, or the argument group fairseq hands a
    model's ``add_args``). ``defaults=False``: no defaults, so a caller sees only the flags given."""
    target = parser.add_argument_group("fairseq-quant") if isinstance(parser, argparse.ArgumentParser) else parser
    for o in OPTIONS:
        if o.group not in groups:
            continue
        default = o.default if defaults else argparse.SUPPRESS
        if o.switch:
            target.add_argument(o.flag, action="store_true", default=default, help=o.help)
        else:
            target.add_argument(o.flag, type=o.type, choices=o.choices, metavar=o.metavar, default=default,
                                help=o.help)


def add_quant_args(parser, defaults: bool = True, training: bool = True) -> None:
    """The quantization flags (``training=False`` leaves out ``--freeze``, which only fairseq-train uses)."""
    add_options(parser, QUANT_GROUPS if training else ("quant",), defaults)


def set_quant_defaults(args) -> None:
    """Fill in every option missing from ``args`` (fairseq's architecture-function convention; also old
    checkpoints, saved before an option existed)."""
    for o in OPTIONS:
        if not hasattr(args, o.name) or getattr(args, o.name) is None:
            setattr(args, o.name, o.default)


def _given(args) -> list[str]:
    """The quantization flags of ``args`` that differ from their defaults (for messages)."""
    return [_BY_NAME[k].flag for k, v in QUANT_DEFAULTS.items()
            if k not in ("quant_recipe", "freeze", "quant_dict") and getattr(args, k, v) != v]


def recipe_from_args(args) -> QuantRecipe:
    """The recipe ``args`` (a namespace or fairseq config, defaults filled in) describe, each rule that spans
    several flags checked here and only here: the recipe saved with a checkpoint (``quant_recipe_json``), else
    ``--quant-recipe`` (which replaces the other quantization flags), else the plain flags; ``--quant-dict`` adds
    its points to either. Raises RecipeError naming the flags."""
    recipe = _recipe_from_flags(args)
    _check_groups(recipe, args)
    return recipe


def _check_groups(recipe: QuantRecipe, args) -> None:
    """Embedding groups split an embedding dimension: at most one group per dimension of the model's widest."""
    dims = {k: getattr(args, k, None) for k in ("encoder_embed_dim", "decoder_embed_dim")}
    dims = {k: d for k, d in dims.items() if isinstance(d, int) and not isinstance(d, bool)}
    if not dims:
        return
    name, dim = max(dims.items(), key=lambda kv: kv[1])
    for key, entry in recipe.points:
        groups = entry.get("groups", 0) if isinstance(entry, dict) else 0
        if groups > dim:
            raise RecipeError(f"quantization point {key!r}: {groups} embedding groups, but the model's embedding "
                              f"dimension (--{name.replace('_', '-')}) is {dim}: give ngN or ngpN with N from 1 to "
                              f"{dim}")


def _recipe_from_flags(args) -> QuantRecipe:
    for q, m in (("quantw", "measurew"), ("quantin", "measurein")):
        if getattr(args, q, False) and getattr(args, m, False):
            raise RecipeError(f"--{q} and --{m} cannot be combined: --{m} records ranges without quantizing, --{q} "
                              f"quantizes (and records ranges itself); choose one")
    saved = getattr(args, "quant_recipe_json", None)
    if saved:  # the quant-dict points are in it already
        import json

        return QuantRecipe.from_dict(json.loads(saved), source="the checkpoint's quant_recipe_json", saved=True)
    extra = tuple(parse_quant_dict(args.quant_dict)) if getattr(args, "quant_dict", None) else ()
    if getattr(args, "quant_recipe", None):
        given = _given(args)
        if given:
            raise RecipeError(f"--quant-recipe replaces the other quantization flags; put {', '.join(given)} into "
                              f"the recipe instead")
        recipe = load_recipe(args.quant_recipe)
        return replace(recipe, points=recipe.points + extra)
    if getattr(args, "formatgrad", None) and not args.quantin:
        raise RecipeError("--formatgrad rounds the gradients of quantized inputs: it needs --quantin")
    if args.learn_ranges and not (args.quantw or args.quantin):
        raise RecipeError("--learn-ranges learns the scales of quantized weights and inputs: it needs --quantw "
                          "and/or --quantin (--measurew/--measurein only record ranges)")
    if args.learn_ranges and "int" not in (args.formatw, args.formatin):
        raise RecipeError("--learn-ranges learns integer grids' scales; it needs --formatw or --formatin int")

    def spec(role: str, **fields) -> QuantSpec:
        try:
            return QuantSpec(**fields)
        except ValueError as e:  # the spec's own rule, said with the flags of this role
            flags = ("--bitsw, --formatw, --estimatorw" if role == "weight"
                     else "--bitsin, --formatin, --estimatorin, --qparams-momentum")
            raise RecipeError(f"{role} flags ({flags}): {e}") from None

    def mode(q: str, m: str) -> str:
        return "quantize" if getattr(args, q) else "measure" if getattr(args, m) else "off"

    weight = spec(
        "weight",
        mode=mode("quantw", "measurew"),
        format=int_format(args.bitsw) if args.formatw == "int" else args.formatw,
        symmetric=args.quantw_range == "symmetric",
        per_channel=args.quantw_granularity == "channel",
        dynamic=True,  # a weight's range is its own current min/max: exact, no lag
        scaling=args.formatw_scaling,
        rounding=args.quant_rounding,
        estimator=args.estimatorw,
        percentile=args.percentile,
        learned=args.learn_ranges and args.formatw == "int" and bool(args.quantw),  # measuring learns nothing
    )
    inp = spec(
        "input",
        mode=mode("quantin", "measurein"),
        format=int_format(args.bitsin) if args.formatin == "int" else args.formatin,
        symmetric=args.quantin_range == "symmetric",
        dynamic=args.dynamic_qparams,
        momentum=args.qparams_momentum,
        scaling=args.formatin_scaling,
        rounding=args.quant_rounding,
        grad_format=args.formatgrad,
        estimator=args.estimatorin,
        percentile=args.percentile,
        learned=args.learn_ranges and args.formatin == "int" and bool(args.quantin),
    )
    return QuantRecipe(weight=weight, input=inp, ops=tuple(args.quantize_ops.split(",")), points=extra)

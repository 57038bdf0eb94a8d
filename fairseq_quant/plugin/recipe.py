"""Recipes: which quantization point gets which QuantSpec, and applying that to a model.

A recipe has a base spec for weights and one for inputs (every activation point), the set of operations
(``--quantize-ops``) whose points take them, and ``points``: overrides for named points, by the short names of
Bondarenko et al. (``x`` FFN input, ``h`` FFN output, ``y`` FFN residual sum, ``P`` pooler, ``C`` classifier,
``Et`` token embeddings), by operation, or by glob patterns over quantizer paths
(``*.layers.0.fc1.weight_quant``). The command-line flags (``--quantw --bitsw 8 --quantin --bitsin 8`` ...) are
the simplest recipe; ``--quant-recipe FILE.json`` (see ``configs/recipes/``) or ``QuantRecipe.from_dict`` give
the rest. The softmax probabilities take the input spec, on an unsigned grid for integers.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import re
from dataclasses import dataclass, field, fields, replace

from fairseq.modules import MultiheadAttention
from torch import nn

from ..core.formats import MAX_BITS, MIN_BITS, ROUNDINGS, get_format
from ..core.jsonfiles import validated_file_type
from ..core.quant_measure import QuantMeasure
from ..core.spec import ESTIMATORS, MODES, SCALINGS, QuantSpec, float_format_error
from .layers import (
    QuantizedActivation,
    QuantizedEmbedding,
    QuantizedLayerNorm,
    QuantizedLinear,
    QuantizedMultiheadAttention,
    quantize_residuals,
)

__all__ = [
    "OPS",
    "POINT_GROUPS",
    "QUANT_DEFAULTS",
    "QuantRecipe",
    "RecipeError",
    "SHORT_NAMES",
    "add_quant_args",
    "apply_recipe",
    "check_quant_args",
    "describe",
    "load_recipe",
    "quantize_model",
]

logger = logging.getLogger(__name__)

# the operations --quantize-ops chooses from
OPS = ("gemm", "act", "norm", "attn_scaling", "residual")
# every operation group a quantizer belongs to: OPS, plus linear-layer outputs and token embeddings, which are
# quantized only where a recipe names them
POINT_GROUPS = OPS + ("output", "embedding")
# the short names of quantization points (Bondarenko et al., EMNLP 2021) -> quantizer path patterns
SHORT_NAMES = {
    "x": ("*.fc1.input_quant",),
    "h": ("*.fc2.output_quant",),
    "y": ("*.ffn_residual_quant",),
    "P": ("*classification_heads.*.dense.input_quant", "*classification_heads.*.dense.weight_quant"),
    "C": ("*classification_heads.*.out_proj.input_quant", "*classification_heads.*.out_proj.weight_quant"),
    "Et": ("*embed_tokens.weight_quant",),
}


class RecipeError(ValueError):
    """A bad recipe (file, dictionary or flags); the message names the key and the allowed values."""


def bits_type(value: str) -> int:
    """argparse type for bit widths: an integer from 2 to 16."""
    try:
        bits = int(value, 10)
    except (TypeError, ValueError):
        bits = None
    if bits is None or not MIN_BITS <= bits <= MAX_BITS:
        raise argparse.ArgumentTypeError(
            f"invalid bit width {value!r}: expected an integer from {MIN_BITS} to {MAX_BITS}"
        )
    return bits


def momentum_type(value: str) -> float:
    """argparse type for the running-average momentum: a number in [0, 1)."""
    try:
        m = float(value)
    except (TypeError, ValueError):
        m = None
    if m is None or not 0.0 <= m < 1.0:
        raise argparse.ArgumentTypeError(f"invalid momentum {value!r}: expected a number in [0, 1)")
    return m


class _StoreTrueUnless(argparse.Action):
    """``store_true`` that refuses to be combined with its partner flag (checked whichever comes second)."""

    def __init__(self, option_strings, dest, partner: str, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)
        self.partner = partner

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.partner, False) is True:
            parser.error(_conflict_message(self.dest, self.partner))
        setattr(namespace, self.dest, True)


def _conflict_message(a: str, b: str) -> str:
    q, m = sorted((a, b), key=lambda k: k.startswith("measure"))
    return (f"--{q} and --{m} cannot be combined: --{m} records ranges without quantizing, --{q} quantizes "
            f"(and records ranges itself); choose one")


# Every quantization option with its default; architectures fill these in (fairseq's convention), so
# checkpoints trained without the plugin (e.g. the published roberta.base) build with quantization off.
QUANT_DEFAULTS = {
    "quantw": False,
    "quantin": False,
    "bitsw": 8,
    "bitsin": 8,
    "measurew": False,
    "measurein": False,
    "freeze": False,
    "quantw_range": "symmetric",
    "quantin_range": "asymmetric",
    "quantw_granularity": "channel",
    "dynamic_qparams": False,
    "qparams_momentum": 0.9,
    "formatw": "int",
    "formatin": "int",
    "formatw_scaling": "none",
    "formatin_scaling": "none",
    "formatgrad": None,
    "quant_rounding": "nearest",
    "quantize_ops": "gemm",
    "quant_recipe": None,
    "estimatorw": "minmax",
    "estimatorin": "minmax",
    "percentile": 99.99,
    "learn_ranges": False,
    "quant_dict": None,
}


def float_format_type(value: str) -> str:
    """argparse type for --formatgrad: a floating-point format name."""
    why = float_format_error(value)
    if why:
        raise argparse.ArgumentTypeError(why)
    return value


def format_type(value: str) -> str:
    """argparse type for --formatw/--formatin: ``int`` (the width from --bitsw/--bitsin) or a floating-point format
    name."""
    return value if value == "int" else float_format_type(value)


def ops_type(value: str) -> str:
    """argparse type for --quantize-ops: a comma-separated subset of ``OPS``; returns it normalised."""
    ops = [o.strip() for o in value.split(",") if o.strip()]
    bad = [o for o in ops if o not in OPS]
    if bad or not ops:
        raise argparse.ArgumentTypeError(f"invalid operation(s) {bad or value!r}: expected a comma-separated list "
                                         f"of {', '.join(OPS)}")
    return ",".join(o for o in OPS if o in ops)


def percentile_type(value: str) -> float:
    """argparse type for --percentile: a number in (50, 100]."""
    try:
        p = float(value)
    except (TypeError, ValueError):
        p = None
    if p is None or not 50.0 < p <= 100.0:
        raise argparse.ArgumentTypeError(f"invalid percentile {value!r}: expected a number in (50, 100], e.g. 99.99")
    return p


# --quant-dict: points whose value may be an embedding-group spec (activations with an embedding dimension);
# "residual" names both residual sums of every layer (y is the FFN one)
QUANT_DICT_ACTIVATIONS = ("x", "h", "y", "residual")
QUANT_DICT_KEYS = tuple(SHORT_NAMES) + ("residual",)


def parse_quant_dict(value) -> list[tuple[str, dict]]:
    """``--quant-dict`` (a Python/JSON dict literal, or a dict) -> recipe ``points`` entries.

    Keys are short names (``SHORT_NAMES``) or ``residual`` (both residual sums of every layer); values are bit
    widths (2..16) or, for ``x``, ``h``, ``y`` and ``residual``, ``ngN`` (N embedding groups) or ``ngpN`` (N groups
    with range-based permutation), at the input bit width.
    ``{'y': 'ngp6', 'Et': 2}`` -> ``[('y', {'groups': 6, 'permute': True}), ('Et', {'bits': 2})]``.
    Raises ``RecipeError`` naming the key or value and the allowed ones.
    """
    import ast

    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise RecipeError(f"--quant-dict: {value!r} is not a dictionary literal such as \"{{'y': 16}}\"") from None
    if not isinstance(value, dict):
        raise RecipeError(f"--quant-dict: expected a dictionary such as {{'y': 16, 'h': 'ng6'}}, got {value!r}")
    points = []
    for key, v in value.items():
        if key not in QUANT_DICT_KEYS:
            raise RecipeError(f"--quant-dict: unknown point {key!r}; allowed: {', '.join(QUANT_DICT_KEYS)}")
        if isinstance(v, int) and not isinstance(v, bool) and MIN_BITS <= v <= MAX_BITS:
            points.append((key, {"bits": v}))
            continue
        m = re.fullmatch(r"ng(p?)(\d+)", v) if isinstance(v, str) else None
        if m and key in QUANT_DICT_ACTIVATIONS and int(m[2]) >= 1:
            points.append((key, {"groups": int(m[2]), "permute": bool(m[1])}))
            continue
        allowed = f"an integer from {MIN_BITS} to {MAX_BITS}" + (
            ", ngN or ngpN (N >= 1 embedding groups, p: permuted)" if key in QUANT_DICT_ACTIVATIONS else "")
        raise RecipeError(f"--quant-dict: {key!r}: {v!r} is not a valid value; allowed: {allowed}")
    return points


def quant_dict_type(value: str) -> str:
    """argparse type for --quant-dict: validated now, kept as the string given."""
    try:
        parse_quant_dict(value)
    except RecipeError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--quant-dict: ")) from None
    return value


def recipe_file_type(value: str) -> str:
    """argparse type for --quant-recipe: the path of a valid recipe file (validated before anything is built)."""
    return validated_file_type(load_recipe, RecipeError)(value)


def add_quant_args(parser: argparse.ArgumentParser, defaults: bool = True, training: bool = True) -> None:
    """Add the quantization flags to ``parser`` (a model's ``add_args``, or evaluate.py's parser).

    With ``defaults=False`` no defaults are set, so a caller sees only the flags given on its command line;
    ``training=False`` leaves out the flags that only mean something in training (``--freeze``).
    """
    d = QUANT_DEFAULTS if defaults else {k: argparse.SUPPRESS for k in QUANT_DEFAULTS}
    is_parser = isinstance(parser, argparse.ArgumentParser)  # fairseq hands models an argument group
    g = parser.add_argument_group("quantization (fairseq-quant)") if is_parser else parser
    g.add_argument("--quantw", action=_StoreTrueUnless, partner="measurew", default=d["quantw"],
                   help="fake-quantize the weights of every GEMM (linear layers, attention projections, head)")
    g.add_argument("--quantin", action=_StoreTrueUnless, partner="measurein", default=d["quantin"],
                   help="fake-quantize every GEMM input: linear-layer inputs and the attention's q, k, "
                        "softmax probabilities and v")
    g.add_argument("--bitsw", type=bits_type, metavar="N", default=d["bitsw"],
                   help=f"weight bit width, an integer from {MIN_BITS} to {MAX_BITS} (default 8)")
    g.add_argument("--bitsin", type=bits_type, metavar="N", default=d["bitsin"],
                   help=f"input bit width, an integer from {MIN_BITS} to {MAX_BITS} (default 8)")
    g.add_argument("--measurew", action=_StoreTrueUnless, partner="quantw", default=d["measurew"],
                   help="record weight ranges without quantizing (not together with --quantw)")
    g.add_argument("--measurein", action=_StoreTrueUnless, partner="quantin", default=d["measurein"],
                   help="record input ranges (running average, training mode) without quantizing "
                        "(not together with --quantin)")
    if training:
        g.add_argument("--freeze", action="store_true", default=d["freeze"],
                       help="freeze the pretrained encoder (embeddings and transformer layers); train only the "
                            "classification head")
    g.add_argument("--quantw-range", choices=["symmetric", "asymmetric"], default=d["quantw_range"],
                   help="weight grid: symmetric around zero, or asymmetric with a zero point (default symmetric)")
    g.add_argument("--quantin-range", choices=["symmetric", "asymmetric"], default=d["quantin_range"],
                   help="input grid: symmetric around zero, or asymmetric with a zero point (default asymmetric)")
    g.add_argument("--quantw-granularity", choices=["tensor", "channel"], default=d["quantw_granularity"],
                   help="one weight range per tensor or per output channel (default channel)")
    g.add_argument("--dynamic-qparams", action="store_true", default=d["dynamic_qparams"],
                   help="input ranges from the current batch; default: a running average, updated in training")
    g.add_argument("--qparams-momentum", type=momentum_type, metavar="M", default=d["qparams_momentum"],
                   help="running-average momentum for input ranges: r <- M*r + (1-M)*batch (default 0.9)")
    g.add_argument("--formatw", type=format_type, metavar="FMT", default=d["formatw"],
                   help="weight number format: 'int' (default; --bitsw wide) or a floating-point format such as "
                        "fp8_e4m3, fp8_e5m2, e3m2, e8m7 (bfloat16), posit8_1, posit16_1")
    g.add_argument("--formatin", type=format_type, metavar="FMT", default=d["formatin"],
                   help="input (activation) number format, as --formatw (default 'int', --bitsin wide)")
    g.add_argument("--formatw-scaling", choices=SCALINGS, default=d["formatw_scaling"],
                   help="floating-point weight formats: 'none' (default, the format's own values) or 'amax' "
                        "(scale each tensor, or channel, so its largest magnitude maps to the format's maximum)")
    g.add_argument("--formatin-scaling", choices=SCALINGS, default=d["formatin_scaling"],
                   help="floating-point input formats: 'none' (default) or 'amax' (per tensor, from the "
                        "running or current range, as FP8 training does)")
    g.add_argument("--formatgrad", type=float_format_type, metavar="FMT", default=d["formatgrad"],
                   help="round the gradient of every quantized input to this floating-point format, amax-scaled "
                        "per tensor (e.g. fp8_e5m2); needs --quantin (default: full-precision gradients)")
    g.add_argument("--quant-rounding", choices=ROUNDINGS, default=d["quant_rounding"],
                   help="rounding of every quantizer (and of --formatgrad): nearest (ties to even, default) or "
                        "stochastic")
    g.add_argument("--quantize-ops", type=ops_type, metavar="OPS", default=d["quantize_ops"],
                   help=f"operations whose tensors --quantin/--measurein reach, comma-separated from {','.join(OPS)}: "
                        "GEMM operands, the activation function's input/output, LayerNorm input/output, the scaled "
                        "attention scores (softmax input), residual sums (default gemm)")
    g.add_argument("--estimatorw", choices=ESTIMATORS, default=d["estimatorw"],
                   help="weight range estimator: minmax, percentile (--percentile), mse (the clipping range with the "
                        "least quantization error, golden-section search) or mse_grid (100 candidates) (minmax)")
    g.add_argument("--estimatorin", choices=ESTIMATORS, default=d["estimatorin"],
                   help="input range estimator, as --estimatorw, applied to each batch that updates the running "
                        "range (training, or evaluate.py --calib-batches) (minmax)")
    g.add_argument("--percentile", type=percentile_type, metavar="P", default=d["percentile"],
                   help="the percentile estimator's P: the range is the (100-P)-th .. P-th percentile (99.99)")
    g.add_argument("--learn-ranges", action="store_true", default=d["learn_ranges"],
                   help="learn the scales (and asymmetric zero points) of quantized weights and inputs by gradient "
                        "descent (LSQ), starting from the estimated ranges")
    g.add_argument("--quant-dict", type=quant_dict_type, metavar="DICT", default=d["quant_dict"],
                   help="mixed precision by point, e.g. \"{'y': 16, 'h': 16, 'x': 16}\" or \"{'y': 'ng6', 'h': "
                        "'ngp6', 'Et': 2}\": bit widths, or ngN / ngpN (N embedding groups, with permutation) for "
                        f"{', '.join(QUANT_DICT_ACTIVATIONS)}; keys {', '.join(QUANT_DICT_KEYS)}")
    g.add_argument("--quant-recipe", type=recipe_file_type, metavar="JSON", default=d["quant_recipe"],
                   help="a JSON recipe (see configs/recipes/): base weight/input specs, operations and per-point "
                        "overrides (x, h, y, P, C, Et, operation names, or path patterns); replaces the other "
                        "quantization flags")


def set_quant_defaults(args) -> None:
    """Fill in every quantization option missing from ``args`` (fairseq's architecture-function convention)."""
    for key, value in QUANT_DEFAULTS.items():
        if not hasattr(args, key) or getattr(args, key) is None:
            setattr(args, key, value)


def check_quant_args(args) -> None:
    """Reject combinations that make no sense, naming the flags. Raises ``ValueError``."""
    for q, m in (("quantw", "measurew"), ("quantin", "measurein")):
        if getattr(args, q, False) and getattr(args, m, False):
            raise ValueError(_conflict_message(q, m))
    for key in ("bitsw", "bitsin"):
        value = getattr(args, key, 8)
        if isinstance(value, bool) or not isinstance(value, int) or not MIN_BITS <= value <= MAX_BITS:
            raise ValueError(f"--{key} must be an integer from {MIN_BITS} to {MAX_BITS}, got {value!r}")
    if getattr(args, "quant_recipe", None) or getattr(args, "quant_recipe_json", None):
        given = [k for k in QUANT_DEFAULTS if k not in ("quant_recipe", "freeze", "quant_dict")
                 and getattr(args, k, QUANT_DEFAULTS[k]) != QUANT_DEFAULTS[k]]
        if given:
            raise ValueError(f"--quant-recipe replaces the other quantization flags; put "
                             f"{', '.join('--' + k.replace('_', '-') for k in given)} into the recipe instead")
        return
    for key in ("formatw", "formatin"):
        try:
            format_type(getattr(args, key, "int"))
        except argparse.ArgumentTypeError as e:
            raise ValueError(f"--{key}: {e}") from None
    if getattr(args, "formatgrad", None) and not getattr(args, "quantin", False):
        raise ValueError("--formatgrad rounds the gradients of quantized inputs: it needs --quantin")
    try:
        ops_type(getattr(args, "quantize_ops", "gemm"))
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"--quantize-ops: {e}") from None
    if getattr(args, "estimatorin", "minmax").startswith("mse") and getattr(args, "formatin", "int") != "int" or \
            getattr(args, "estimatorw", "minmax").startswith("mse") and getattr(args, "formatw", "int") != "int":
        raise ValueError("--estimatorw/--estimatorin mse and mse_grid search integer grids; floating-point formats "
                         "(--formatw/--formatin) use minmax or percentile")
    if getattr(args, "learn_ranges", False) and "int" not in (getattr(args, "formatw", "int"),
                                                              getattr(args, "formatin", "int")):
        raise ValueError("--learn-ranges learns integer grids' scales; it needs --formatw or --formatin int")


# The keys a spec takes in a recipe file or dictionary, with what they mean.
SPEC_KEYS = {
    "mode": f"one of {', '.join(MODES)}",
    "format": "'int', intN / uintN (N = 2..16), or a floating-point format such as fp8_e4m3, e8m7, posit8_1",
    "bits": f"integer width of an 'int' format, {MIN_BITS}..{MAX_BITS}",
    "range": "symmetric or asymmetric (integer grids)",
    "granularity": "tensor or channel (channel: weights only)",
    "dynamic": "true (ranges from the current tensor) or false (running average)",
    "momentum": "running-average momentum in [0, 1)",
    "scaling": f"one of {', '.join(SCALINGS)} (floating-point formats)",
    "rounding": f"one of {', '.join(ROUNDINGS)}",
    "grad": "a floating-point format for the gradient, or null",
    "estimator": f"one of {', '.join(ESTIMATORS)}",
    "percentile": "the percentile estimator's P in (50, 100]",
    "groups": "number of embedding groups of an activation, 0 for none",
    "permute": "true: embedding groups of dimensions with similar ranges",
    "learned": "true: scale and zero point learned by gradient descent (LSQ)",
}
RECIPE_KEYS = ("weight", "input", "ops", "points")


def _spec_fields(entry, where: str) -> dict:
    """A recipe spec entry (``{"format": "int4", "granularity": "channel"}``) -> QuantSpec field changes."""
    if not isinstance(entry, dict):
        raise RecipeError(f"{where}: expected an object with keys from {', '.join(SPEC_KEYS)}, got {entry!r}")
    out = {}
    for key, value in entry.items():
        if key not in SPEC_KEYS:
            raise RecipeError(f"{where}: unknown key {key!r}; allowed: " +
                              "; ".join(f"{k} ({v})" for k, v in SPEC_KEYS.items()))
        if key == "format":
            fmt = None
            if isinstance(value, str) and value != "int":
                try:
                    fmt = get_format(value)
                except ValueError as e:
                    raise RecipeError(f"{where}.format: {e}") from None
            if fmt is not None and hasattr(fmt, "signed"):  # intN / uintN / intN_sym
                out.update(format="int", bits=fmt.bits, signed=fmt.signed)
                if fmt.symmetric:
                    out["symmetric"] = True
            else:
                out["format"] = value
        elif key == "range":
            if value not in ("symmetric", "asymmetric"):
                raise RecipeError(f"{where}.range: expected symmetric or asymmetric, got {value!r}")
            out["symmetric"] = value == "symmetric"
        elif key == "granularity":
            if value not in ("tensor", "channel"):
                raise RecipeError(f"{where}.granularity: expected tensor or channel, got {value!r}")
            out["per_channel"] = value == "channel"
        else:
            out[{"grad": "grad_format"}.get(key, key)] = value
    try:
        QuantSpec(**out)  # validate the values alone
    except (ValueError, TypeError) as e:
        raise RecipeError(f"{where}: {e}") from None
    return out


def _is_pattern(key: str) -> bool:
    return any(c in key for c in ".*?[")


def _point_matches(key: str, name: str, op: str) -> bool:
    if key in SHORT_NAMES:
        return any(fnmatch.fnmatchcase(name, p) for p in SHORT_NAMES[key])
    if key in POINT_GROUPS:
        return op == key
    return fnmatch.fnmatchcase(name, key)


@dataclass(frozen=True)
class QuantRecipe:
    """Which spec each quantization point of a model takes.

    weight / input: the base specs of weight points and of activation points (the softmax probabilities use
        ``probs``: the input spec on an unsigned grid).
    ops: the operation groups (from ``OPS``) whose points take the base specs; the others are off.
    points: ``(key, field changes)`` pairs applied in order to the points ``key`` names — a short name
        (``SHORT_NAMES``), an operation group (``POINT_GROUPS``) or a glob over quantizer paths. A named point
        takes its role's base spec (so it is quantized when weights or inputs are) with the changes applied, even
        when its operation is not in ``ops``; ``{"mode": "off"}`` turns points off.
    """

    weight: QuantSpec
    input: QuantSpec
    ops: tuple[str, ...] = ("gemm",)
    points: tuple[tuple[str, dict], ...] = field(default=(), compare=True)

    def __post_init__(self) -> None:
        bad = [o for o in self.ops if o not in OPS]
        if bad:
            raise RecipeError(f"ops: unknown operation(s) {bad}; allowed: {', '.join(OPS)}")

    @property
    def probs(self) -> QuantSpec:
        return self.input.replace(signed=False, symmetric=True) if self.input.is_int else self.input

    def with_bits(self, weight_bits: int, input_bits: int) -> QuantRecipe:
        """The same recipe with other base bit widths (cyclic precision)."""
        return replace(self, weight=self.weight.replace(bits=weight_bits), input=self.input.replace(bits=input_bits))

    def spec_for(self, name: str, role: str, op: str) -> QuantSpec:
        """The spec of the quantizer at path ``name`` with this ``role`` (weight, input, probs) and ``op``."""
        base = {"weight": self.weight, "input": self.input, "probs": self.probs}[role]
        if role != "weight" or op == "embedding":  # token embeddings: one range for the table unless named
            base = base.replace(per_channel=False)
        spec = base if op in self.ops else base.replace(mode="off")
        named = False
        for key, changes in self.points:
            if _point_matches(key, name, op):
                if changes.get("per_channel") and role != "weight":
                    raise RecipeError(f"points.{key}: granularity 'channel' is for weights, and {name} quantizes "
                                      f"an activation")
                if changes.get("groups") and role == "weight":
                    raise RecipeError(f"points.{key}: embedding groups are for activations, and {name} quantizes "
                                      f"a weight")
                spec = (spec if named else base).replace(**changes)
                named = True
        if spec.mode == "off" and (spec.learned or spec.groups):
            spec = spec.replace(learned=False, groups=0, permute=False)  # an off point needs no parameters
        return spec

    def unmatched_points(self, names: list[tuple[str, str]]) -> list[str]:
        """The ``points`` keys that name none of ``names`` (``(path, op)`` pairs): likely typos."""
        return [key for key, _ in self.points if not any(_point_matches(key, n, op) for n, op in names)]

    @classmethod
    def from_dict(cls, data, source: str = "recipe") -> QuantRecipe:
        """A recipe from a dictionary such as a recipe file holds::

            {"weight": {"format": "fp8_e4m3", "scaling": "amax"},
             "input": {"format": "fp8_e4m3", "scaling": "amax", "grad": "fp8_e5m2"},
             "ops": ["gemm", "act", "norm"],
             "points": {"y": {"format": "int16"}, "*.layers.0.*": {"mode": "off"}}}

        ``weight`` and ``input`` entries default to ``mode: quantize`` (an absent one: off); weights default to
        per-channel symmetric ranges of the current tensor, inputs to per-tensor asymmetric running ranges.
        Raises ``RecipeError`` naming ``source`` and the offending key.
        """
        if not isinstance(data, dict):
            raise RecipeError(f"{source}: expected a JSON object with keys {', '.join(RECIPE_KEYS)}")
        unknown = [k for k in data if k not in RECIPE_KEYS]
        if unknown:
            raise RecipeError(f"{source}: unknown key {unknown[0]!r}; allowed: {', '.join(RECIPE_KEYS)}")
        bases = {"weight": QuantSpec(per_channel=True, dynamic=True), "input": QuantSpec(symmetric=False)}
        specs = {}
        for role, base in bases.items():
            entry = data.get(role)
            changes = {} if entry is None else {"mode": "quantize", **_spec_fields(entry, f"{source}: {role}")}
            if role == "input" and changes.get("per_channel"):
                raise RecipeError(f"{source}: input.granularity: 'channel' is for weights; inputs are per tensor")
            if changes.get("groups"):
                raise RecipeError(f"{source}: {role}.groups: embedding groups are set per activation point; name "
                                  f"them in points (e.g. \"y\": {{\"groups\": 6}})")
            specs[role] = base.replace(**changes)
        ops = data.get("ops", ["gemm"])
        if isinstance(ops, str):
            ops = [o.strip() for o in ops.split(",")]
        if not isinstance(ops, list) or not all(o in OPS for o in ops):
            raise RecipeError(f"{source}: ops: expected a list from {', '.join(OPS)}, got {ops!r}")
        points = data.get("points", {})
        if not isinstance(points, dict):
            raise RecipeError(f"{source}: points: expected an object mapping point names to specs")
        parsed = []
        for key, entry in points.items():
            if not (key in SHORT_NAMES or key in POINT_GROUPS or _is_pattern(key)):
                raise RecipeError(f"{source}: points: unknown point {key!r}; allowed: short names "
                                  f"{', '.join(SHORT_NAMES)}, operations {', '.join(POINT_GROUPS)}, or a path "
                                  f"pattern such as '*.layers.0.fc1.weight_quant'")
            changes = _spec_fields(entry, f"{source}: points.{key}")
            if changes.get("per_channel") and (key in SHORT_NAMES and key not in ("P", "C", "Et")
                                               or key in POINT_GROUPS and key not in ("gemm", "embedding")):
                raise RecipeError(f"{source}: points.{key}.granularity: 'channel' is for weights; {key} "
                                  f"quantizes activations")
            parsed.append((key, changes))
        return cls(weight=specs["weight"], input=specs["input"], ops=tuple(o for o in OPS if o in ops),
                   points=tuple(parsed))

    def to_dict(self) -> dict:
        """The recipe as ``from_dict`` reads it (saved with checkpoints; ``points`` keep their order)."""
        def spec_dict(changes: dict) -> dict:
            out = {}
            for k, v in changes.items():
                if k == "symmetric":
                    out["range"] = "symmetric" if v else "asymmetric"
                elif k == "per_channel":
                    out["granularity"] = "channel" if v else "tensor"
                elif k == "grad_format":
                    out["grad"] = v
                elif k == "signed":
                    out["format"] = f"{'' if v else 'u'}int{changes.get('bits', 8)}"
                elif not (k == "format" and v == "int" and "signed" in changes):
                    out[k] = v
            return out

        def full(spec: QuantSpec) -> dict:
            return spec_dict({f.name: getattr(spec, f.name) for f in fields(spec)})

        return {"weight": full(self.weight), "input": full(self.input), "ops": list(self.ops),
                "points": {k: spec_dict(c) for k, c in self.points}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_args(cls, args) -> QuantRecipe:
        """The recipe ``args`` (a namespace or fairseq config) describe: the recipe saved with a checkpoint
        (``quant_recipe_json``), else ``--quant-recipe``, else the plain flags."""
        set_quant_defaults(args)
        check_quant_args(args)
        saved = getattr(args, "quant_recipe_json", None)
        if saved:  # the quant-dict points are in it already
            return cls.from_dict(json.loads(saved), source="the checkpoint's quant_recipe_json")
        extra = tuple(parse_quant_dict(args.quant_dict)) if getattr(args, "quant_dict", None) else ()
        if getattr(args, "quant_recipe", None):
            recipe = load_recipe(args.quant_recipe)
            return replace(recipe, points=recipe.points + extra)

        def mode(q: str, m: str) -> str:
            return "quantize" if getattr(args, q) else "measure" if getattr(args, m) else "off"

        weight = QuantSpec(
            mode=mode("quantw", "measurew"),
            bits=args.bitsw,
            symmetric=args.quantw_range == "symmetric",
            per_channel=args.quantw_granularity == "channel",
            dynamic=True,  # a weight's range is its own current min/max: exact, no lag
            format=args.formatw,
            scaling=args.formatw_scaling,
            rounding=args.quant_rounding,
            estimator=args.estimatorw,
            percentile=args.percentile,
            learned=args.learn_ranges and args.formatw == "int",
        )
        inp = QuantSpec(
            mode=mode("quantin", "measurein"),
            bits=args.bitsin,
            symmetric=args.quantin_range == "symmetric",
            dynamic=args.dynamic_qparams,
            momentum=args.qparams_momentum,
            format=args.formatin,
            scaling=args.formatin_scaling,
            rounding=args.quant_rounding,
            grad_format=args.formatgrad,
            estimator=args.estimatorin,
            percentile=args.percentile,
            learned=args.learn_ranges and args.formatin == "int",
        )
        return cls(weight=weight, input=inp, ops=tuple(args.quantize_ops.split(",")), points=extra)


def describe(recipe: QuantRecipe) -> str:
    """Short name of a recipe: ``W8A8``, ``W4A32``, ``FP32``, ``W:fp8_e4m3 A:posit8_1``, with ``+act,norm`` for
    the operations beyond GEMMs and ``+points`` when a recipe names points."""
    def name(spec):
        if spec.mode != "quantize":
            return "32"
        return str(spec.bits) if spec.is_int else ":" + spec.grid_name

    w, a = name(recipe.weight), name(recipe.input)
    text = "FP32" if w == a == "32" else f"W{w}A{a}" if ":" not in w + a else f"W{w} A{a}"
    extra = [o for o in recipe.ops if o != "gemm"]
    if extra and recipe.input.mode == "quantize":
        text += "+" + ",".join(extra)
    if recipe.points:
        text += "+points"
    return text


def load_recipe(path: str) -> QuantRecipe:
    """Read and validate the recipe file at ``path``. Raises ``RecipeError`` naming the file and the key."""
    if not os.path.isfile(path):
        raise RecipeError(f"--quant-recipe: no such file: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise RecipeError(f"--quant-recipe: {path} is not valid JSON: {e}") from None
    return QuantRecipe.from_dict(data, source=path)


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

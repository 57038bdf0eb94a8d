"""Recipes: which quantization point gets which QuantSpec, and applying that to a model.

The command-line flags (``--quantw --bitsw 8 --quantin --bitsin 8`` ...) are the simplest recipe: one spec for
every weight and one for every GEMM input (activations, attention operands); the softmax probabilities take the
input spec on an unsigned grid, since they are non-negative.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from fairseq.modules import MultiheadAttention
from torch import nn

from .formats import MAX_BITS, MIN_BITS
from .layers import QuantizedLinear, QuantizedMultiheadAttention
from .quant_measure import QuantMeasure
from .spec import QuantSpec

__all__ = ["QuantRecipe", "add_quant_args", "check_quant_args", "quantize_model", "apply_recipe", "QUANT_DEFAULTS"]


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
}


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


@dataclass(frozen=True)
class QuantRecipe:
    """One spec for all weights, one for all GEMM inputs; the softmax probabilities use ``probs``."""

    weight: QuantSpec
    input: QuantSpec

    @property
    def probs(self) -> QuantSpec:
        return self.input.replace(signed=False, symmetric=True)

    @classmethod
    def from_args(cls, args) -> QuantRecipe:
        """The recipe the command-line flags describe (``args``: a namespace or fairseq config)."""
        set_quant_defaults(args)
        check_quant_args(args)

        def mode(q: str, m: str) -> str:
            return "quantize" if getattr(args, q) else "measure" if getattr(args, m) else "off"

        weight = QuantSpec(
            mode=mode("quantw", "measurew"),
            bits=args.bitsw,
            symmetric=args.quantw_range == "symmetric",
            per_channel=args.quantw_granularity == "channel",
            dynamic=True,  # a weight's range is its own current min/max: exact, no lag
        )
        inp = QuantSpec(
            mode=mode("quantin", "measurein"),
            bits=args.bitsin,
            symmetric=args.quantin_range == "symmetric",
            dynamic=args.dynamic_qparams,
            momentum=args.qparams_momentum,
        )
        return cls(weight=weight, input=inp)


def _role(name: str) -> str:
    return "weight" if name.endswith("weight_quant") else "probs" if name.endswith("probs_quant") else "input"


def quantize_model(model: nn.Module, recipe: QuantRecipe, skip: tuple[str, ...] = ("lm_head",)) -> nn.Module:
    """Wrap (in place) every fairseq MultiheadAttention and nn.Linear of ``model`` with quantizers for ``recipe``.

    Modules under a child named in ``skip`` stay as they are (RoBERTa's masked-LM head is not part of a
    fine-tuned model's inference). Already-wrapped modules just get the recipe's specs. Returns ``model``.
    """
    for name, module in list(model.named_modules()):
        if any(part in skip for part in name.split(".")):
            continue
        if isinstance(module, MultiheadAttention) and not isinstance(module, QuantizedMultiheadAttention):
            QuantizedMultiheadAttention.wrap(module, recipe.input, recipe.weight, recipe.probs)
    for name, module in list(model.named_modules()):
        if any(part in skip for part in name.split(".")):
            continue
        if type(module) is nn.Linear:
            QuantizedLinear.wrap(module, recipe.input, recipe.weight)
    apply_recipe(model, recipe)
    return model


def apply_recipe(model: nn.Module, recipe: QuantRecipe) -> None:
    """Set every quantizer of ``model`` to the spec its role takes in ``recipe`` (weights, inputs, probs)."""
    specs = {"weight": recipe.weight, "input": recipe.input, "probs": recipe.probs}
    for name, q in model.named_modules():
        if isinstance(q, QuantMeasure):
            spec = specs[_role(name)]
            if q.spec.per_channel != spec.per_channel:
                raise ValueError(
                    f"{name}: its ranges were built {'per channel' if q.spec.per_channel else 'per tensor'}; "
                    f"rebuild the model to change --quantw-granularity"
                )
            q.set_spec(spec)

"""Recipes as data: which quantization point gets which QuantSpec.

A recipe has a base spec for weights and one for inputs (every activation point), the set of operations
(``--quantize-ops``) whose points take them, and ``points``: overrides for named points, by the short names of
Bondarenko et al. (``core.points.SHORT_NAMES``), by operation, or by glob patterns over quantizer paths
(``*.layers.0.fc1.weight_quant``). Recipe files (``--quant-recipe``, ``configs/recipes/``) and dictionaries are read
here; the command-line flags are turned into a recipe by ``plugin.options``; a model gets its quantizers by
``plugin.quantize``. The softmax probabilities take the input spec, on an unsigned grid for integers.
"""
from __future__ import annotations

import ast
import fnmatch
import functools
import json
import os
import re
from dataclasses import dataclass, field, fields, replace

from .estimators import ESTIMATORS
from .formats import MAX_BITS, MIN_BITS, ROUNDINGS, IntFormat, check_bits, get_format
from .points import OPS, POINT_GROUPS, SHORT_NAMES
from .spec import MODES, SCALINGS, QuantSpec, int_format

__all__ = [
    "QUANT_DICT_ACTIVATIONS",
    "QUANT_DICT_KEYS",
    "QuantRecipe",
    "RECIPE_KEYS",
    "RecipeError",
    "SPEC_KEYS",
    "apply_entry",
    "describe",
    "load_recipe",
    "parse_quant_dict",
]


class RecipeError(ValueError):
    """A bad recipe (file, dictionary or flags); the message names the key and the allowed values."""


# The keys a spec takes in a recipe file or dictionary, with what they mean.
SPEC_KEYS = {
    "mode": f"one of {', '.join(MODES)}",
    "format": "intN / uintN (N = 2..16; 'int' keeps the width), or a floating-point format such as fp8_e4m3, e8m7, "
              "posit8_1",
    "bits": f"the width of an integer format, {MIN_BITS}..{MAX_BITS}",
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
_RENAMED = {"grad": "grad_format"}


def apply_entry(spec: QuantSpec, entry: dict, where: str, saved: bool = False) -> QuantSpec:
    """``spec`` with a recipe entry (``{"format": "int4", "granularity": "channel"}``, keys ``SPEC_KEYS``)
    applied. ``format: "int"`` keeps the current integer width; ``bits`` sets the width of an integer format and
    is refused on a floating-point one, except in a recipe ``saved`` with a checkpoint before formats were one value
    (which wrote the width flag beside every format). Raises RecipeError naming ``where`` and the key."""
    if not isinstance(entry, dict):
        raise RecipeError(f"{where}: expected an object with keys from {', '.join(SPEC_KEYS)}, got {entry!r}")
    changes = {}
    fmt = spec.format
    for key, value in entry.items():
        if key not in SPEC_KEYS:
            raise RecipeError(f"{where}: unknown key {key!r}; allowed: " +
                              "; ".join(f"{k} ({v})" for k, v in SPEC_KEYS.items()))
        if key == "format":
            if value == "int":
                fmt = int_format(spec.bits if spec.is_int else 8, spec.signed)
                continue
            try:
                parsed = get_format(value)
            except (ValueError, TypeError) as e:
                raise RecipeError(f"{where}.format: {e}") from None
            if isinstance(parsed, IntFormat):  # intN / uintN / intN_sym
                fmt = int_format(parsed.bits, parsed.signed)
                if parsed.symmetric:
                    changes["symmetric"] = True
            else:
                fmt = value
        elif key == "range":
            if value not in ("symmetric", "asymmetric"):
                raise RecipeError(f"{where}.range: expected symmetric or asymmetric, got {value!r}")
            changes["symmetric"] = value == "symmetric"
        elif key == "granularity":
            if value not in ("tensor", "channel"):
                raise RecipeError(f"{where}.granularity: expected tensor or channel, got {value!r}")
            changes["per_channel"] = value == "channel"
        elif key != "bits":
            changes[_RENAMED.get(key, key)] = value
    bits = entry.get("bits")
    if bits is not None:
        try:
            check_bits(bits)
        except ValueError as e:
            raise RecipeError(f"{where}: {e}") from None
        if re.fullmatch(r"u?int\d+", fmt):
            fmt = int_format(bits, not fmt.startswith("uint"))
        elif not saved:
            raise RecipeError(f"{where}.bits: bits sets the width of an integer format; {fmt} is "
                              f"{get_format(fmt).bits} bits wide by itself")
    try:
        return spec.replace(format=fmt, **changes)
    except (ValueError, TypeError) as e:
        raise RecipeError(f"{where}: {e}") from None


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
    points: ``(key, entry)`` pairs applied in order to the points ``key`` names — a short name
        (``SHORT_NAMES``), an operation group (``POINT_GROUPS``) or a glob over quantizer paths — each entry a
        recipe entry (``apply_entry``). A named point takes its role's base spec (so it is quantized when weights
        or inputs are) with the entry applied, even when its operation is not in ``ops``; ``{"mode": "off"}`` turns
        points off.
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
        if not self.input.is_int:
            return self.input
        return self.input.replace(format=int_format(self.input.bits, signed=False), symmetric=True)

    def with_bits(self, weight_bits: int, input_bits: int) -> QuantRecipe:
        """The same recipe with other base bit widths (cyclic precision; integer base specs)."""
        w = self.weight.with_bits(weight_bits) if self.weight.is_int else self.weight
        i = self.input.with_bits(input_bits) if self.input.is_int else self.input
        return replace(self, weight=w, input=i)

    def spec_for(self, name: str, role: str, op: str) -> QuantSpec:
        """The spec of the quantizer at path ``name`` with this ``role`` (weight, input, probs) and ``op``."""
        base = {"weight": self.weight, "input": self.input, "probs": self.probs}[role]
        if role != "weight" or op == "embedding":  # token embeddings: one range for the table unless named
            base = base.replace(per_channel=False)
        spec = base if op in self.ops else base.replace(mode="off")
        named = False
        for key, entry in self.points:
            if _point_matches(key, name, op):
                if entry.get("granularity") == "channel" and role != "weight":
                    raise RecipeError(f"points.{key}: granularity 'channel' is for weights, and {name} quantizes "
                                      f"an activation")
                if entry.get("groups") and role == "weight":
                    raise RecipeError(f"points.{key}: embedding groups are for activations, and {name} quantizes "
                                      f"a weight")
                spec = apply_entry(spec if named else base, entry, f"points.{key}", saved=True)
                named = True
        if spec.mode == "off" and (spec.learned or spec.groups):
            spec = spec.replace(learned=False, groups=0, permute=False)  # an off point needs no parameters
        return spec

    def unmatched_points(self, names: list[tuple[str, str]]) -> list[str]:
        """The ``points`` keys that name none of ``names`` (``(path, op)`` pairs): likely typos."""
        return [key for key, _ in self.points if not any(_point_matches(key, n, op) for n, op in names)]

    @classmethod
    def from_dict(cls, data, source: str = "recipe", saved: bool = False) -> QuantRecipe:
        """A recipe from a dictionary such as a recipe file holds::

            {"weight": {"format": "fp8_e4m3", "scaling": "amax"},
             "input": {"format": "fp8_e4m3", "scaling": "amax", "grad": "fp8_e5m2"},
             "ops": ["gemm", "act", "norm"],
             "points": {"y": {"format": "int16"}, "*.layers.0.*": {"mode": "off"}}}

        ``weight`` and ``input`` entries default to ``mode: quantize`` (an absent one: off); weights default to
        per-channel symmetric int8 ranges of the current tensor, inputs to per-tensor asymmetric int8 running ranges.
        ``saved``: the recipe a checkpoint carries (see ``apply_entry``). Raises ``RecipeError`` naming ``source``
        and the offending key.
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
            if entry is None:
                specs[role] = base
                continue
            if isinstance(entry, dict) and role == "input" and entry.get("granularity") == "channel":
                raise RecipeError(f"{source}: input.granularity: 'channel' is for weights; inputs are per tensor")
            if isinstance(entry, dict) and entry.get("groups"):
                raise RecipeError(f"{source}: {role}.groups: embedding groups are set per activation point; name "
                                  f"them in points (e.g. \"y\": {{\"groups\": 6}})")
            specs[role] = apply_entry(base.replace(mode="quantize"), entry, f"{source}: {role}", saved)
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
            apply_entry(QuantSpec(mode="quantize"), entry, f"{source}: points.{key}", saved)  # its values alone
            if entry.get("granularity") == "channel" and (key in SHORT_NAMES and key not in ("P", "C", "Et")
                                                          or key in POINT_GROUPS and key not in ("gemm", "embedding")):
                raise RecipeError(f"{source}: points.{key}.granularity: 'channel' is for weights; {key} "
                                  f"quantizes activations")
            parsed.append((key, dict(entry)))
        return cls(weight=specs["weight"], input=specs["input"], ops=tuple(o for o in OPS if o in ops),
                   points=tuple(parsed))

    def to_dict(self) -> dict:
        """The recipe as ``from_dict`` reads it (saved with checkpoints; ``points`` keep their order)."""
        def full(spec: QuantSpec) -> dict:
            out = {}
            for f in fields(spec):
                v = getattr(spec, f.name)
                if f.name == "symmetric":
                    out["range"] = "symmetric" if v else "asymmetric"
                elif f.name == "per_channel":
                    out["granularity"] = "channel" if v else "tensor"
                else:
                    out[{"grad_format": "grad"}.get(f.name, f.name)] = v
            return out

        return {"weight": full(self.weight), "input": full(self.input), "ops": list(self.ops),
                "points": {k: dict(e) for k, e in self.points}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


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
    """The recipe file at ``path``, read and validated once per version of the file (a flag's check and the model
    build share it). Raises ``RecipeError`` naming the file and the key."""
    if not os.path.isfile(path):
        raise RecipeError(f"--quant-recipe: no such file: {path}")
    stat = os.stat(path)
    return _load_recipe(os.path.abspath(path), stat.st_mtime_ns, stat.st_size, path)


@functools.lru_cache(maxsize=32)
def _load_recipe(abspath: str, mtime_ns: int, size: int, shown: str) -> QuantRecipe:
    try:
        with open(abspath, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise RecipeError(f"--quant-recipe: {shown} is not valid JSON: {e}") from None
    return QuantRecipe.from_dict(data, source=shown)


# --quant-dict: points whose value may be an embedding-group spec (activations with an embedding dimension);
# "residual" names both residual sums of every layer (y is the FFN one)
QUANT_DICT_ACTIVATIONS = ("x", "h", "y", "residual")
QUANT_DICT_KEYS = tuple(SHORT_NAMES) + ("residual",)


def parse_quant_dict(value) -> list[tuple[str, dict]]:
    """``--quant-dict`` (a Python/JSON dict literal, or a dict) -> recipe ``points`` entries.

    Keys are short names (``SHORT_NAMES``), ``residual`` (both residual sums of every layer) or glob patterns over
    quantizer paths, as in recipe files (``*.layers.0.fc1.weight_quant``: one layer's point); values are bit
    widths (2..16) or, for ``x``, ``h``, ``y`` and ``residual``, ``ngN`` (N embedding groups) or ``ngpN`` (N groups
    with range-based permutation), at the input bit width.
    ``{'y': 'ngp6', 'Et': 2}`` -> ``[('y', {'groups': 6, 'permute': True}), ('Et', {'bits': 2})]``.
    Raises ``RecipeError`` naming the key or value and the allowed ones.
    """
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise RecipeError(f"--quant-dict: {value!r} is not a dictionary literal such as \"{{'y': 16}}\"") from None
    if not isinstance(value, dict):
        raise RecipeError(f"--quant-dict: expected a dictionary such as {{'y': 16, 'h': 'ng6'}}, got {value!r}")
    points = []
    for key, v in value.items():
        if key not in QUANT_DICT_KEYS and not (isinstance(key, str) and _is_pattern(key)):
            raise RecipeError(f"--quant-dict: unknown point {key!r}; allowed: {', '.join(QUANT_DICT_KEYS)}, or a "
                              f"pattern over quantizer paths such as '*.layers.0.fc1.weight_quant'")
        try:
            points.append((key, {"bits": check_bits(v)}))
            continue
        except ValueError:
            pass
        m = re.fullmatch(r"ng(p?)(\d+)", v) if isinstance(v, str) else None
        if m and key in QUANT_DICT_ACTIVATIONS and int(m[2]) >= 1:
            points.append((key, {"groups": int(m[2]), "permute": bool(m[1])}))
            continue
        allowed = f"an integer from {MIN_BITS} to {MAX_BITS}" + (
            ", ngN or ngpN (N >= 1 embedding groups, p: permuted)" if key in QUANT_DICT_ACTIVATIONS else "")
        raise RecipeError(f"--quant-dict: {key!r}: {v!r} is not a valid value; allowed: {allowed}")
    return points

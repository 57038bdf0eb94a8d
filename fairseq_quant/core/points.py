"""The names of the quantization points: one table, from which the recipes' short names (``x``, ``h``, ``y``, ``P``,
``C``, ``Et``), the sensitivity sweep's groups and the operation groups all come.

A point is a QuantMeasure at a path in the model. Paths under a transformer layer (``fc1.input_quant``) repeat in
every layer; model-level points are glob patterns (``*embed_tokens.weight_quant``). Which tensor each path
quantizes is the wrappers' business (``plugin.layers``); this table only names them.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["OPS", "POINT_GROUPS", "POINTS", "Point", "SHORT_NAMES", "layer_points", "model_points"]

# the operations --quantize-ops chooses from
OPS = ("gemm", "act", "norm", "attn_scaling", "residual")
# every operation group a quantizer belongs to: OPS, plus linear-layer outputs and token embeddings, which are
# quantized only where a recipe names them
POINT_GROUPS = OPS + ("output", "embedding")


@dataclass(frozen=True)
class Point:
    """One named quantization point.

    path: the quantizer's path under a transformer layer (``where="layer"``), or a glob over the model's quantizer
        paths (``where="model"``).
    component: what it belongs to (q, k, v, attn_in, probs, out, fc1, fc2, attn_res, y, h, emb, head).
    kind: ``W`` (weights) or ``A`` (activations: GEMM inputs; for q, k and v their outputs, the operands of the
        attention's products).
    short: the name Bondarenko et al. (EMNLP 2021) give it, if any.
    block: ``attention`` or ``feed_forward`` for layer points (the sensitivity report compares the two).
    sweep: whether the sensitivity sweep quantizes it as a group of its own.
    """

    path: str
    component: str
    kind: str
    short: str | None = None
    where: str = "layer"
    block: str | None = None
    sweep: bool = True

    @property
    def pattern(self) -> str:
        """The glob that names it in every layer (or in the model)."""
        return f"*.{self.path}" if self.where == "layer" else self.path


_ATT, _FF = "attention", "feed_forward"
POINTS = (
    Point("self_attn.q_proj.weight_quant", "q", "W", block=_ATT),
    Point("self_attn.q_proj.output_quant", "q", "A", block=_ATT),
    Point("self_attn.k_proj.weight_quant", "k", "W", block=_ATT),
    Point("self_attn.k_proj.output_quant", "k", "A", block=_ATT),
    Point("self_attn.v_proj.weight_quant", "v", "W", block=_ATT),
    Point("self_attn.v_proj.output_quant", "v", "A", block=_ATT),
    Point("self_attn.input_quant", "attn_in", "A", block=_ATT),
    Point("self_attn.probs_quant", "probs", "A", block=_ATT),
    Point("self_attn.out_proj.weight_quant", "out", "W", block=_ATT),
    Point("self_attn.out_proj.input_quant", "out", "A", block=_ATT),
    Point("fc1.weight_quant", "fc1", "W", block=_FF),
    Point("fc1.input_quant", "fc1", "A", short="x", block=_FF),
    Point("fc2.weight_quant", "fc2", "W", block=_FF),
    Point("fc2.input_quant", "fc2", "A", block=_FF),
    Point("fc2.output_quant", "h", "A", short="h", block=_FF, sweep=False),
    # the residual sums before the post-LN LayerNorms, where the outlier dimensions live (y is the FFN one)
    Point("attn_residual_quant", "attn_res", "A", block=_ATT),
    Point("ffn_residual_quant", "y", "A", short="y", block=_FF),
    Point("*classification_heads.*.dense.weight_quant", "head", "W", short="P", where="model"),
    Point("*classification_heads.*.out_proj.weight_quant", "head", "W", short="C", where="model"),
    Point("*classification_heads.*.dense.input_quant", "head", "A", short="P", where="model"),
    Point("*classification_heads.*.out_proj.input_quant", "head", "A", short="C", where="model"),
    Point("*embed_tokens.weight_quant", "emb", "W", short="Et", where="model"),
)


def layer_points() -> tuple[Point, ...]:
    return tuple(p for p in POINTS if p.where == "layer")


def model_points() -> tuple[Point, ...]:
    return tuple(p for p in POINTS if p.where == "model")


def _short_names() -> dict[str, tuple[str, ...]]:
    names: dict[str, tuple[str, ...]] = {}
    for p in POINTS:
        if p.short:
            names[p.short] = names.get(p.short, ()) + (p.pattern,)
    return names


# short name -> quantizer path patterns: x FFN input, h FFN output, y FFN residual sum, P pooler (the head's dense
# layer), C classifier (the head's output layer), Et token embeddings
SHORT_NAMES = _short_names()

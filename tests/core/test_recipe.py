"""Recipes as data (core/recipe.py): files and dictionaries, their entries, --quant-dict, the recipe a checkpoint
saved before formats were one value, and a recipe file read once."""
import json

import pytest
from helpers import PLUGIN_DIR

from fairseq_quant.core.points import SHORT_NAMES
from fairseq_quant.core.recipe import QuantRecipe, RecipeError, apply_entry, load_recipe, parse_quant_dict
from fairseq_quant.core.spec import QuantSpec


def test_short_names_come_from_the_point_table():
    assert list(SHORT_NAMES) == ["x", "h", "y", "P", "C", "Et"]
    assert SHORT_NAMES["y"] == ("*.ffn_residual_quant",)
    assert set(SHORT_NAMES["C"]) == {"*classification_heads.*.out_proj.weight_quant",
                                     "*classification_heads.*.out_proj.input_quant"}


def test_entries_set_the_one_format_value():
    base = QuantSpec(mode="quantize", format="uint8", symmetric=False)
    assert apply_entry(base, {"bits": 4}, "p").format == "uint4"  # bits keep the signedness
    assert apply_entry(base, {"format": "int"}, "p").format == "uint8"  # 'int': the current width
    assert apply_entry(base, {"format": "int8_sym"}, "p") == base.replace(format="int8", symmetric=True)
    assert apply_entry(base, {"format": "int16", "bits": 16}, "p").format == "int16"
    with pytest.raises(RecipeError, match=r"p.bits: bits sets the width of an integer format; fp8_e4m3 is 8 bits"):
        apply_entry(base, {"format": "fp8_e4m3", "bits": 4}, "p")


def test_a_recipe_saved_before_formats_were_one_value_still_reads():
    """What to_dict wrote then: 'bits' beside every format, the float formats' too."""
    old = {"weight": {"mode": "quantize", "bits": 8, "format": "fp8_e4m3", "range": "symmetric",
                      "granularity": "tensor", "dynamic": True, "scaling": "amax", "rounding": "nearest",
                      "grad": None, "estimator": "minmax", "percentile": 99.99, "groups": 0, "permute": False,
                      "learned": False, "momentum": 0.9},
           "input": {"mode": "quantize", "bits": 6, "format": "int6", "range": "asymmetric"},
           "ops": ["gemm"], "points": {"y": {"bits": 16, "format": "int16"}, "C": {"bits": 6}}}
    recipe = QuantRecipe.from_dict(old, saved=True)
    assert recipe.weight.format == "fp8_e4m3" and recipe.input.format == "int6"
    assert recipe.spec_for("m.layers.0.ffn_residual_quant", "input", "residual").format == "int16"
    with pytest.raises(RecipeError, match="bits sets the width of an integer format"):
        QuantRecipe.from_dict(old)  # a user's recipe file gets no such leniency
    again = QuantRecipe.from_dict(json.loads(recipe.to_json()))
    assert again == recipe and "bits" not in json.loads(recipe.to_json())["weight"]


def test_a_recipe_file_is_read_once_per_version(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    path.write_text('{"weight": {"format": "int4"}}')
    reads = []
    real = json.load
    monkeypatch.setattr(json, "load", lambda f: reads.append(f.name) or real(f))
    assert load_recipe(str(path)) is load_recipe(str(path)) and len(reads) == 1
    path.write_text('{"weight": {"format": "int6"}}  ')  # another version of the file: read again
    assert load_recipe(str(path)).weight.format == "int6" and len(reads) == 2


def test_recipe_round_trips_through_json():
    data = json.load(open(PLUGIN_DIR.parent / "configs" / "recipes" / "w8a8_y16.json"))
    recipe = QuantRecipe.from_dict(data)
    assert QuantRecipe.from_dict(json.loads(recipe.to_json())) == recipe
    fp8 = QuantRecipe.from_dict(json.load(open(PLUGIN_DIR.parent / "configs" / "recipes" / "fp8.json")))
    assert fp8.input.grad_format == "fp8_e5m2" and fp8.weight.scaling == "amax" and not fp8.weight.per_channel


@pytest.mark.parametrize("data, message", [
    ({"weights": {}}, "unknown key 'weights'; allowed: weight, input, ops, points"),
    ({"weight": {"bit": 4}}, r"weight: unknown key 'bit'; allowed: mode"),
    ({"input": {"format": "fp7"}}, r"input.format: unknown number format 'fp7'.*accepted"),
    ({"input": {"bits": 20}}, "input: bits must be an integer from 2 to 16"),
    ({"ops": ["gemm", "softmax"]}, "ops: expected a list from gemm, act, norm, attn_scaling, residual"),
    ({"points": {"z": {"bits": 4}}}, r"points: unknown point 'z'; allowed: short names x, h, y, P, C, Et"),
    ({"points": {"y": {"granularity": "channel"}}}, "points.y.granularity: 'channel' is for weights"),
    ({"points": {"x": {"range": "both"}}}, "points.x.range: expected symmetric or asymmetric"),
])
def test_bad_recipes_name_the_offending_key(data, message):
    with pytest.raises(RecipeError, match=message):
        QuantRecipe.from_dict(data, source="r.json")


def test_quant_dict_entries_become_recipe_points():
    assert parse_quant_dict("{'y': 'ngp6', 'h': 'ng3', 'Et': 2, 'residual': 16}") == [
        ("y", {"groups": 6, "permute": True}), ("h", {"groups": 3, "permute": False}), ("Et", {"bits": 2}),
        ("residual", {"bits": 16})]

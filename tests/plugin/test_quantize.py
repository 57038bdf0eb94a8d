"""Format flags, non-GEMM operations and recipes: what each point quantizes, in a model, in fairseq-train and in
evaluate.py; bad recipes name the key."""
import json
import re
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import torch
from helpers import PLUGIN_DIR, TINY_TRAIN, accuracy_by_hand, fairseq_train, run_evaluate, tiny_batch, tiny_model

from fairseq_quant import QuantMeasure, QuantSpec
from fairseq_quant.core.formats import get_format
from fairseq_quant.core.recipe import QuantRecipe
from fairseq_quant.plugin.checkpoint import load_checkpoint
from fairseq_quant.plugin.layers import QuantizedMultiheadAttention

HEAD = "sentence_classification_head"
ALL_OPS = "gemm,act,norm,attn_scaling,residual"


def active(model):
    return {n: q for n, q in model.named_modules() if isinstance(q, QuantMeasure) and q.active}


# --- QuantMeasure with floating-point formats -------------------------------------------------------------------

def test_unscaled_fp8_point_equals_ml_dtypes_cast_and_saturates():
    q = QuantMeasure(QuantSpec(mode="quantize", format="fp8_e4m3"))
    x = torch.tensor([0.0, 0.3, -1.7, 100.3, 447.0, 500.0, -1e6])
    expected = x.clamp(-448, 448).numpy().astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
    assert torch.equal(q(x), torch.from_numpy(expected))


def test_amax_scaling_maps_the_largest_magnitude_onto_the_format_maximum():
    x = torch.tensor([[0.001, -0.5, 2.0], [0.25, 0.002, -0.03]])
    q = QuantMeasure(QuantSpec(mode="quantize", format="fp8_e4m3", scaling="amax", dynamic=True))
    y = q(x)
    scale = 2.0 / 448
    expected = torch.from_numpy((x / scale).numpy().astype(ml_dtypes.float8_e4m3fn).astype(np.float32)) * scale
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    assert y.max().item() == pytest.approx(2.0)  # amax is exact
    # unscaled, 0.001 and 0.002 fall below E4M3's smallest subnormal (2^-9) region's resolution; scaled they keep
    # their relative precision
    assert abs(y[0, 0].item() - 0.001) / 0.001 < 0.07


def test_per_channel_amax_scales_each_weight_row_separately():
    w = torch.tensor([[1.0, -0.1], [100.0, 3.0]])
    q = QuantMeasure(QuantSpec(mode="quantize", format="e2m1", scaling="amax", per_channel=True, dynamic=True),
                     channels=2)
    y = q(w)
    assert y[0, 0].item() == 1.0 and y[1, 0].item() == 100.0  # each row's amax lands on e2m1's maximum, 6


def test_posit_point_never_makes_nan_from_inf():
    q = QuantMeasure(QuantSpec(mode="quantize", format="posit8_1"))
    y = q(torch.tensor([float("inf"), -float("inf"), 1.3]))
    assert torch.isfinite(y).all() and y[0].item() == get_format("posit8_1").max


def test_gradient_format_rounds_gradients_to_e5m2_after_amax_scaling():
    q = QuantMeasure(QuantSpec(mode="quantize", format="fp8_e4m3", scaling="amax", grad_format="fp8_e5m2",
                               dynamic=True)).train()
    x = torch.randn(64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    g = torch.randn(64, generator=torch.Generator().manual_seed(1)) * 1e-3
    q(x).backward(g)
    scale = g.abs().max() / 57344
    expected = torch.from_numpy((g / scale).numpy().astype(ml_dtypes.float8_e5m2).astype(np.float32)) * scale
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=0)
    assert not torch.equal(x.grad, g)


def test_stochastic_int_rounding_is_unbiased():
    torch.manual_seed(0)
    q = QuantMeasure(QuantSpec(mode="quantize", format="int4", dynamic=True, rounding="stochastic"))
    x = torch.full((20000,), 0.3)
    x[0] = 7.0  # the range: scale 7/7 = 1, so 0.3 lies between the grid points 0 and 1
    y = q(x)
    assert set(y[1:].unique().tolist()) == {0.0, 1.0}
    assert y[1:].mean().item() == pytest.approx(0.3, abs=0.01)




# --- non-GEMM operations ----------------------------------------------------------------------------------------

def test_gemm_only_leaves_every_non_gemm_point_off():
    names = active(tiny_model(["--quantw", "--quantin"]))
    assert len(names) == 32 and all(q.op == "gemm" for q in names.values())


def test_every_operation_point_fires_once_on_the_tensor_it_names():
    model = tiny_model(["--quantw", "--quantin", "--quantize-ops", ALL_OPS]).train()
    points = active(model)
    per_layer = {"self_attn.scores_quant", "activation_fn.input_quant", "activation_fn.output_quant",
                 "self_attn_layer_norm.input_quant", "self_attn_layer_norm.output_quant",
                 "final_layer_norm.input_quant", "final_layer_norm.output_quant", "attn_residual_quant",
                 "ffn_residual_quant"}
    layer0 = {n.split("layers.0.")[1] for n in points if "layers.0." in n}
    assert per_layer <= layer0 and len(layer0) == 14 + len(per_layer)
    seen = {}
    for name, q in points.items():
        q.register_forward_hook(lambda m, a, out, name=name: seen.setdefault(name, []).append((a[0], out)))
    model(tiny_batch(), classification_head_name=HEAD)[0].sum().backward()
    assert set(seen) == set(points) and all(len(v) == 1 for v in seen.values())
    pre = "encoder.sentence_encoder.layers.0."
    # the activation function's input is fc1's output; the FFN residual sum is what final_layer_norm receives
    fc1_in = seen[pre + "fc1.input_quant"][0][1]
    fc1 = model.encoder.sentence_encoder.layers[0].fc1
    torch.testing.assert_close(seen[pre + "activation_fn.input_quant"][0][0],
                               torch.nn.functional.linear(fc1_in, fc1.weight_quant(fc1.weight), fc1.bias))
    assert seen[pre + "final_layer_norm.input_quant"][0][0] is seen[pre + "ffn_residual_quant"][0][1]
    # the scaled scores enter the softmax: the probabilities are their softmax (rows of the sentences without
    # padding; fairseq masks padded keys after this point). 4 heads, the last of 4 sentences padded.
    scores = seen[pre + "self_attn.scores_quant"][0][1][:12]
    probs = seen[pre + "self_attn.probs_quant"][0][0][:12]
    torch.testing.assert_close(probs, torch.softmax(scores, -1))


def test_all_ops_changes_the_output_and_measure_mode_does_not():
    x = tiny_batch()
    ref = tiny_model([]).eval()(x, classification_head_name=HEAD)[0]
    gemm = tiny_model(["--quantw", "--quantin", "--bitsin", "4"]).eval()(x, classification_head_name=HEAD)[0]
    ops = tiny_model(["--quantw", "--quantin", "--bitsin", "4", "--quantize-ops", ALL_OPS]).eval()
    assert not torch.equal(ops(x, classification_head_name=HEAD)[0], gemm)
    measured = tiny_model(["--measurein", "--quantize-ops", ALL_OPS]).train()
    torch.manual_seed(0)
    out = measured(x, classification_head_name=HEAD)[0]
    plain = tiny_model([]).train()
    torch.manual_seed(0)
    # active measurers send attention through fairseq's module-by-module path, whose kernels may round the last
    # bit differently from the fused one (seen on some CPUs): bit for bit against the plain model on that path
    torch.testing.assert_close(out, plain(x, classification_head_name=HEAD)[0], rtol=0, atol=1e-6)
    for module in plain.modules():
        if isinstance(module, QuantizedMultiheadAttention):
            module.module_path = True
    torch.manual_seed(0)
    torch.testing.assert_close(out, plain(x, classification_head_name=HEAD)[0], rtol=0, atol=0)
    assert not torch.equal(ref, gemm)


# --- recipes ----------------------------------------------------------------------------------------------------

def test_short_names_resolve_to_the_papers_points():
    recipe = QuantRecipe.from_dict({
        "weight": {"format": "int8"}, "input": {"format": "int8"},
        "points": {"x": {"bits": 16}, "h": {"bits": 6}, "y": {"bits": 12}, "C": {"mode": "off"}, "Et": {"bits": 2}},
    })
    model = tiny_model([])
    model.set_quant_recipe(recipe)
    specs = {n: q.spec for n, q in model.named_modules() if isinstance(q, QuantMeasure)}
    pre = "encoder.sentence_encoder.layers.1."
    assert specs[pre + "fc1.input_quant"].bits == 16
    assert specs[pre + "fc2.output_quant"].mode == "quantize" and specs[pre + "fc2.output_quant"].bits == 6
    assert specs[pre + "ffn_residual_quant"].bits == 12 and specs[pre + "attn_residual_quant"].mode == "off"
    assert specs[f"classification_heads.{HEAD}.out_proj.weight_quant"].mode == "off"
    assert specs[f"classification_heads.{HEAD}.dense.weight_quant"].bits == 8
    et = specs["encoder.sentence_encoder.embed_tokens.weight_quant"]
    assert et.bits == 2 and et.mode == "quantize" and not et.per_channel
    # 2-bit embeddings: the looked-up rows take at most 4 distinct values
    emb = model.encoder.sentence_encoder.embed_tokens
    assert emb(torch.arange(10)).unique().numel() <= 4


def test_patterns_apply_in_order_and_unmatched_keys_are_reported():
    recipe = QuantRecipe.from_dict({"weight": {"format": "int4"}, "input": {"format": "e3m2"},
                                    "points": {"*.layers.0.*": {"mode": "off"}, "*.layers.0.fc2.*": {"bits": 8},
                                               "*.nothing.*": {"bits": 3}}})
    model = tiny_model([])
    model.set_quant_recipe(recipe)
    specs = {n: q.spec for n, q in model.named_modules() if isinstance(q, QuantMeasure)}
    assert specs["encoder.sentence_encoder.layers.0.fc1.weight_quant"].mode == "off"
    assert specs["encoder.sentence_encoder.layers.0.fc2.weight_quant"].bits == 8  # the later key wins
    assert specs["encoder.sentence_encoder.layers.1.fc1.input_quant"].format == "e3m2"
    from fairseq_quant.plugin.quantize import point_names

    assert recipe.unmatched_points(point_names(model)) == ["*.nothing.*"]






@pytest.mark.parametrize("flags, message", [
    (["--formatw", "fp8"], "argument --formatw: unknown number format 'fp8'"),
    (["--formatin", "int4"], "is an integer format: give 'int' here and its width with --bitsw/--bitsin 4"),
    (["--quantize-ops", "gemm,softmax"], "argument --quantize-ops: invalid operation"),
    (["--quantin", "--formatgrad", "int8"], "argument --formatgrad: 'int8' is an integer format"),
    (["--quant-recipe", "RECIPE"], r"bad.json: points\.P: quantizer mode must be one of"),
    (["--quant-recipe", "configs/recipes/fp8.json", "--bitsw", "4"], "put --bitsw into the recipe"),
    (["--formatgrad", "fp8_e5m2"], "--formatgrad rounds the gradients of quantized inputs: it needs --quantin"),
    (["--quantw", "--formatw", "e3m2", "--cpt-config", "configs/cfg_cpt.json", "--max-update", "10"],
     "cannot be combined with --formatw e3m2"),
])
def test_fairseq_train_rejects_bad_format_flags_and_recipes(tmp_path, capsys, monkeypatch, flags, message):
    from fairseq import options

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"weight": {}, "points": {"P": {"mode": "on"}}}))
    monkeypatch.chdir(PLUGIN_DIR.parent)
    flags = [str(bad) if f == "RECIPE" else f for f in flags]
    with pytest.raises(SystemExit) as e:
        options.parse_args_and_arch(options.get_training_parser(), ["data", *TINY_TRAIN, *flags])
    assert e.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_fairseq_train_bad_recipe_is_a_usage_error_as_a_user_sees_it(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"input": {"format": "int8"}, "points": {"*.fc1.*": {"granularity": "row"}}}))
    cmd = [sys.executable, "-m", "fairseq_cli.train", str(tmp_path), *TINY_TRAIN, "--quant-recipe", str(bad)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "points.*.fc1.*.granularity: expected tensor or channel, got 'row'" in proc.stderr


@pytest.fixture(scope="module")
def recipe_run(tiny_data, tmp_path_factory):
    """A real fairseq-train run with a recipe file (fp8 + e5m2 gradients, all operations), the file then deleted."""
    root = tmp_path_factory.mktemp("recipe_run")
    recipe = root / "recipe.json"
    data = json.load(open(PLUGIN_DIR.parent / "configs" / "recipes" / "fp8.json"))
    data["ops"] = ALL_OPS.split(",")
    data["points"] = {"y": {"format": "posit16_1"}}
    recipe.write_text(json.dumps(data))
    fairseq_train(tiny_data, root / "save", "--max-update", "8", "--quant-recipe", str(recipe))
    recipe.unlink()
    return root / "save"


def test_recipe_checkpoint_carries_the_recipe_and_its_ranges(recipe_run):
    state = load_checkpoint(str(recipe_run / "checkpoint_last.pt"))
    saved = json.loads(state["cfg"]["model"].quant_recipe_json)
    assert saved["points"] == {"y": {"format": "posit16_1"}} and saved["input"]["grad"] == "fp8_e5m2"
    key = "encoder.sentence_encoder.layers.0.final_layer_norm.output_quant"
    assert state["model"][f"{key}.num_batches_tracked"].item() == 8 and state["model"][f"{key}.running_max"] > 0


def test_evaluate_uses_the_saved_recipe_and_overrides_it(recipe_run, tiny_data):
    ckpt = str(recipe_run / "checkpoint_last.pt")

    def ev(*flags):
        proc = run_evaluate("--checkpoint", ckpt, "--data", str(tiny_data), *flags)
        return json.loads([x for x in proc.stdout.splitlines() if x.startswith("{")][0])

    saved = ev()
    assert saved["quant"] == "W:fp8_e4m3*amax A:fp8_e4m3*amax+act,norm,attn_scaling,residual+points"
    posit = ev("--quant-recipe", str(PLUGIN_DIR.parent / "configs" / "recipes" / "posit8_all_ops.json"))
    assert posit["quant"] == "W:posit8_1 A:posit8_1+act,norm,attn_scaling,residual"
    flags = ev("--quantw", "--quantin", "--formatin", "e4m3", "--formatin-scaling", "amax", "--calib-batches", "2")
    assert flags["quant"] == "W8 A:fp8_e4m3*amax" and flags["calib_batches"] == 2
    assert saved["accuracy"] == accuracy_by_hand(ckpt, str(tiny_data))[0]
    posit_flags = ["--quant-recipe", str(PLUGIN_DIR.parent / "configs" / "recipes" / "posit8_all_ops.json")]
    accuracy, quantized = accuracy_by_hand(ckpt, str(tiny_data), posit_flags)
    assert posit["accuracy"] == accuracy and quantized


def test_float_formats_train_with_fairseq_train_and_evaluate_the_same(tiny_data, tmp_path):
    proc = fairseq_train(tiny_data, tmp_path / "s", "--max-update", "6", "--quantw", "--quantin", "--formatw",
                         "posit8_1", "--formatin", "e4m3", "--formatin-scaling", "amax", "--formatgrad", "e5m2",
                         "--quantize-ops", ALL_OPS, "--quant-rounding", "stochastic")
    assert "QuantizedLayerNorm" in proc.stdout + proc.stderr
    ckpt = str(tmp_path / "s" / "checkpoint_last.pt")
    runs = [json.loads(run_evaluate("--checkpoint", ckpt, "--data", str(tiny_data)).stdout) for _ in range(2)]
    untimed = [{k: v for k, v in r.items() if k not in ("ms_per_batch", "forward_seconds")} for r in runs]
    # stochastic rounding is for training: evaluation rounds to nearest, deterministically
    assert untimed[0] == untimed[1]

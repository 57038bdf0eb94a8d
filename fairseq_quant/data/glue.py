"""GLUE TSVs -> fairseq binaries for the ``sentence_prediction`` task, for all nine GLUE tasks.

    fairseq-quant-glue GLUE_DIR TASK OUT_BIN (--whitespace | --wordpiece VOCAB | --bpe gpt2
        --encoder-json FILE --vocab-bpe FILE) [--srcdict DICT] [--workers N] [--max-train N --seed S] [--force]

reads ``GLUE_DIR/TASK/{train,dev,test}.tsv`` (the layout ``scripts/download_glue.py`` writes; MNLI has
``dev_matched``/``dev_mismatched`` and ``test_matched``/``test_mismatched``) and writes what fairseq's
``sentence_prediction`` task reads::

    OUT_BIN/input0/{train,valid,test}.{bin,idx} dict.txt   first sentence
    OUT_BIN/input1/...                                     second sentence (pair tasks); same dict.txt as input0
    OUT_BIN/label/{train,valid}.{bin,idx} dict.txt         classification: label strings, in class order
    OUT_BIN/label/{train,valid}.label                      regression (STS-B): one float per line, score / 5
    OUT_BIN/glue_task.json                                 task, classes, row counts, fairseq-train flags

Conventions are those of fairseq's ``examples/roberta/preprocess_GLUE_tasks.sh``: the same text and label columns,
GLUE's dev set is fairseq's ``valid`` (MNLI: ``valid`` = matched, ``valid1`` = mismatched; tests ``test``/``test1``),
test sets get inputs only, QQP rows with a wrong number of fields are dropped, STS-B scores are divided by 5 into
[0, 1], and input1 is binarised with input0's dictionary (``sentence_prediction`` loads only ``input0/dict.txt``).
One difference: fairseq builds the label dictionary by frequency, so class k depends on the data; here it lists the
task's classes in the fixed order of ``TASKS``, so class k is always ``TASKS[task].classes[k]``.

Tokenisation belongs to the model: ``--bpe gpt2`` (RoBERTa: fairseq's own GPT-2 BPE, tokens are BPE ids as in
fairseq's ``multiprocessing_bpe_encoder``), ``--wordpiece VOCAB`` (BERT family: the ``tokenizers`` package's
``BertWordPieceTokenizer``, tokens are vocabulary strings such as ``hello ##ing``), or ``--whitespace`` (text that is
already tokenised). ``--srcdict`` is the model's ``dict.txt`` (required with gpt2/wordpiece, so ids match the
pretrained embeddings); without it (``--whitespace`` only) the dictionary is built from the training split.

Idempotent: OUT_BIN is built beside itself and moved into place when complete; a second run with the same inputs
(compared by content hash) and options does nothing, one with other inputs or options stops unless ``--force``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "TASKS",
    "GlueFormatError",
    "GlueTask",
    "TokenizerSpec",
    "build_tokenizer",
    "fairseq_train_flags",
    "get_task",
    "official_metrics",
    "prepare_glue_task",
    "read_split",
    "task_metric",
    "tokenize_lines",
]

STAMP = "glue_task.json"


@dataclass(frozen=True)
class GlueTask:
    """Where one GLUE task keeps its text and labels.

    ``inputs``: header names of the text columns (one, or two for pair tasks). ``label``: header name of the label
    column. ``classes``: label strings in class order (class k = ``classes[k]``); ``None`` for regression.
    ``dev``/``test``: file stems of the dev and test splits, in the order fairseq numbers them (valid, valid1, ...).
    ``headerless``: column names of train/dev files that have no header line (CoLA; its test file has one).
    ``drop_malformed``: drop train/dev rows with a wrong number of fields instead of failing (QQP, as fairseq).
    ``label_scale``: regression labels are multiplied by it (STS-B: 1/5, as fairseq, so scores lie in [0, 1]).
    ``metrics``: the official metrics, as the GLUE leaderboard lists them, named as fairseq logs them.
    """

    name: str
    inputs: tuple[str, ...]
    label: str
    classes: tuple[str, ...] | None
    metrics: tuple[str, ...]
    dev: tuple[str, ...] = ("dev",)
    test: tuple[str, ...] = ("test",)
    headerless: tuple[str, ...] | None = None
    drop_malformed: bool = False
    label_scale: float = 1.0

    @property
    def regression(self) -> bool:
        return self.classes is None

    @property
    def num_classes(self) -> int:
        """``--num-classes`` for fairseq: the number of classes, or 1 regression target."""
        return 1 if self.classes is None else len(self.classes)


TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask("CoLA", ("sentence",), "label", ("0", "1"), ("mcc",),
                 headerless=("source", "label", "original_label", "sentence")),
        GlueTask("SST-2", ("sentence",), "label", ("0", "1"), ("accuracy",)),
        GlueTask("MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), ("f1", "accuracy")),
        GlueTask("QQP", ("question1", "question2"), "is_duplicate", ("0", "1"), ("f1", "accuracy"),
                 drop_malformed=True),
        GlueTask("STS-B", ("sentence1", "sentence2"), "score", None, ("pearson", "spearman"), label_scale=0.2),
        # Class order of fairseq's published roberta.large.mnli head: 0 contradiction, 1 neutral, 2 entailment.
        GlueTask("MNLI", ("sentence1", "sentence2"), "gold_label", ("contradiction", "neutral", "entailment"),
                 ("accuracy",), dev=("dev_matched", "dev_mismatched"), test=("test_matched", "test_mismatched")),
        GlueTask("QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment"), ("accuracy",)),
        GlueTask("RTE", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"), ("accuracy",)),
        GlueTask("WNLI", ("sentence1", "sentence2"), "label", ("0", "1"), ("accuracy",)),
    )
}  # fmt: skip

# The sentence_prediction criterion flag that makes fairseq's validation log a metric (accuracy is always logged
# for classification), and the names it logs (percentages): --report-mcc -> mcc; --report-acc-and-f1 -> f1,
# acc_and_f1; --report-pearson-and-spearman -> pearson, spearman, pearson_and_spearman.
_REPORT_FLAG = {"mcc": "--report-mcc", "f1": "--report-acc-and-f1", "pearson": "--report-pearson-and-spearman",
                "spearman": "--report-pearson-and-spearman"}  # fmt: skip


class GlueFormatError(ValueError):
    """A GLUE file that is not laid out as its task expects; the message names the file and the expected columns."""


def get_task(name: str) -> GlueTask:
    """The ``TASKS`` entry for ``name`` (case-insensitive); ``ValueError`` naming the allowed tasks otherwise."""
    for task in TASKS.values():
        if task.name.lower() == name.lower():
            return task
    raise ValueError(f"unknown GLUE task {name!r}; allowed: {', '.join(TASKS)}")


def task_metric(task: str) -> tuple[str, bool]:
    """The metric that picks the best checkpoint, and whether larger is better: ``task_metric("CoLA") ==
    ("mcc", True)``. It is the first of ``official_metrics(task)``: mcc (CoLA), f1 (MRPC, QQP), pearson (STS-B),
    accuracy (the others); all are maximized. The name is what fairseq's validation logs with the flags of
    ``fairseq_train_flags(task)``, so it can be ``--best-checkpoint-metric``.
    """
    return official_metrics(task)[0], True


def official_metrics(task: str) -> tuple[str, ...]:
    """The GLUE leaderboard's metrics for ``task``, in its order: ``("f1", "accuracy")`` for MRPC and QQP,
    ``("pearson", "spearman")`` for STS-B, ``("mcc",)`` for CoLA, ``("accuracy",)`` for the others."""
    return get_task(task).metrics


def fairseq_train_flags(task: str) -> list[str]:
    """The task-specific ``fairseq-train`` flags (with ``--task sentence_prediction --criterion
    sentence_prediction``): number of classes or ``--regression-target``, the ``--report-*`` flag that makes
    validation log the official metrics, ``--best-checkpoint-metric`` with ``--maximize-best-checkpoint-metric``,
    and for MNLI ``--valid-subset valid,valid1`` (matched, mismatched; the best checkpoint follows matched).
    E.g. CoLA: ``--num-classes 2 --report-mcc --best-checkpoint-metric mcc --maximize-best-checkpoint-metric``.
    """
    spec = get_task(task)
    flags = ["--num-classes", str(spec.num_classes)]
    if spec.regression:
        flags.append("--regression-target")
    for flag in dict.fromkeys(_REPORT_FLAG[m] for m in spec.metrics if m in _REPORT_FLAG):
        flags.append(flag)
    metric, maximize = task_metric(task)
    flags += ["--best-checkpoint-metric", metric] + (["--maximize-best-checkpoint-metric"] if maximize else [])
    if len(spec.dev) > 1:
        flags += ["--valid-subset", ",".join(_split_names("valid", len(spec.dev)))]
    return flags


def _split_names(base: str, n: int) -> list[str]:
    """fairseq's names for comma-separated prefixes: valid, valid1, valid2, ..."""
    return [base if k == 0 else f"{base}{k}" for k in range(n)]


# --- reading ----------------------------------------------------------------------------------------------------


@dataclass
class Split:
    """One split of a task, read: ``texts[i]`` is input i's column (one string per row), ``labels`` the label
    column (``None`` for test sets), ``dropped`` the number of malformed rows dropped (QQP only)."""

    texts: list[list[str]]
    labels: list[str] | None
    dropped: int = 0


def read_split(path: str | os.PathLike, task: GlueTask, labelled: bool) -> Split:
    """Read one GLUE TSV of ``task``: the text columns, and the label column when ``labelled`` (train/dev).

    Fields are split on tabs only (no quoting, as GLUE's files and fairseq's ``cut`` need); lines end at ``\\n``
    only; a UTF-8 byte-order mark is ignored. Raises ``FileNotFoundError`` for a missing file and
    ``GlueFormatError`` (naming the file, the line and the expected columns) for a missing header column, a row
    with the wrong number of fields, or a label that is not one of the task's classes (or not a number, STS-B).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; GLUE {task.name} needs it (see scripts/download_glue.py)")
    wanted = list(task.inputs) + ([task.label] if labelled else [])
    with open(path, encoding="utf-8-sig", newline="\n") as f:
        lines = (line.rstrip("\n").rstrip("\r") for line in f)
        if labelled and task.headerless:
            columns, first = list(task.headerless), 1
        else:
            header = next(lines, None)
            if header is None:
                raise GlueFormatError(f"{path}: empty file; expected a header with the columns {wanted}")
            columns, first = header.split("\t"), 2
            missing = [c for c in wanted if c not in columns]
            if missing:
                raise GlueFormatError(f"{path}: expected the columns {wanted} in the header, found {columns}")
        where = [columns.index(c) for c in wanted]
        texts: list[list[str]] = [[] for _ in task.inputs]
        labels: list[str] = []
        dropped = 0
        for number, line in enumerate(lines, start=first):
            fields = line.split("\t")
            if len(fields) != len(columns):
                if labelled and task.drop_malformed:
                    dropped += 1
                    continue
                layout = "no header" if first == 1 else "the header"
                raise GlueFormatError(f"{path}: line {number}: expected {len(columns)} tab-separated fields "
                                      f"{columns} ({layout}), found {len(fields)}")
            values = [fields[i] for i in where]
            for column, value in zip(texts, values):
                column.append(value)
            if labelled:
                labels.append(_check_label(values[-1].strip(), task, path, number))
    return Split(texts, labels if labelled else None, dropped)


def _check_label(label: str, task: GlueTask, path: Path, number: int) -> str:
    if task.classes is not None:
        if label not in task.classes:
            raise GlueFormatError(f"{path}: line {number}: label {label!r} in column {task.label!r} is not one of "
                                  f"{list(task.classes)}")
        return label
    try:
        value = float(label)
    except ValueError:
        raise GlueFormatError(f"{path}: line {number}: {task.label!r} is {label!r}, expected a number") from None
    return format(value * task.label_scale, ".6g")  # as fairseq's awk '{print $1 / 5.0}'


# --- tokenising --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizerSpec:
    """Which tokeniser, and its files: ``kind`` is ``whitespace``, ``gpt2`` (``encoder_json``, ``vocab_bpe``) or
    ``wordpiece`` (``vocab``, ``lowercase``). Picklable, so worker processes can build their own."""

    kind: str = "whitespace"
    encoder_json: str | None = None
    vocab_bpe: str | None = None
    vocab: str | None = None
    lowercase: bool = True

    def files(self) -> list[str]:
        return [f for f in (self.encoder_json, self.vocab_bpe, self.vocab) if f]


def build_tokenizer(spec: TokenizerSpec) -> Callable[[str], list[str]]:
    """A function from a sentence to its tokens, as strings the model's ``dict.txt`` lists.

    whitespace: ``"a  b " -> ["a", "b"]``; gpt2: GPT-2 BPE ids as strings (``"Hello" -> ["15496"]`` with GPT-2's
    files), exactly as fairseq's ``multiprocessing_bpe_encoder``; wordpiece: vocabulary strings without
    ``[CLS]``/``[SEP]`` (``"helloing" -> ["hello", "##ing"]``).
    """
    if spec.kind == "whitespace":
        return str.split
    if spec.kind == "gpt2":
        from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

        encoder = get_encoder(spec.encoder_json, spec.vocab_bpe)
        return lambda text: [str(i) for i in encoder.encode(text.strip())]
    if spec.kind == "wordpiece":
        try:
            from tokenizers import BertWordPieceTokenizer
        except ImportError:
            raise ImportError("--wordpiece needs the tokenizers package: pip install tokenizers") from None
        wordpiece = BertWordPieceTokenizer(spec.vocab, lowercase=spec.lowercase)
        return lambda text: wordpiece.encode(text, add_special_tokens=False).tokens
    raise ValueError(f"unknown tokenizer kind {spec.kind!r}; allowed: whitespace, gpt2, wordpiece")


_worker_tokenizer: Callable[[str], list[str]] | None = None


def _init_worker(spec: TokenizerSpec) -> None:
    global _worker_tokenizer
    _worker_tokenizer = build_tokenizer(spec)


def _tokenize_in_worker(text: str) -> str:
    return " ".join(_worker_tokenizer(text))


def tokenize_lines(texts: Sequence[str], spec: TokenizerSpec, workers: int = 1) -> list[str]:
    """Each text as one line of space-separated tokens (no newline), in order; GPT-2 BPE (pure Python, slow)
    runs in ``workers`` processes."""
    if spec.kind == "gpt2" and workers > 1 and len(texts) > 1:
        import multiprocessing

        with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(spec,)) as pool:
            return pool.map(_tokenize_in_worker, texts, chunksize=max(1, min(2000, len(texts) // workers)))
    tokenize = build_tokenizer(spec)
    return [" ".join(tokenize(text)) for text in texts]


# --- binarising --------------------------------------------------------------------------------------------------


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _binarise(field_dir: Path, prefixes: dict[str, list[Path]], dict_path: Path, workers: int) -> None:
    """fairseq-preprocess --only-source, in-process, of the text files ``prefixes`` (train, valid..., test...)."""
    from fairseq import options
    from fairseq_cli import preprocess

    flags = ["--only-source", "--srcdict", str(dict_path), "--destdir", str(field_dir), "--workers", str(workers)]
    for kind, paths in prefixes.items():
        if paths:
            flags += [f"--{kind}pref", ",".join(str(p) for p in paths)]
    log = logging.getLogger("fairseq_cli.preprocess")
    before, level = list(log.handlers), log.level
    log.setLevel(logging.WARNING)  # its INFO lines dump every option; our summary reports rows and unknown tokens
    try:
        preprocess.main(options.get_preprocessing_parser().parse_args(flags))
    finally:
        log.setLevel(level)
        for handler in log.handlers[:]:  # preprocess adds a FileHandler on DESTDIR/preprocess.log every call
            if handler not in before:
                log.removeHandler(handler)
                handler.close()


def _dataset_len(prefix: Path) -> int:
    from fairseq.data import data_utils

    log = logging.getLogger(data_utils.__name__)
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        dataset = data_utils.load_indexed_dataset(str(prefix), None)
    finally:
        log.setLevel(level)
    return 0 if dataset is None else len(dataset)


def prepare_glue_task(
    glue_dir: str | os.PathLike,
    task: str,
    out_bin: str | os.PathLike,
    tokenizer: TokenizerSpec,
    srcdict: str | os.PathLike | None = None,
    workers: int = 1,
    max_train: int | None = None,
    seed: int = 0,
    force: bool = False,
) -> dict:
    """Binarise ``glue_dir/TASK/*.tsv`` into ``out_bin`` (layout in the module docstring); returns the summary also
    written to ``out_bin/glue_task.json`` (task, classes, rows and unknown-token rate per split, fairseq-train flags),
    with ``"up_to_date": True`` added when ``out_bin`` already held exactly this and nothing was done.

    ``max_train``: keep a random sample of that many training rows (``random.Random(seed)``, original order kept).
    Test files are optional (binarised when present); train and dev are required. Raises ``FileNotFoundError`` or
    ``GlueFormatError`` naming the file, and ``FileExistsError`` when ``out_bin`` holds other data and not ``force``.
    """
    spec = get_task(task)
    if tokenizer.kind != "whitespace" and srcdict is None:
        raise ValueError(f"--srcdict is required with {tokenizer.kind} tokenisation: the model's dict.txt, so token "
                         f"ids match the pretrained embeddings")
    if max_train is not None and max_train < 1:
        raise ValueError(f"--max-train must be >= 1, got {max_train}")
    task_dir = Path(glue_dir) / spec.name
    files = {"train": [task_dir / "train.tsv"], "valid": [task_dir / f"{s}.tsv" for s in spec.dev],
             "test": [task_dir / f"{s}.tsv" for s in spec.test]}  # fmt: skip
    for path in files["train"] + files["valid"]:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file; GLUE {spec.name} needs "
                                    f"{', '.join(p.name for p in files['train'] + files['valid'])} in {task_dir}")
    if not all(path.is_file() for path in files["test"]):
        files["test"] = []
    for path in [*tokenizer.files(), *([srcdict] if srcdict else [])]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such file")

    request = {
        "task": spec.name,
        "tokenizer": {"kind": tokenizer.kind, "lowercase": tokenizer.lowercase if tokenizer.kind == "wordpiece"
                      else None, "sha256": [_sha256(p) for p in tokenizer.files()]},
        "srcdict_sha256": _sha256(srcdict) if srcdict else None,
        "max_train": max_train,
        "seed": seed if max_train else None,
        "inputs_sha256": {p.name: _sha256(p) for kind in files.values() for p in kind},
    }  # fmt: skip
    out = Path(out_bin)
    stamp = out / STAMP
    if out.exists() and any(out.iterdir()):
        if stamp.is_file() and json.loads(stamp.read_text())["request"] == request:
            return {**json.loads(stamp.read_text()), "up_to_date": True}
        if not force:
            reason = "was made from other inputs or options" if stamp.is_file() else f"has no {STAMP}"
            raise FileExistsError(f"{out} exists and {reason}; pass --force to replace it")

    splits: dict[str, list[tuple[str, Split]]] = {
        kind: [(name, read_split(path, spec, labelled=kind != "test"))
               for name, path in zip(_split_names(kind, len(paths)), paths)]
        for kind, paths in files.items()
    }  # fmt: skip
    train = splits["train"][0][1]
    if max_train is not None and max_train < len(train.labels):
        keep = sorted(random.Random(seed).sample(range(len(train.labels)), max_train))
        train.texts = [[column[i] for i in keep] for column in train.texts]
        train.labels = [train.labels[i] for i in keep]

    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        summary = _build(spec, splits, build, tokenizer, srcdict, workers)
        summary["request"] = request
        (build / STAMP).write_text(json.dumps(summary, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(build, out)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return summary


def _build(spec: GlueTask, splits: dict[str, list[tuple[str, Split]]], build: Path, tokenizer: TokenizerSpec,
           srcdict: str | os.PathLike | None, workers: int) -> dict:
    """Tokenise and binarise every split into the empty directory ``build``; returns the summary."""
    from fairseq.data import Dictionary

    text = build / "text"
    text.mkdir()
    tokens: dict[tuple[str, int], list[str]] = {}
    for kind in splits.values():
        for name, split in kind:
            for i, column in enumerate(split.texts):
                tokens[name, i] = tokenize_lines(column, tokenizer, workers)
                (text / f"{name}.input{i}").write_text("".join(line + "\n" for line in tokens[name, i]),
                                                       encoding="utf-8")
    if srcdict is not None:
        dictionary = Dictionary.load(str(srcdict))
    else:  # one dictionary from train's input0 and input1: sentence_prediction reads only input0/dict.txt
        dictionary = Dictionary()
        for i in range(len(spec.inputs)):
            for line in tokens["train", i]:
                for token in line.split():
                    dictionary.add_symbol(token)
        dictionary.finalize(padding_factor=8)  # fairseq-preprocess's defaults
    dict_path = text / "dict.input.txt"
    dictionary.save(str(dict_path))

    names = {kind: [name for name, _ in items] for kind, items in splits.items()}
    for i in range(len(spec.inputs)):
        prefixes = {kind: [text / f"{name}.input{i}" for name in names[kind]] for kind in splits}
        _binarise(build / f"input{i}", prefixes, dict_path, workers)

    labelled = [(name, split) for kind in ("train", "valid") for name, split in splits[kind]]
    label_dir = build / "label"
    if spec.regression:
        label_dir.mkdir()
        for name, split in labelled:
            (label_dir / f"{name}.label").write_text("".join(v + "\n" for v in split.labels))
    else:
        counts = Counter(splits["train"][0][1].labels)
        label_dict = text / "dict.label.txt"  # listed in class order, so class k is classes[k]
        label_dict.write_text("".join(f"{c} {counts[c]}\n" for c in spec.classes))
        for name, split in labelled:
            (text / f"{name}.label").write_text("".join(v + "\n" for v in split.labels))
        _binarise(label_dir, {kind: [text / f"{name}.label" for name in names[kind]] for kind in ("train", "valid")},
                  label_dict, workers)
    shutil.rmtree(text)

    rows, unknown = {}, {}
    for kind in splits.values():
        for name, split in kind:
            rows[name] = len(split.texts[0])
            for i in range(len(spec.inputs)):
                n = _dataset_len(build / f"input{i}" / name)
                if n != rows[name]:  # a stray line break would shift every later row against its label
                    raise RuntimeError(f"input{i}/{name}: {n} binarised rows for {rows[name]} rows of text")
            all_tokens = [t for i in range(len(spec.inputs)) for line in tokens[name, i] for t in line.split()]
            unk = sum(t not in dictionary.indices for t in all_tokens)
            unknown[name] = round(unk / max(1, len(all_tokens)), 6)
    return {
        "task": spec.name,
        "num_classes": spec.num_classes,
        "regression": spec.regression,
        "classes": list(spec.classes) if spec.classes else None,
        "label_scale": spec.label_scale,
        "splits": {name: f"{stem}.tsv" for kind, stems in (("train", ("train",)), ("valid", spec.dev),
                   ("test", spec.test)) for name, stem in zip(names[kind], stems)},
        "rows": rows,
        "dropped_malformed": {name: split.dropped for kind in splits.values() for name, split in kind if split.dropped},
        "unknown_token_rate": unknown,
        "metrics": list(spec.metrics),
        "fairseq_train_flags": fairseq_train_flags(spec.name),
    }  # fmt: skip


# --- command line ------------------------------------------------------------------------------------------------

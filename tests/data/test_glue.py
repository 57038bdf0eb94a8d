"""Tests for ``fairseq_quant/data/glue.py`` (GLUE TSVs -> fairseq binaries), ``scripts/preproc.bash`` and
``scripts/download_glue.py`` (archive unpacking and MRPC formatting on local files; no network)."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from fairseq.criterions.sentence_prediction import SentencePredictionConfig, SentencePredictionCriterion
from fairseq.data import Dictionary, data_utils
from fairseq.data.encoders.gpt2_bpe_utils import bytes_to_unicode, get_encoder
from fairseq.logging import metrics
from fairseq.tasks.sentence_prediction import SentencePredictionConfig as TaskConfig
from fairseq.tasks.sentence_prediction import SentencePredictionTask

from fairseq_quant.cli.glue import main
from fairseq_quant.data.glue import (
    TASKS,
    GlueFormatError,
    TokenizerSpec,
    fairseq_train_flags,
    official_metrics,
    prepare_glue_task,
    task_metric,
)

REPO = Path(__file__).resolve().parents[2]  # the repository
SHARED_GLUE = REPO.parent / "shared" / "glue"  # the real GLUE TSVs beside the project, where there are any


def _load_download_glue():
    spec = importlib.util.spec_from_file_location("download_glue", REPO / "scripts" / "download_glue.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


download_glue = _load_download_glue()

# --- fixtures: every task's files in their real column layouts ---------------------------------------------------

SENTENCES = ["the cat sat .", "a dog ran fast", "hello world", "the dog sat", "a cat ran .", "hello the cat"]
STS_SCORES = ["3.800", "0.000", "5.000", "2.500"]
MNLI_TRAIN = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
              "sentence2_parse\tsentence1\tsentence2")  # fmt: skip
HEADERS = {  # task -> (train/dev header, test header); None: no header (CoLA train/dev)
    "CoLA": (None, "index\tsentence"),
    "SST-2": ("sentence\tlabel", "index\tsentence"),
    "MRPC": ("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String", "index\t#1 ID\t#2 ID\t#1 String\t#2 String"),
    "QQP": ("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "id\tquestion1\tquestion2"),
    "STS-B": ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
              "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"),
    "MNLI": (MNLI_TRAIN + "\tlabel1\tgold_label", MNLI_TRAIN),
    "QNLI": ("index\tquestion\tsentence\tlabel", "index\tquestion\tsentence"),
    "RTE": ("index\tsentence1\tsentence2\tlabel", "index\tsentence1\tsentence2"),
    "WNLI": ("index\tsentence1\tsentence2\tlabel", "index\tsentence1\tsentence2"),
}
MNLI_DEV = MNLI_TRAIN + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label"


def _row(task: str, i: int, a: str, b: str, label: str | None, dev: bool = False) -> str:
    """One line of ``task``'s TSV (``label`` None: a test row)."""
    tail = [] if label is None else [label]
    if task == "CoLA":
        return "\t".join(["gj04", label, "", a] if label is not None else [str(i), a])
    if task == "SST-2":
        return "\t".join([a + " "] + tail if label is not None else [str(i), a])
    if task == "MRPC":
        return "\t".join(([label] if label is not None else [str(i)]) + [str(100 + i), str(200 + i), a, b])
    if task == "QQP":
        return "\t".join([str(i)] + ([str(2 * i), str(2 * i + 1)] if label is not None else []) + [a, b] + tail)
    if task == "STS-B":
        return "\t".join([str(i), "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none", a, b] + tail)
    if task == "MNLI":
        annotations = [label] * (5 if dev else 1) if label is not None else []
        return "\t".join([str(i), "31193", f"{i}n", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)", a, b]
                         + annotations + tail)
    return "\t".join([str(i), a, b] + tail)  # QNLI, RTE, WNLI


def _rows(task: str, n: int, offset: int) -> list[tuple[str, str, str]]:
    """(sentence1, sentence2, label) rows; labels cycle through the classes (or STS-B scores)."""
    labels = TASKS[task].classes or STS_SCORES
    return [(SENTENCES[(offset + i) % 6], SENTENCES[(offset + i + 1) % 6], labels[(offset + i) % len(labels)])
            for i in range(n)]


def write_task(root: Path, task: str) -> dict[str, list[tuple[str, str, str]]]:
    """Write ``root/task/*.tsv`` (train 5 rows, each dev 3, each test 2); returns the rows by file stem."""
    spec = TASKS[task]
    header, test_header = HEADERS[task]
    stems = {"train": 5, **{s: 3 for s in spec.dev}, **{s: 2 for s in spec.test}}
    out = {}
    (root / task).mkdir(parents=True, exist_ok=True)
    for k, (stem, n) in enumerate(stems.items()):
        rows = _rows(task, n, offset=k)
        test = stem.startswith("test")
        head = test_header if test else (MNLI_DEV if stem.startswith("dev") and task == "MNLI" else header)
        lines = ([head] if head is not None else []) + [
            _row(task, i, a, b, None if test else label, dev=stem.startswith("dev")) for i, (a, b, label) in
            enumerate(rows)]  # fmt: skip
        (root / task / f"{stem}.tsv").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        out[stem] = rows
    return out


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("glue")
    return root, {task: write_task(root, task) for task in TASKS}


def decode(prefix: Path, dictionary: Dictionary) -> list[str]:
    dataset = data_utils.load_indexed_dataset(str(prefix), dictionary)
    return [dictionary.string(dataset[i][:-1]) for i in range(len(dataset))]  # [:-1]: drop </s>


# --- the task table and metrics ----------------------------------------------------------------------------------


def test_task_table_lists_the_nine_glue_tasks_with_their_inputs_and_classes():
    assert list(TASKS) == ["CoLA", "SST-2", "MRPC", "QQP", "STS-B", "MNLI", "QNLI", "RTE", "WNLI"]
    assert {t for t, s in TASKS.items() if len(s.inputs) == 1} == {"CoLA", "SST-2"}
    assert TASKS["STS-B"].regression and TASKS["STS-B"].num_classes == 1
    assert TASKS["MNLI"].classes == ("contradiction", "neutral", "entailment")
    assert TASKS["MNLI"].dev == ("dev_matched", "dev_mismatched")


@pytest.mark.parametrize(
    ("task", "metric", "official", "flags"),
    [
        ("CoLA", "mcc", ("mcc",), ["--num-classes", "2", "--report-mcc", "--best-checkpoint-metric", "mcc"]),
        ("MRPC", "f1", ("f1", "accuracy"), ["--num-classes", "2", "--report-acc-and-f1", "--best-checkpoint-metric",
                                            "f1"]),
        ("QQP", "f1", ("f1", "accuracy"), ["--num-classes", "2", "--report-acc-and-f1", "--best-checkpoint-metric",
                                           "f1"]),
        ("STS-B", "pearson", ("pearson", "spearman"),
         ["--num-classes", "1", "--regression-target", "--report-pearson-and-spearman", "--best-checkpoint-metric",
          "pearson"]),
        ("SST-2", "accuracy", ("accuracy",), ["--num-classes", "2", "--best-checkpoint-metric", "accuracy"]),
        ("MNLI", "accuracy", ("accuracy",), ["--num-classes", "3", "--best-checkpoint-metric", "accuracy"]),
        ("WNLI", "accuracy", ("accuracy",), ["--num-classes", "2", "--best-checkpoint-metric", "accuracy"]),
    ],
)  # fmt: skip
def test_task_metric_names_the_leaderboard_metric_and_its_fairseq_flags(task, metric, official, flags):
    assert task_metric(task) == (metric, True)
    assert official_metrics(task) == official
    expected = flags + ["--maximize-best-checkpoint-metric"]
    if task == "MNLI":
        expected += ["--valid-subset", "valid,valid1"]
    assert fairseq_train_flags(task) == expected


@pytest.mark.parametrize("task", list(TASKS))
def test_fairseq_validation_logs_every_official_metric_under_its_name(task):
    """The flags of fairseq_train_flags, given to fairseq's own criterion, make its validation log the metrics."""
    flags = fairseq_train_flags(task)
    for flag in flags:
        if flag.startswith("--report") or flag == "--regression-target":
            assert flag[2:].replace("-", "_") in SentencePredictionConfig.__dataclass_fields__
    report = {flag[2:].replace("-", "_"): True for flag in flags if flag.startswith("--report")}
    log = {"loss": torch.tensor(1.0), "ntokens": 8, "nsentences": 4, "sample_size": 4,
           "pred": [0, 1, 1, 0], "targ": [0, 1, 0, 0], **report}  # fmt: skip
    if not TASKS[task].regression:
        log["ncorrect"] = torch.tensor(3)
    with metrics.aggregate() as agg:
        SentencePredictionCriterion.reduce_metrics([log])
        logged = agg.get_smoothed_values()
    for name in official_metrics(task):
        assert name in logged, (name, sorted(logged))
    assert task_metric(task)[0] in logged


# --- preprocessing -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", list(TASKS))
def test_whitespace_binaries_decode_to_the_tsv_rows(task, glue_dir, tmp_path):
    root, rows = glue_dir
    spec = TASKS[task]
    summary = prepare_glue_task(root, task, tmp_path / "bin", TokenizerSpec("whitespace"))
    out = tmp_path / "bin"
    names = {"train": "train", "valid": spec.dev[0], "test": spec.test[0]}
    if task == "MNLI":
        names.update(valid1="dev_mismatched", test1="test_mismatched")
    assert summary["rows"] == {split: len(rows[task][stem]) for split, stem in names.items()}
    dictionary = Dictionary.load(str(out / "input0" / "dict.txt"))
    assert (out / "input1").is_dir() == (len(spec.inputs) == 2)
    for split, stem in names.items():
        for i in range(len(spec.inputs)):
            assert decode(out / f"input{i}" / split, dictionary) == [row[i] for row in rows[task][stem]]
        labels = [row[2] for row in rows[task][stem]]
        if split.startswith("test"):
            assert not list((out / "label").glob(f"{split}.*"))
        elif spec.regression:
            values = [float(v) for v in (out / "label" / f"{split}.label").read_text().split("\n")[:-1]]
            assert values == pytest.approx([float(v) / 5 for v in labels])
        else:
            assert decode(out / "label" / split, Dictionary.load(str(out / "label" / "dict.txt"))) == labels
    if len(spec.inputs) == 2:  # sentence_prediction reads input1 with input0's dictionary
        assert (out / "input1" / "dict.txt").read_text() == (out / "input0" / "dict.txt").read_text()
    if not spec.regression:  # the label dictionary lists the classes in the table's order: class k = classes[k]
        label_dict = Dictionary.load(str(out / "label" / "dict.txt"))
        assert label_dict.symbols[label_dict.nspecial:] == list(spec.classes)
    assert json.loads((out / "glue_task.json").read_text())["fairseq_train_flags"] == fairseq_train_flags(task)


@pytest.mark.parametrize("task", ["RTE", "STS-B", "MNLI"])
def test_fairseq_sentence_prediction_task_loads_targets_in_class_order(task, glue_dir, tmp_path):
    root, rows = glue_dir
    spec = TASKS[task]
    prepare_glue_task(root, task, tmp_path / "bin", TokenizerSpec("whitespace"))
    cfg = TaskConfig(data=str(tmp_path / "bin"), num_classes=spec.num_classes, regression_target=spec.regression,
                     no_shuffle=True, init_token=0, separator_token=2, seed=1, max_positions=64)
    fairseq_task = SentencePredictionTask.setup_task(cfg)
    split, stem = ("valid1", "dev_mismatched") if task == "MNLI" else ("valid", "dev")
    fairseq_task.load_dataset(split)
    dataset = fairseq_task.datasets[split]
    targets = [torch.as_tensor(dataset[i]["target"]).tolist() for i in range(len(dataset))]
    labels = [row[2] for row in rows[task][stem]]
    if spec.regression:
        assert [t[0] for t in targets] == pytest.approx([float(v) / 5 for v in labels])
    else:
        assert targets == [[spec.classes.index(label)] for label in labels]


def test_wordpiece_tokens_are_vocabulary_strings(glue_dir, tmp_path):
    pytest.importorskip("tokenizers")
    root, _ = glue_dir
    data = tmp_path / "glue"
    (data / "RTE").mkdir(parents=True)
    header = "index\tsentence1\tsentence2\tlabel\n"
    (data / "RTE" / "train.tsv").write_text(header + "0\tHello helloing the cat.\tThe dog\tentailment\n")
    (data / "RTE" / "dev.tsv").write_text(header + "0\tthe zebra\tHELLO\tnot_entailment\n")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "##ing", "the", "cat", "dog", "."]
    (tmp_path / "vocab.txt").write_text("".join(v + "\n" for v in vocab))
    (tmp_path / "dict.txt").write_text("".join(f"{v} 1\n" for v in vocab[5:]))
    spec = TokenizerSpec("wordpiece", vocab=str(tmp_path / "vocab.txt"), lowercase=True)
    summary = prepare_glue_task(data, "RTE", tmp_path / "bin", spec, srcdict=tmp_path / "dict.txt")
    dictionary = Dictionary.load(str(tmp_path / "bin" / "input0" / "dict.txt"))
    assert decode(tmp_path / "bin" / "input0" / "train", dictionary) == ["hello hello ##ing the cat ."]
    assert decode(tmp_path / "bin" / "input1" / "train", dictionary) == ["the dog"]
    assert decode(tmp_path / "bin" / "input0" / "valid", dictionary) == ["the <unk>"]  # [UNK] is not in the dict
    assert summary["unknown_token_rate"] == {"train": 0.0, "valid": pytest.approx(1 / 3)}
    with pytest.raises(ValueError, match="--srcdict is required"):
        prepare_glue_task(data, "RTE", tmp_path / "bin2", spec)


def _tiny_gpt2_bpe(directory: Path) -> tuple[Path, Path, Path]:
    """A GPT-2 BPE over all 256 bytes plus the merges h+e, l+l, he+ll, hell+o; and a dict.txt of all its ids."""
    symbols = list(bytes_to_unicode().values()) + ["he", "ll", "hell", "hello"]
    encoder = {symbol: i for i, symbol in enumerate(symbols)}
    (directory / "encoder.json").write_text(json.dumps(encoder))
    (directory / "vocab.bpe").write_text("#version: 0.2\nh e\nl l\nhe ll\nhell o\n")
    (directory / "dict.txt").write_text("".join(f"{i} 1\n" for i in range(len(symbols))))
    return directory / "encoder.json", directory / "vocab.bpe", directory / "dict.txt"


def test_gpt2_bpe_ids_decode_back_to_the_text_with_any_number_of_workers(glue_dir, tmp_path):
    root, rows = glue_dir
    encoder_json, vocab_bpe, dict_txt = _tiny_gpt2_bpe(tmp_path)
    spec = TokenizerSpec("gpt2", encoder_json=str(encoder_json), vocab_bpe=str(vocab_bpe))
    prepare_glue_task(root, "MRPC", tmp_path / "one", spec, srcdict=dict_txt, workers=1)
    prepare_glue_task(root, "MRPC", tmp_path / "two", spec, srcdict=dict_txt, workers=2)
    encoder = get_encoder(str(encoder_json), str(vocab_bpe))
    dictionary = Dictionary.load(str(dict_txt))
    lines = decode(tmp_path / "one" / "input0" / "train", dictionary)
    assert [encoder.decode([int(t) for t in line.split()]) for line in lines] == [r[0] for r in rows["MRPC"]["train"]]
    assert encoder.encode("hello") == [259]  # the merges apply
    for split in ("train", "valid", "test"):
        for field in ("input0", "input1"):
            one = (tmp_path / "one" / field / f"{split}.bin").read_bytes()
            assert one == (tmp_path / "two" / field / f"{split}.bin").read_bytes()


def test_max_train_keeps_a_seeded_sample_in_file_order(glue_dir, tmp_path):
    root, rows = glue_dir
    prepare_glue_task(root, "SST-2", tmp_path / "a", TokenizerSpec("whitespace"), max_train=3, seed=1)
    prepare_glue_task(root, "SST-2", tmp_path / "b", TokenizerSpec("whitespace"), max_train=3, seed=1)
    dictionary = Dictionary.load(str(tmp_path / "a" / "input0" / "dict.txt"))
    kept = decode(tmp_path / "a" / "input0" / "train", dictionary)
    all_train = [row[0] for row in rows["SST-2"]["train"]]
    assert len(kept) == 3
    assert [s for s in all_train if s in kept] == kept  # a subsequence, in file order
    same_sample = (tmp_path / "b" / "input0" / "train.bin").read_bytes()
    assert (tmp_path / "a" / "input0" / "train.bin").read_bytes() == same_sample
    assert len(decode(tmp_path / "a" / "input0" / "valid", dictionary)) == len(rows["SST-2"]["dev"])  # dev whole


def test_second_run_is_a_no_op_and_other_options_need_force(glue_dir, tmp_path):
    root, _ = glue_dir
    out = tmp_path / "bin"
    prepare_glue_task(root, "CoLA", out, TokenizerSpec("whitespace"))
    mtime = (out / "input0" / "train.bin").stat().st_mtime_ns
    assert prepare_glue_task(root, "CoLA", out, TokenizerSpec("whitespace"))["up_to_date"]
    assert (out / "input0" / "train.bin").stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="--force"):
        prepare_glue_task(root, "CoLA", out, TokenizerSpec("whitespace"), max_train=2)
    summary = prepare_glue_task(root, "CoLA", out, TokenizerSpec("whitespace"), max_train=2, force=True)
    assert summary["rows"]["train"] == 2 and "up_to_date" not in summary
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no build directory left behind


def test_missing_dev_split_is_named(tmp_path, glue_dir):
    root, _ = glue_dir
    data = tmp_path / "glue"
    shutil.copytree(root / "MNLI", data / "MNLI")
    (data / "MNLI" / "dev_mismatched.tsv").unlink()
    with pytest.raises(FileNotFoundError, match=r"dev_mismatched\.tsv: no such file"):
        prepare_glue_task(data, "MNLI", tmp_path / "bin", TokenizerSpec("whitespace"))
    assert not (tmp_path / "bin").exists()


@pytest.mark.parametrize(
    ("task", "content", "message"),
    [
        ("RTE", "index\tpremise\thypothesis\tlabel\n0\ta\tb\tentailment\n",
         r"expected the columns \['sentence1', 'sentence2', 'label'\] in the header"),
        ("RTE", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\n", r"line 2: expected 4 tab-separated fields"),
        ("RTE", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tyes\n",
         r"line 2: label 'yes' in column 'label' is not one of \['entailment', 'not_entailment'\]"),
        ("CoLA", "index\tsentence\n0\ta\n", r"line 1: expected 4 tab-separated fields .* \(no header\)"),
        ("STS-B", HEADERS["STS-B"][0] + "\n" + _row("STS-B", 0, "a", "b", "high") + "\n", r"expected a number"),
    ],
)  # fmt: skip
def test_wrong_columns_are_named_with_the_file_and_the_expected_columns(task, content, message, tmp_path, glue_dir):
    root, _ = glue_dir
    data = tmp_path / "glue"
    shutil.copytree(root / task, data / task)
    (data / task / "train.tsv").write_text(content)
    with pytest.raises(GlueFormatError, match=message) as err:
        prepare_glue_task(data, task, tmp_path / "bin", TokenizerSpec("whitespace"))
    assert str(data / task / "train.tsv") in str(err.value)


def test_qqp_drops_malformed_rows_as_fairseq_does(tmp_path, glue_dir):
    root, rows = glue_dir
    data = tmp_path / "glue"
    shutil.copytree(root / "QQP", data / "QQP")
    with open(data / "QQP" / "train.tsv", "a") as f:
        f.write("99\t1\t2\tonly one question\n")
    summary = prepare_glue_task(data, "QQP", tmp_path / "bin", TokenizerSpec("whitespace"))
    assert summary["rows"]["train"] == len(rows["QQP"]["train"])
    assert summary["dropped_malformed"] == {"train": 1}


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert main([str(tmp_path), "RTE", str(tmp_path / "bin"), "--whitespace"]) == 1
    assert "RTE/train.tsv: no such file" in capsys.readouterr().err
    assert main([str(tmp_path), "XNLI", str(tmp_path / "bin"), "--whitespace"]) == 1
    assert "allowed: CoLA, SST-2, MRPC, QQP, STS-B, MNLI, QNLI, RTE, WNLI" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), "RTE", str(tmp_path / "bin"), "--bpe", "gpt2"])
    assert "--encoder-json" in capsys.readouterr().err


def test_preproc_bash_binarises_a_task(glue_dir, tmp_path):
    root, _ = glue_dir
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable)
    cmd = ["bash", str(REPO / "scripts" / "preproc.bash"), str(root), "WNLI", str(tmp_path / "bin"), "--whitespace"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--num-classes 2 --best-checkpoint-metric accuracy" in proc.stdout
    assert {p.name for p in (tmp_path / "bin").iterdir()} == {"input0", "input1", "label", "glue_task.json"}


@pytest.mark.skipif(not (SHARED_GLUE / "RTE" / "train.tsv").is_file(), reason="no GLUE data in ../shared/glue")
@pytest.mark.parametrize("task", ["RTE", "MRPC"])
def test_real_glue_files_binarise(task, tmp_path):
    summary = prepare_glue_task(SHARED_GLUE, task, tmp_path / "bin", TokenizerSpec("whitespace"), max_train=50)
    assert summary["rows"]["train"] == 50
    assert summary["rows"]["valid"] == {"RTE": 277, "MRPC": 408}[task]


# --- download_glue.py: unpacking local archives ------------------------------------------------------------------


def _zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return path


def test_unpack_keeps_the_tsv_files_beside_train_tsv(tmp_path):
    archive = _zip(tmp_path / "MNLI.zip", {
        "MNLI/train.tsv": "t\n", "MNLI/dev_matched.tsv": "dm\n", "MNLI/dev_mismatched.tsv": "dmm\n",
        "MNLI/test_matched.tsv": "tm\n", "MNLI/README.txt": "r", "MNLI/original/train.tsv": "orig\n",
        "__MACOSX/MNLI/._train.tsv": "junk",
    })  # fmt: skip
    written = download_glue.unpack_task_archive(archive, "MNLI", tmp_path / "glue")
    assert [p.name for p in written] == ["dev_matched.tsv", "dev_mismatched.tsv", "test_matched.tsv", "train.tsv"]
    assert (tmp_path / "glue" / "MNLI" / "train.tsv").read_text() == "t\n"
    assert not (tmp_path / "glue" / "MNLI" / "original").exists()
    with pytest.raises(FileExistsError, match="train.tsv"):
        download_glue.unpack_task_archive(archive, "MNLI", tmp_path / "glue")
    download_glue.unpack_task_archive(archive, "MNLI", tmp_path / "glue", force=True)


def test_unpack_names_a_bad_archive(tmp_path):
    (tmp_path / "bad.zip").write_text("not a zip")
    with pytest.raises(ValueError, match="bad.zip: not a zip archive"):
        download_glue.unpack_task_archive(tmp_path / "bad.zip", "RTE", tmp_path / "glue")
    archive = _zip(tmp_path / "RTE.zip", {"RTE/dev.tsv": "d\n"})
    with pytest.raises(ValueError, match="RTE.zip: no train.tsv"):
        download_glue.unpack_task_archive(archive, "RTE", tmp_path / "glue")


MSR_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n"


def _mrpc_sources(directory: Path) -> tuple[Path, Path, Path]:
    """MSR paraphrase files as Microsoft's MSI holds them (BOM, CRLF), and GLUE's dev id pairs."""
    directory.mkdir(parents=True, exist_ok=True)
    train = directory / "msr_paraphrase_train.txt"
    train.write_bytes((MSR_HEADER + "1\t11\t12\tA cat sat.\tThe cat sat.\r\n0\t21\t22\tA dog.\tNo dog.\r\n"
                       "1\t31\t32\tHi there.\tHello there.\r\n").encode("utf-8"))  # fmt: skip
    test = directory / "msr_paraphrase_test.txt"
    test.write_bytes((MSR_HEADER + "1\t41\t42\tOne.\tOne!\r\n0\t51\t52\tTwo.\tThree.\r\n").encode("utf-8"))
    dev_ids = directory / "mrpc_dev_ids.tsv"
    dev_ids.write_text("21\t22\n")
    return train, test, dev_ids


def test_format_mrpc_splits_train_into_glue_train_and_dev_by_the_dev_ids(tmp_path):
    written = download_glue.format_mrpc(*_mrpc_sources(tmp_path / "src"), tmp_path / "glue")
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    assert [p.name for p in written] == ["train.tsv", "dev.tsv", "test.tsv"]
    mrpc = tmp_path / "glue" / "MRPC"
    assert (mrpc / "train.tsv").read_text() == (header + "1\t11\t12\tA cat sat.\tThe cat sat.\n"
                                                "1\t31\t32\tHi there.\tHello there.\n")  # fmt: skip
    assert (mrpc / "dev.tsv").read_text() == header + "0\t21\t22\tA dog.\tNo dog.\n"
    assert (mrpc / "test.tsv").read_text() == ("index\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                                               "0\t41\t42\tOne.\tOne!\n1\t51\t52\tTwo.\tThree.\n")  # fmt: skip
    summary = prepare_glue_task(tmp_path / "glue", "MRPC", tmp_path / "bin", TokenizerSpec("whitespace"))
    assert summary["rows"] == {"train": 2, "valid": 1, "test": 2}


def test_format_mrpc_names_dev_ids_missing_from_train(tmp_path):
    train, test, dev_ids = _mrpc_sources(tmp_path / "src")
    dev_ids.write_text("21\t22\n99\t98\n")
    with pytest.raises(ValueError, match=r"1 dev id pairs are not in .*msr_paraphrase_train.txt"):
        download_glue.format_mrpc(train, test, dev_ids, tmp_path / "glue")
    assert not (tmp_path / "glue" / "MRPC").exists()


def test_download_task_runs_offline_through_its_fetch_layer(tmp_path):
    rte = _zip(tmp_path / "RTE.zip", {"RTE/train.tsv": "t\n", "RTE/dev.tsv": "d\n"})
    sources = {download_glue.TASK_URLS["RTE"]: rte}
    train, test, dev_ids = _mrpc_sources(tmp_path / "src")
    sources.update(zip(download_glue.MRPC_URLS.values(), (train, test, dev_ids)))
    fetched = []

    def fake_fetch(url: str, dest: Path) -> Path:
        fetched.append(url)
        shutil.copy(sources[url], dest)
        return dest

    out = tmp_path / "glue"
    assert [p.name for p in download_glue.download_task("RTE", out, fetch_url=fake_fetch)] == ["dev.tsv", "train.tsv"]
    assert len(download_glue.download_task("MRPC", out, fetch_url=fake_fetch)) == 3
    assert download_glue.download_task("RTE", out, fetch_url=fake_fetch) == []  # present: skipped, nothing fetched
    assert len(fetched) == 4
    assert sorted(p.name for p in out.iterdir()) == ["MRPC", "RTE"]  # no temporary files left
    (out / "MRPC" / "train.tsv").unlink()  # local MSR files (as extracted from the MSI), dev ids beside them
    assert len(download_glue.download_task("MRPC", out, mrpc_dir=str(tmp_path / "src"), force=True,
                                           fetch_url=fake_fetch)) == 3  # fmt: skip
    assert len(fetched) == 4


def test_fetch_failure_names_the_url(tmp_path):
    url = (tmp_path / "nowhere.zip").as_uri()
    with pytest.raises(download_glue.DownloadError, match=f"could not download {url}"):
        download_glue.fetch(url, tmp_path / "x.zip")
    assert not list(tmp_path.iterdir())


def test_parse_tasks_accepts_any_case_and_all_and_names_the_allowed_tasks():
    assert download_glue.parse_tasks("cola,SST-2,mrpc") == ["CoLA", "SST-2", "MRPC"]
    assert download_glue.parse_tasks("all") == list(TASKS)
    assert download_glue.TASKS == tuple(TASKS)
    with pytest.raises(ValueError, match="allowed: CoLA, SST-2, MRPC, QQP, STS-B, MNLI, QNLI, RTE, WNLI or all"):
        download_glue.parse_tasks("CoLA,SNLI")

"""Tests for ``fairseq_quant/data/default_task.py`` and ``scripts/prepare_default_task.sh``: the embedded default
task."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from fairseq_quant.data.default_task import (
    LABEL_NOISE,
    MAX_TOKENS,
    MIN_TOKENS,
    generate_split,
    main,
    make_default_task,
    rule_label,
    sentiment_score,
)

REPO = Path(__file__).resolve().parents[2]  # the repository
# Measured for seed 0 at the default sizes (8000 train, 1000 dev): bag-of-words logistic regression 0.XXX on dev.
BAG_OF_WORDS_BOUND = 0.75


def read_tsv(path: Path) -> list[tuple[str, int]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "sentence\tlabel"
    rows = [line.split("\t") for line in lines[1:]]
    assert all(len(row) == 2 for row in rows)
    return [(sentence, int(label)) for sentence, label in rows]


@pytest.fixture(scope="module")
def default_splits() -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """The default task as the quickstart makes it: seed 0, 8000 train, 1000 dev."""
    return generate_split(8000, 0, "train"), generate_split(1000, 0, "dev")


@pytest.mark.parametrize(
    ("sentence", "score"),
    [
        ("the plot was good", 1),
        ("an excellent film", 2),
        ("very good", 2),
        ("not good", -1),
        ("never awful", 2),
        ("the plot was not very good", -2),
        ("not the good", 1),  # a neutral word between: out of the negator's reach
        ("very not good", -1),  # an intensifier before a negator does nothing
        ("not not good", -1),  # only the word right before counts: no double negation
        ("never dull and awful", -1),
        ("the cast and the music", 0),
    ],
)
def test_sentiment_score_by_hand(sentence: str, score: int) -> None:
    assert sentiment_score(sentence.split()) == score


def test_same_seed_gives_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    first = make_default_task(tmp_path / "a", n_train=300, n_dev=100, seed=7)
    again = make_default_task(tmp_path / "b", n_train=300, n_dev=100, seed=7)
    other = make_default_task(tmp_path / "c", n_train=300, n_dev=100, seed=8)
    for split in ("train", "dev"):
        assert getattr(first, split).read_bytes() == getattr(again, split).read_bytes()
        assert getattr(first, split).read_bytes() != getattr(other, split).read_bytes()


def test_dev_split_does_not_depend_on_n_train() -> None:
    assert generate_split(50, 3, "dev") == generate_split(50, 3, "dev")
    assert generate_split(50, 3, "dev") != generate_split(50, 3, "train")


def test_format_header_two_columns_binary_balanced_lengths(default_splits) -> None:
    for rows in default_splits:
        labels = [label for _, label in rows]
        assert set(labels) == {0, 1}
        # Clean labels are exactly half ones; the 3% flips move the balance by well under a point.
        assert abs(sum(labels) / len(labels) - 0.5) < 0.01
        lengths = [len(sentence.split()) for sentence, _ in rows]
        assert min(lengths) >= MIN_TOKENS and max(lengths) <= MAX_TOKENS
        assert all("\t" not in sentence and sentence == sentence.strip() for sentence, _ in rows)


def test_written_files_hold_the_generated_rows(tmp_path: Path) -> None:
    paths = make_default_task(tmp_path, n_train=120, n_dev=40, seed=1)
    assert read_tsv(paths.train) == generate_split(120, 1, "train")
    assert read_tsv(paths.dev) == generate_split(40, 1, "dev")


def test_labels_follow_the_rule_except_exactly_the_noise(default_splits) -> None:
    for rows in default_splits:
        assert all(sentiment_score(sentence.split()) != 0 for sentence, _ in rows)
        disagree = sum(rule_label(sentence) != label for sentence, label in rows)
        assert disagree == round(LABEL_NOISE * len(rows))


def test_noise_zero_gives_the_rule_exactly() -> None:
    assert all(rule_label(sentence) == label for sentence, label in generate_split(300, 0, "train", noise=0.0))


def test_bag_of_words_is_clearly_worse_than_the_rule(default_splits) -> None:
    train, dev = default_splits
    vectorizer = CountVectorizer(token_pattern=r"\S+")
    features = vectorizer.fit_transform([sentence for sentence, _ in train])
    classifier = LogisticRegression(max_iter=2000).fit(features, [label for _, label in train])
    bag_of_words = classifier.score(vectorizer.transform([s for s, _ in dev]), [label for _, label in dev])
    rule = sum(rule_label(sentence) == label for sentence, label in dev) / len(dev)
    assert rule >= 1 - LABEL_NOISE
    assert 0.5 < bag_of_words < BAG_OF_WORDS_BOUND


def test_refuses_to_overwrite_different_files_unless_forced(tmp_path: Path, capsys) -> None:
    paths = make_default_task(tmp_path, n_train=60, n_dev=20, seed=0)
    mtime = paths.train.stat().st_mtime_ns
    make_default_task(tmp_path, n_train=60, n_dev=20, seed=0)  # same bytes: nothing is rewritten
    assert paths.train.stat().st_mtime_ns == mtime
    before = paths.train.read_bytes(), paths.dev.read_bytes()
    with pytest.raises(FileExistsError, match="train.tsv"):
        make_default_task(tmp_path, n_train=60, n_dev=20, seed=1)
    assert (paths.train.read_bytes(), paths.dev.read_bytes()) == before  # neither split was touched
    assert main([str(tmp_path), "--n-train", "60", "--n-dev", "20", "--seed", "1"]) == 1
    assert "--force" in capsys.readouterr().err
    assert main([str(tmp_path), "--n-train", "60", "--n-dev", "20", "--seed", "1", "--force"]) == 0
    assert read_tsv(paths.train) == generate_split(60, 1, "train")


def test_script_writes_the_sentence_prediction_layout(tmp_path: Path) -> None:
    """The script binarises a small task into bin/{input0,label}; a second run only re-checks."""
    from fairseq.data import Dictionary, data_utils

    env = {**os.environ, "PYTHON": sys.executable}
    command = ["bash", str(REPO / "scripts" / "prepare_default_task.sh"), "task", "--n-train", "200", "--n-dev", "50"]
    first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    bin_dir = tmp_path / "task" / "bin"
    for field in ("input0", "label"):
        for name in ("dict.txt", "train.bin", "train.idx", "valid.bin", "valid.idx"):
            assert (bin_dir / field / name).is_file(), f"missing {field}/{name}"
    # Class k is label k: the label dictionary lists 0 then 1 whatever their frequencies.
    label_dict = Dictionary.load(str(bin_dir / "label" / "dict.txt"))
    assert [label_dict[label_dict.nspecial + k] for k in range(2)] == ["0", "1"]
    source_dict = Dictionary.load(str(bin_dir / "input0" / "dict.txt"))
    for split, tsv in (("train", "train.tsv"), ("valid", "dev.tsv")):
        rows = read_tsv(tmp_path / "task" / "raw" / tsv)
        sentences = data_utils.load_indexed_dataset(str(bin_dir / "input0" / split), source_dict)
        labels = data_utils.load_indexed_dataset(str(bin_dir / "label" / split), label_dict)
        assert len(sentences) == len(labels) == len(rows)
        if split == "train":  # dev may hold words the train dictionary lacks (<unk>)
            assert source_dict.string(sentences[0]) == rows[0][0]
        assert [int(label_dict[int(labels[i][0])]) for i in range(len(rows))] == [label for _, label in rows]

    stamps = {path: path.stat().st_mtime_ns for path in bin_dir.rglob("*") if path.is_file()}
    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.count("up to date") == 2
    assert {path: path.stat().st_mtime_ns for path in bin_dir.rglob("*") if path.is_file()} == stamps

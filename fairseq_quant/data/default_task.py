"""The embedded default task: synthetic two-class sentiment in GLUE SST-2 format, generated from a seed.

The quickstart, the tests and small experiments fine-tune on this task, so they need no download and no network.
It is pure Python (no torch, no fairseq): ``python -m fairseq_quant.data.default_task OUT_DIR`` writes
``OUT_DIR/train.tsv`` and ``OUT_DIR/dev.tsv`` with the header ``sentence<TAB>label``;
``scripts/prepare_default_task.sh`` then binarises them for fairseq's ``sentence_prediction`` task.

The rule (``sentiment_score``): every sentiment word carries a value, +1 or +2 for positive words (``good``,
``excellent``), -1 or -2 for negative ones (``dull``, ``awful``). An intensifier (``very``, ``really``,
``truly``) right before a sentiment word doubles its value; a negator (``not``, ``never``) right before it, or right
before the intensifier in front of it, flips its sign. So ``not very good`` scores -2 and ``never dull`` +1, while
``not the good`` scores +1: a negator reaches only the next word, or the next two when the first is an intensifier.
The score is the sum over the sentence; the clean label is 1 when it is positive and 0 when it is negative
(sentences that score 0 are never generated). Then exactly ``round(noise * n)`` labels per split, ``noise =
LABEL_NOISE = 0.03`` by default, are flipped, so the rule agrees with 97% of the labels.

Two classes, 0 (negative) and 1 (positive). The clean labels are exactly balanced (half of each, one more 1 when
``n`` is odd); the flips move each class by a few examples at most (under 1 point of balance at the default sizes).

Each sentence is 1 to 4 sentiment phrases (``[negator] [intensifier] word``, a negator with probability
``P_NEGATOR``, an intensifier with probability ``P_INTENSIFIER``) shuffled among neutral filler words and, as
distractors, stray negators that negate only when they happen to land right before a sentiment phrase; it is
``MIN_TOKENS`` to ``MAX_TOKENS`` whitespace-separated lowercase tokens long. Because a third of the sentiment words
are negated, the words alone say little: a bag-of-words logistic regression scores about 66% on dev (seed 0,
8000 train, 1000 dev), while anything that reads each word's left neighbours can reach the 97% the rule allows.

Splits are drawn from independent streams (``random.Random(f"{seed}:{split}")``), so the dev set does not depend
on ``n_train``; the same seed gives the same bytes on every run.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "HEADER",
    "LABEL_NOISE",
    "MAX_TOKENS",
    "MIN_TOKENS",
    "DefaultTaskPaths",
    "generate_split",
    "make_default_task",
    "rule_label",
    "sentiment_score",
]

POSITIVE = {
    "good": 1, "nice": 1, "fine": 1, "pleasant": 1, "decent": 1, "fun": 1, "charming": 1, "solid": 1,
    "excellent": 2, "wonderful": 2, "brilliant": 2, "superb": 2, "amazing": 2,
}  # fmt: skip
NEGATIVE = {
    "bad": -1, "dull": -1, "boring": -1, "weak": -1, "poor": -1, "bland": -1, "messy": -1, "tedious": -1,
    "awful": -2, "terrible": -2, "horrible": -2, "dreadful": -2, "atrocious": -2,
}  # fmt: skip
SENTIMENT = {**POSITIVE, **NEGATIVE}
NEGATORS = ("not", "never")
INTENSIFIERS = ("very", "really", "truly")
NEUTRAL = (
    "the", "a", "an", "movie", "film", "plot", "story", "actors", "cast", "script", "was", "is", "and", "it",
    "this", "that", "with", "of", "ending", "scenes", "director", "music", "seemed", "felt", "overall", "at",
    "times", "in", "its", "camera", "dialogue", "pacing", "performance", "characters", "visuals", "sound",
    "score", "by", "for", "on", "from", "as",
)  # fmt: skip

MIN_TOKENS, MAX_TOKENS = 5, 30
MAX_PHRASES = 4
P_NEGATOR = 0.35  # a phrase starts with a negator
P_INTENSIFIER = 0.3  # a phrase has an intensifier before its sentiment word
P_STRAY_NEGATOR = 0.05  # a filler slot holds a negator instead of a neutral word
LABEL_NOISE = 0.03
HEADER = "sentence\tlabel\n"
SPLITS = ("train", "dev")


class DefaultTaskPaths(NamedTuple):
    """Where ``make_default_task`` wrote the splits."""

    train: Path
    dev: Path


def sentiment_score(tokens: Sequence[str]) -> int:
    """Negation-aware sentiment of a tokenised sentence, by the rule in the module docstring.

    ``sentiment_score("the plot was not very good".split()) == -2``;
    ``sentiment_score("never dull and awful".split()) == 1 - 2 == -1``.
    """
    score = 0
    for i, token in enumerate(tokens):
        value = SENTIMENT.get(token)
        if value is None:
            continue
        before = i - 1
        if before >= 0 and tokens[before] in INTENSIFIERS:
            value *= 2
            before -= 1
        if before >= 0 and tokens[before] in NEGATORS:
            value = -value
        score += value
    return score


def rule_label(sentence: str) -> int:
    """The clean label of a whitespace-tokenised sentence: 1 if its ``sentiment_score`` is positive, else 0."""
    return int(sentiment_score(sentence.split()) > 0)


def _sentence(rng: random.Random, label: int) -> list[str]:
    """Draw sentences until one is ``MIN_TOKENS``..``MAX_TOKENS`` long, scores non-zero and has clean ``label``."""
    sentiment_words = sorted(SENTIMENT)
    while True:
        length = rng.randint(MIN_TOKENS, MAX_TOKENS)
        pieces = []
        for _ in range(rng.randint(1, MAX_PHRASES)):
            phrase = [rng.choice(NEGATORS)] if rng.random() < P_NEGATOR else []
            if rng.random() < P_INTENSIFIER:
                phrase.append(rng.choice(INTENSIFIERS))
            phrase.append(rng.choice(sentiment_words))
            pieces.append(phrase)
        n_fillers = length - sum(len(phrase) for phrase in pieces)
        if n_fillers < 0:
            continue
        for _ in range(n_fillers):
            pieces.append([rng.choice(NEGATORS) if rng.random() < P_STRAY_NEGATOR else rng.choice(NEUTRAL)])
        rng.shuffle(pieces)
        tokens = [token for piece in pieces for token in piece]
        score = sentiment_score(tokens)
        if score != 0 and int(score > 0) == label:
            return tokens


def generate_split(n: int, seed: int, split: str, noise: float = LABEL_NOISE) -> list[tuple[str, int]]:
    """``n`` (sentence, label) pairs of one split; labels are ints in {0, 1}.

    Clean labels are exactly balanced (``(n + 1) // 2`` ones), in random order; then exactly ``round(noise * n)``
    of them, at random positions, are flipped. Deterministic in (``n``, ``seed``, ``split``, ``noise``).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    rng = random.Random(f"{seed}:{split}")
    labels = [1] * ((n + 1) // 2) + [0] * (n // 2)
    rng.shuffle(labels)
    sentences = [" ".join(_sentence(rng, label)) for label in labels]
    for i in rng.sample(range(n), round(noise * n)):
        labels[i] = 1 - labels[i]
    return list(zip(sentences, labels))


def _tsv(rows: list[tuple[str, int]]) -> bytes:
    return (HEADER + "".join(f"{sentence}\t{label}\n" for sentence, label in rows)).encode("utf-8")


def make_default_task(
    out_dir: str | os.PathLike,
    n_train: int = 8000,
    n_dev: int = 1000,
    seed: int = 0,
    noise: float = LABEL_NOISE,
    force: bool = False,
) -> DefaultTaskPaths:
    """Write ``out_dir/train.tsv`` and ``out_dir/dev.tsv`` (GLUE SST-2 layout) and return their paths.

    A file that already holds exactly these bytes is left untouched (its modification time too, so build steps
    downstream stay up to date). A file that holds anything else raises ``FileExistsError`` unless ``force``;
    the check covers both splits before either is written.
    """
    out = Path(out_dir)
    contents = {
        "train": _tsv(generate_split(n_train, seed, "train", noise)),
        "dev": _tsv(generate_split(n_dev, seed, "dev", noise)),
    }
    paths = DefaultTaskPaths(train=out / "train.tsv", dev=out / "dev.tsv")
    stale = [path for split, path in zip(SPLITS, paths) if path.exists() and path.read_bytes() != contents[split]]
    if stale and not force:
        names = ", ".join(str(path) for path in stale)
        raise FileExistsError(f"{names} exists with different content; pass force=True (--force) to overwrite")
    out.mkdir(parents=True, exist_ok=True)
    for split, path in zip(SPLITS, paths):
        if path.exists() and path.read_bytes() == contents[split]:
            continue
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(contents[split])
        os.replace(tmp, path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m fairseq_quant.data.default_task OUT_DIR [--n-train N] [--n-dev N] [--seed S] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m fairseq_quant.data.default_task",
        description="Write the synthetic default task (GLUE SST-2 format: train.tsv, dev.tsv) to OUT_DIR.",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="directory for train.tsv and dev.tsv")
    parser.add_argument("--n-train", type=int, default=8000, help="training examples (default: 8000)")
    parser.add_argument("--n-dev", type=int, default=1000, help="dev examples (default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--noise", type=float, default=LABEL_NOISE, help=f"fraction of flipped labels (default: {LABEL_NOISE})"
    )
    parser.add_argument("--force", action="store_true", help="overwrite train.tsv/dev.tsv that differ")
    args = parser.parse_args(argv)
    for flag in ("n_train", "n_dev"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
    if not 0.0 <= args.noise <= 1.0:
        parser.error(f"--noise must be in [0, 1], got {args.noise}")
    try:
        paths = make_default_task(args.out_dir, args.n_train, args.n_dev, args.seed, args.noise, args.force)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

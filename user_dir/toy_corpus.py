"""A toy language pair for translation examples and tests, generated from a seed.

Pure Python (no torch, no fairseq): ``python user_dir/toy_corpus.py OUT_DIR`` writes ``OUT_DIR/{train,valid,test}.
{src,tgt}``, one sentence a line, whitespace-tokenised, lowercase.

Source sentences come from a small English-like grammar::

    S  -> NP V NP [P NP]          NP -> DET ADJ{0,2} N

over 6 determiners, 12 adjectives, 18 nouns, 10 transitive verbs and 6 prepositions ("the old farmer feeds a
small red horse near the river"). The target is a word-by-word dictionary translation (``LEXICON``: every source
word has exactly one made-up target word, e.g. ``farmer -> pelu``) with deterministic reorderings, Japanese-like:

- adjectives follow their noun, in the source order (``small red horse -> horse' small' red'``);
- the prepositional phrase moves in front of the object and its preposition becomes a postposition;
- the verb goes last (subject [NP P] object verb).

So "the old farmer feeds a small red horse near the river" becomes
``the' farmer' old' the' river' near' a' horse' small' red' feeds'`` (primes: the target words). ``translate``
computes the target from the source, so the pair is exactly learnable and BLEU is meaningful: a model that
learned the lexicon and the three reorderings scores 100.

Splits: unique sentences are drawn from one stream, ``random.Random(f"toy-corpus:{seed}")``, test first, then
valid, then train, each skipping sentences already drawn, so test and valid never overlap train, and they do not
depend on ``n_train``. The lexicon is fixed (it does not depend on ``seed``). The same arguments give the same
bytes on every run, and files that already hold those bytes are left untouched (idempotent, mtimes kept).
"""
from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["LEXICON", "SEED", "SPLITS", "make_corpus", "sample_sentence", "translate"]

SEED = 1
SPLITS = ("train", "valid", "test")

DETERMINERS = ("the", "a", "this", "that", "every", "some")
ADJECTIVES = ("big", "small", "red", "old", "young", "happy", "quiet", "green", "tall", "lazy", "clever", "brave")
NOUNS = (
    "cat", "dog", "bird", "fish", "horse", "farmer", "teacher", "child", "king",
    "girl", "boy", "wolf", "house", "tree", "river", "garden", "city", "boat",
)  # fmt: skip
VERBS = ("sees", "likes", "follows", "finds", "helps", "watches", "visits", "feeds", "calls", "knows")
PREPOSITIONS = ("near", "behind", "under", "with", "in", "from")


def _make_lexicon() -> dict[str, str]:
    """One made-up target word (two or three consonant-vowel syllables) per source word; fixed forever."""
    rng = random.Random("toy-corpus:lexicon")
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    lexicon, used = {}, set()
    for word in (*DETERMINERS, *ADJECTIVES, *NOUNS, *VERBS, *PREPOSITIONS):
        while True:
            target = "".join(rng.choices(syllables, k=rng.choice((2, 3))))
            if target not in used:
                break
        used.add(target)
        lexicon[word] = target
    return lexicon


LEXICON = _make_lexicon()


def _noun_phrase(rng: random.Random) -> list[str]:
    n_adj = rng.choices((0, 1, 2), weights=(4, 4, 2))[0]
    return [rng.choice(DETERMINERS), *rng.sample(ADJECTIVES, n_adj), rng.choice(NOUNS)]


def sample_sentence(rng: random.Random) -> str:
    """One source sentence of the grammar (5 to 15 words), drawn from ``rng``."""
    words = _noun_phrase(rng) + [rng.choice(VERBS)] + _noun_phrase(rng)
    if rng.random() < 0.5:
        words += [rng.choice(PREPOSITIONS)] + _noun_phrase(rng)
    return " ".join(words)


def _split_noun_phrases(words: list[str]) -> list[list[str]]:
    """Chunks of ``words``: each noun phrase (DET ADJ* N) is one chunk, any other word a chunk of its own."""
    chunks, np_ = [], []
    for w in words:
        if w in DETERMINERS or w in ADJECTIVES:
            np_.append(w)
        elif w in NOUNS:
            chunks.append(np_ + [w])
            np_ = []
        else:
            chunks.append([w])
    if np_:
        chunks.append(np_)  # a noun phrase without its noun: not a sentence of the grammar
    return chunks


def translate(sentence: str) -> str:
    """The target of a source ``sentence`` of the grammar (see the module docstring); raises on other input.

    >>> translate("the old farmer feeds a small red horse near the river") == " ".join(LEXICON[w] for w in
    ...     "the farmer old the river near a horse small red feeds".split())
    True
    """
    chunks = _split_noun_phrases(sentence.split())
    if len(chunks) not in (3, 5) or chunks[1][0] not in VERBS:
        raise ValueError(f"not a sentence of the toy grammar: {sentence!r}")
    subj, (verb,), obj = chunks[0], chunks[1], chunks[2]
    pp = chunks[3:5]
    nps = [subj, obj] + pp[1:]
    if any(c[0] not in DETERMINERS or c[-1] not in NOUNS for c in nps) or (pp and pp[0][0] not in PREPOSITIONS):
        raise ValueError(f"not a sentence of the toy grammar: {sentence!r}")

    def np_order(c: list[str]) -> list[str]:
        return [c[0], c[-1], *c[1:-1]]  # DET ADJ* N -> DET N ADJ*

    order = np_order(subj) + (np_order(pp[1]) + pp[0] if pp else []) + np_order(obj) + [verb]
    return " ".join(LEXICON[w] for w in order)


def _draw(n_by_split: dict[str, int], seed: int) -> dict[str, list[str]]:
    rng = random.Random(f"toy-corpus:{seed}")
    seen: set[str] = set()
    splits = {}
    for split in ("test", "valid", "train"):
        sents = []
        while len(sents) < n_by_split[split]:
            s = sample_sentence(rng)
            if s not in seen:
                seen.add(s)
                sents.append(s)
        splits[split] = sents
    return splits


def _write_if_changed(path: Path, text: str) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


def make_corpus(out_dir: str | Path, n_train: int = 20000, n_valid: int = 500, n_test: int = 500,
                seed: int = SEED) -> dict[str, Path]:
    """Write ``out_dir/{split}.{src,tgt}`` for the splits train, valid and test; returns ``{split: prefix}``.

    The prefixes are what ``fairseq-preprocess --trainpref/--validpref/--testpref`` take (with ``--source-lang src
    --target-lang tgt``). Files that already hold the right bytes are not rewritten.
    """
    for name, n in (("n_train", n_train), ("n_valid", n_valid), ("n_test", n_test)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive integer, got {n!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = _draw({"train": n_train, "valid": n_valid, "test": n_test}, seed)
    for split, sents in splits.items():
        _write_if_changed(out / f"{split}.src", "".join(s + "\n" for s in sents))
        _write_if_changed(out / f"{split}.tgt", "".join(translate(s) + "\n" for s in sents))
    return {split: out / split for split in SPLITS}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the toy translation corpus (OUT_DIR/{train,valid,test}."
                                                 "{src,tgt}).")
    parser.add_argument("out_dir")
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--n-valid", type=int, default=500)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    try:
        make_corpus(args.out_dir, args.n_train, args.n_valid, args.n_test, args.seed)
    except ValueError as e:
        parser.error(str(e))
    print(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""fairseq-quant-glue: one GLUE task -> fairseq sentence_prediction binaries (library: data.glue)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from ..data.glue import TASKS, TokenizerSpec, prepare_glue_task


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fairseq-quant-glue",
        description="Binarise one GLUE task (GLUE_DIR/TASK/*.tsv) for fairseq's sentence_prediction task.",
    )
    parser.add_argument("glue_dir", metavar="GLUE_DIR", help="directory holding TASK/train.tsv, TASK/dev.tsv, ...")
    parser.add_argument("task", metavar="TASK", help=f"one of {', '.join(TASKS)}")
    parser.add_argument("out_bin", metavar="OUT_BIN", help="output directory (input0/, input1/, label/)")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--whitespace", action="store_true", help="text is already tokenised: split on whitespace")
    how.add_argument("--bpe", choices=["gpt2"], help="GPT-2 BPE (RoBERTa); needs --encoder-json and --vocab-bpe")
    how.add_argument("--wordpiece", metavar="VOCAB_TXT", help="WordPiece with this vocab.txt (BERT family)")
    parser.add_argument("--encoder-json", metavar="FILE", help="GPT-2 BPE encoder.json")
    parser.add_argument("--vocab-bpe", metavar="FILE", help="GPT-2 BPE vocab.bpe")
    parser.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=True,
                        help="WordPiece: lowercase and strip accents first (default: yes; --no-lowercase for cased)")
    parser.add_argument("--srcdict", metavar="DICT",
                        help="the model's dict.txt (required with --bpe/--wordpiece; default with --whitespace: "
                             "built from the training split)")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="processes (default 1)")
    parser.add_argument("--max-train", type=int, metavar="N",
                        help="keep a random sample of N training rows (seeded by --seed, original order kept)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --max-train sample (default 0)")
    parser.add_argument("--force", action="store_true", help="replace OUT_BIN when it holds other data")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; returns the exit status (0, or 1 with an ``error:`` line on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.bpe and not (args.encoder_json and args.vocab_bpe):
        parser.error("--bpe gpt2 needs --encoder-json FILE and --vocab-bpe FILE")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.bpe:
        spec = TokenizerSpec("gpt2", encoder_json=args.encoder_json, vocab_bpe=args.vocab_bpe)
    elif args.wordpiece:
        spec = TokenizerSpec("wordpiece", vocab=args.wordpiece, lowercase=args.lowercase)
    else:
        spec = TokenizerSpec("whitespace")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # fairseq's workers fork after tokenising
    try:
        summary = prepare_glue_task(args.glue_dir, args.task, args.out_bin, spec, args.srcdict, args.workers,
                                    args.max_train, args.seed, args.force)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if summary.get("up_to_date"):
        print(f"{args.out_bin}: up to date")
    report = {k: summary[k] for k in ("task", "rows", "dropped_malformed", "unknown_token_rate")}
    print(json.dumps(report))
    if args.srcdict and summary["unknown_token_rate"].get("train", 0) > 0.01:
        rate = summary["unknown_token_rate"]["train"]
        print(f"warning: {rate:.1%} of the training tokens are not in {args.srcdict}; does the tokeniser match the "
              f"model's dictionary?", file=sys.stderr)
    print("fairseq-train flags:", " ".join(summary["fairseq_train_flags"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

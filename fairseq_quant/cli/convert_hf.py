"""fairseq-quant-convert-hf HF_DIR OUT_DIR: a Hugging Face encoder -> a fairseq RoBERTa checkpoint
(library: data.convert_hf)."""
from __future__ import annotations

import argparse
import sys
import warnings

from ..data.convert_hf import ConversionError, ConversionWarning, convert


def cli_main(argv: list[str] | None = None) -> None:
    """``fairseq-quant-convert-hf HF_DIR OUT_DIR [--force] [--num-classes N]``."""
    parser = argparse.ArgumentParser(
        prog="fairseq-quant-convert-hf",
        description="Convert a local Hugging Face BERT/RoBERTa encoder into a fairseq RoBERTa checkpoint "
                    "(quant_roberta): OUT_DIR/model.pt, dict.txt, fairseq_args.txt, conversion.json.")
    parser.add_argument("hf_dir", metavar="HF_DIR", help="Hugging Face model directory (config.json, weights, vocab)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="where to write the fairseq checkpoint")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    parser.add_argument("--num-classes", type=int, default=2, metavar="N",
                        help="classes of the classification head that carries BERT's pooler; fine-tune with the "
                             "same --num-classes to keep the pooler (default 2; 0 leaves the pooler out)")
    opts = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConversionWarning)  # printed below, without a source line
            result = convert(opts.hf_dir, opts.out_dir, force=opts.force, num_classes=opts.num_classes)
    except (ConversionError, FileNotFoundError, FileExistsError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    for message in result.warnings:
        print(f"{parser.prog}: warning: {message}", file=sys.stderr)
    print(f"wrote {result.checkpoint} ({result.num_embeddings} embedding rows), {result.dictionary}, "
          f"fairseq_args.txt and conversion.json in {result.out_dir}")
    print("fairseq-train flags:", " ".join(result.fairseq_args))
    sys.stdout.flush()


if __name__ == "__main__":
    cli_main()

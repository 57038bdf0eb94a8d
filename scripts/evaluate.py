#!/usr/bin/env python3
"""evaluate.py: checkpoint + binarized data + split -> the task's metric as one JSON line (also the console
command ``fairseq-quant-evaluate``). See ``fairseq_quant/cli/evaluate.py`` and ``--help``."""
from fairseq_quant.cli.evaluate import cli_main

if __name__ == "__main__":
    cli_main()

"""Tests for ``patches/model_checks_args.py``: a model's ``check_args`` makes bad flag combinations usage errors."""
import pytest
from fairseq import options
from fairseq_quant_patches import model_checks_args
from helpers import TINY_TRAIN

import fairseq_quant  # noqa: F401  (applies every patch, in their order)

BAD = ["data", *TINY_TRAIN, "--quantw", "--measurew"]  # each flag valid, the two together not


def test_model_check_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        options.parse_args_and_arch(options.get_training_parser(), BAD)
    assert e.value.code == 2
    assert "error: --quantw and --measurew cannot be combined" in capsys.readouterr().err


def test_without_the_patch_fairseq_accepts_the_combination():
    unpatched = options.parse_args_and_arch
    while hasattr(unpatched, "__wrapped__"):  # fairseq's own function, under every patch
        unpatched = unpatched.__wrapped__
    args = unpatched(options.get_training_parser(), BAD)
    assert args.quantw and args.measurew  # accepted: only build_model, later, would refuse it


def test_apply_is_idempotent():
    before = options.parse_args_and_arch
    model_checks_args.apply()
    assert options.parse_args_and_arch is before

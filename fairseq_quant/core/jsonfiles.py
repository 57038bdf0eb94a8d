"""JSON configuration files given on the command line (``--cpt-config``, ``--quant-recipe``): reading them with
errors that name the flag and the file, and argparse types that validate them before anything is built."""
from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable

__all__ = ["read_json", "validated_file_type"]


def read_json(path: str, flag: str, error: type[ValueError]):
    """The JSON value in the file at ``path``; raises ``error`` naming ``flag`` when the file is missing or is
    not valid JSON."""
    if not os.path.isfile(path):
        raise error(f"{flag}: no such file: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise error(f"{flag}: {path} is not valid JSON: {e}") from None


def validated_file_type(load: Callable[[str], object], error: type[ValueError]) -> Callable[[str], str]:
    """An argparse type that accepts a path when ``load(path)`` succeeds and turns ``error`` into a usage error."""
    def check(value: str) -> str:
        try:
            load(value)
        except error as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return value

    return check

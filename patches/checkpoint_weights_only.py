"""Placeholder: being written."""


def apply() -> None:
    pass

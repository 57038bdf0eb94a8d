"""Fixes to fairseq itself that no plugin seam reaches, one module per bug.

Installed as the package ``fairseq_quant_patches`` (see ``setup.py``); importing ``fairseq_quant`` applies them.
Each module names the fairseq bug it fixes, exposes ``apply()`` (idempotent) and has a test under ``tests/``
that fails without it.
"""
from importlib import import_module

PATCHES = ("help_lists_model_args", "model_checks_args", "bf16_without_tpu", "checkpoint_weights_only",
           "distributed_on_cpu", "broadcast_object_weights_only", "buffered_iterator_exit")

__all__ = ["PATCHES", "apply_all", "wrap_parse_args_and_arch"]


def apply_all() -> None:
    """Apply every patch in ``PATCHES`` (each is idempotent)."""
    for name in PATCHES:
        import_module(f"{__name__}.{name}").apply()


def wrap_parse_args_and_arch(make_wrapper, marker: str) -> None:
    """Replace ``fairseq.options.parse_args_and_arch`` by ``make_wrapper(current)`` unless the current function
    already carries ``marker`` (so applying a patch twice wraps once); the wrapper gets the marker."""
    from fairseq import options

    current = options.parse_args_and_arch
    if getattr(current, marker, False):
        return
    wrapper = make_wrapper(current)
    setattr(wrapper, marker, True)
    options.parse_args_and_arch = wrapper

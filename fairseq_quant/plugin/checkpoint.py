"""Safe loading of fairseq checkpoints: ``torch.load(weights_only=True)`` with an explicit allowlist.

Since torch 2.6, ``torch.load`` unpickles with ``weights_only=True``: only tensors, containers and
primitive types, plus the globals registered with ``torch.serialization.add_safe_globals``. A fairseq
checkpoint holds, beyond those, exactly the globals in ``FAIRSEQ_SAFE_GLOBALS`` (found by scanning
checkpoints written by ``fairseq-train``, see ``tests/test_checkpoint.py``):

- ``argparse.Namespace``: ``args`` of old checkpoints (the published ``roberta.base``), and ``cfg.model``
  of new ones for models configured through ``add_args`` (RoBERTa among them);
- ``numpy.float64`` scalars, pickled as ``numpy._core.multiarray.scalar`` (``numpy.core.multiarray.scalar``
  before numpy 2) with ``numpy.dtype`` and its ``Float64DType``: ``extra_state["best"]`` and
  ``extra_state["val_loss"]`` when the best-checkpoint metric is computed with numpy
  (``--best-checkpoint-metric acc_and_f1``, ``pearson``, ``spearman``; ``mcc`` and ``f1`` too with older
  scikit-learn, which returned numpy scalars).

Any other global is refused with an ``UnsafeCheckpointError`` that names the file and the globals; the
restricted unpickler stops before calling anything, so refusing a file runs none of its code.
"""
from __future__ import annotations

import argparse
import errno
import os
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

try:
    from numpy._core.multiarray import scalar as _numpy_scalar
except ImportError:  # numpy < 2
    from numpy.core.multiarray import scalar as _numpy_scalar

__all__ = [
    "FAIRSEQ_SAFE_GLOBALS",
    "UnsafeCheckpointError",
    "load_checkpoint",
    "raising_unsafe_checkpoint_error",
    "register_safe_globals",
]

FAIRSEQ_SAFE_GLOBALS: tuple[Any, ...] = (
    argparse.Namespace,
    _numpy_scalar,
    np.dtype,
    type(np.dtype(np.float64)),  # numpy.dtypes.Float64DType
)

# numpy 2 moved numpy.core to numpy._core; a checkpoint names the scalar's module as written when saved.
_SAFE_GLOBAL_ALIASES: tuple[tuple[Any, str], ...] = (
    (_numpy_scalar, "numpy.core.multiarray.scalar"),
    (_numpy_scalar, "numpy._core.multiarray.scalar"),
)

# How torch's restricted unpickler names what it refused: a pickled global (its message writes builtins
# without their module), or the class of an object it was asked to create or set state on.
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module)")
_REFUSED_CLASS = re.compile(r"but got <class '([^']+)'>")

class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds globals outside ``FAIRSEQ_SAFE_GLOBALS``; it was refused and nothing in it ran."""

    def __init__(self, path: str | os.PathLike, unsafe_globals: list[str]) -> None:
        self.path = os.fspath(path)
        self.unsafe_globals = unsafe_globals
        super().__init__(
            f"Refusing to load checkpoint {self.path}: it holds global(s) {', '.join(unsafe_globals)} "
            "not on fairseq-quant's allowlist (fairseq_quant.plugin.checkpoint.FAIRSEQ_SAFE_GLOBALS). Unpickling "
            "them could run code from the file; nothing was run. If you trust the file and these are "
            "plain data types, allowlist them with torch.serialization.add_safe_globals."
        )


def register_safe_globals() -> None:
    """Add ``FAIRSEQ_SAFE_GLOBALS`` to torch's ``weights_only`` allowlist, process-wide (idempotent)."""
    torch.serialization.add_safe_globals([*FAIRSEQ_SAFE_GLOBALS, *_SAFE_GLOBAL_ALIASES])


def _refused_globals(path: str, error: pickle.UnpicklingError) -> list[str]:
    """The file's globals that are not allowlisted, or, where it cannot be scanned, the one torch names."""
    message = str(error)
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (OSError, ValueError, RuntimeError):  # legacy (pre-zip) format, or a remote path
        found = []
    if not found:
        found = _REFUSED_GLOBAL.findall(message)
    return sorted(set(found) | set(_REFUSED_CLASS.findall(message)))


@contextmanager
def raising_unsafe_checkpoint_error(path: str | os.PathLike) -> Iterator[None]:
    """Turn torch's refusal of a non-allowlisted global while loading ``path`` into ``UnsafeCheckpointError``.

    The error names every non-allowlisted global of ``path`` when it is a local file in torch's zip
    format, otherwise the one torch refused. Other unpickling errors pass through unchanged.
    """
    try:
        yield
    except UnsafeCheckpointError:
        raise
    except pickle.UnpicklingError as error:
        unsafe = _refused_globals(os.fspath(path), error)
        if not unsafe:
            raise
        raise UnsafeCheckpointError(path, unsafe) from error


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a fairseq checkpoint file onto the CPU, unpickling with ``weights_only=True``.

    Returns the dict as saved (``model``, ``args`` or ``cfg``, ``extra_state``, ...), without fairseq's
    upgrades (for those use ``fairseq.checkpoint_utils.load_checkpoint_to_cpu``, patched to load the same
    way). Raises ``FileNotFoundError`` naming ``path`` when there is no such file, and
    ``UnsafeCheckpointError`` when it holds globals outside ``FAIRSEQ_SAFE_GLOBALS``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, "No fairseq checkpoint file at this path", path)
    register_safe_globals()
    with raising_unsafe_checkpoint_error(path):
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a fairseq checkpoint: it holds a {type(state).__name__}, not a dict")
    return state

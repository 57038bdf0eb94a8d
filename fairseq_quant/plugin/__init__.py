"""Registered fairseq models (importing registers them)."""
from .quant_roberta import QuantRobertaModel

__all__ = ["QuantRobertaModel"]

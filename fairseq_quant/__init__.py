"""fairseq-quant: a fairseq plugin for quantized fine-tuning and evaluation.

Load it with ``fairseq-train --user-dir fairseq_quant`` (or ``import fairseq_quant``): importing registers the
``quant_roberta`` model and its architectures, and applies the fairseq fixes under ``patches/``.
"""
import fairseq_quant_patches

fairseq_quant_patches.apply_all()

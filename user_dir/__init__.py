"""An example user dir: a user's own fairseq model (here fairseq's translation ``transformer``) opting in to
fairseq-quant through the plugin's public API only.

``fairseq-train --user-dir user_dir --arch quant_transformer_tiny --task translation ... --quantw --quantin``:
fairseq imports one ``--user-dir`` package, so this one imports ``fairseq_quant`` itself (which applies the
plugin's fairseq fixes), then its own model module, which registers ``quant_transformer`` and its architectures.
``toy_corpus.py`` (the example's synthetic language pair) is pure Python and is not imported here.
"""
import fairseq_quant  # noqa: F401  (the plugin: its fixes to fairseq, and the API the model uses)

from .quant_transformer import QuantTransformerModel  # noqa: F401  (registers quant_transformer*)

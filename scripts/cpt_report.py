#!/usr/bin/env python3
"""cpt_report.py: fairseq-train logs -> markdown table (final metric, bit operations vs static 8-bit) and a PNG
of the bit schedules. See ``fairseq_quant/cli/cpt_report.py`` and ``--help``."""
import importlib.util
import sys
from pathlib import Path

# Loaded as a file, not `import fairseq_quant.cli.cpt_report`: importing the package imports fairseq (about 6 s), which
# reading logs does not need.
_spec = importlib.util.spec_from_file_location(
    "fairseq_quant_cpt_report", Path(__file__).resolve().parents[1] / "fairseq_quant" / "cli" / "cpt_report.py")
_module = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _module  # dataclasses look their module up
_spec.loader.exec_module(_module)

if __name__ == "__main__":
    _module.main()

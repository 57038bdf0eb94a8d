"""Installs the fairseq-quant plugin (``fairseq_quant``) and its fairseq patches (``fairseq_quant_patches``)."""
from setuptools import find_packages, setup

setup(
    name="fairseq-quant",
    version="0.1.0",
    description="Quantization toolkit for fairseq models: QAT, PTQ, cyclic precision, number formats, kernels",
    python_requires=">=3.9",
    packages=find_packages(include=["fairseq_quant", "fairseq_quant.*"]) + ["fairseq_quant_patches"],
    package_dir={"fairseq_quant_patches": "patches"},
    install_requires=[
        "torch>=2.6",  # safe checkpoint loading needs torch.serialization.add_safe_globals with (obj, name)
        # fairseq 0.12.2 does not import on Python >= 3.11; ve-fairseq is a wheel of fairseq's main branch.
        "fairseq==0.12.2; python_version < '3.11'",
        "ve-fairseq==0.12.3; python_version >= '3.11'",
        "numpy",
        "scipy",
        "scikit-learn",
        "tokenizers",  # WordPiece for BERT-family vocabularies (GLUE preprocessing)
        "safetensors",  # Hugging Face weights for the offline converter
        "matplotlib",  # plots of the CPT report
        "onnx>=1.16",  # ONNX export with the calibrated Q/DQ scales (fairseq_quant/export)
        "onnxruntime>=1.18",  # runs the exported models on the CPU in integer kernels
        # the INT8/FP8 kernels (fairseq_quant/kernels); on the CPU they run in its interpreter (TRITON_INTERPRET=1)
        "triton; platform_system == 'Linux' and platform_machine == 'x86_64'",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist", "ruff", "transformers", "ml_dtypes", "softposit", "hypothesis"],
    },
    entry_points={
        "console_scripts": [
            "fairseq-quant-evaluate=fairseq_quant.cli.evaluate:cli_main",
            "fairseq-quant-convert-hf=fairseq_quant.cli.convert_hf:cli_main",
            "fairseq-quant-sensitivity=fairseq_quant.cli.sensitivity:cli_main",
            "fairseq-quant-export=fairseq_quant.cli.export:cli_main",
            "fairseq-quant-glue=fairseq_quant.cli.glue:main",
            "fairseq-quant-experiment=fairseq_quant.cli.experiment:cli_main",
        ]
    },
)

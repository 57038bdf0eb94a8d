"""ONNX Runtime sessions for exported models (CPU), and ONNX Runtime's own dynamic quantization as the peer."""
from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["DISABLED_OPTIMIZERS", "OrtClassifier", "quantize_dynamic_peer", "session"]

# - DoubleQDQPairsRemover folds Q1 -> DQ1 -> Q2 -> DQ2 into one pair: where two quantization points round one
#   tensor in turn (--quantize-ops act: the GELU's output, then fc2's input), that changes the numbers (logits of
#   the tiny test model 2e-3 off instead of 6e-8);
# - the BiasGelu fusion (bias + erf GELU in one kernel) was slower than its separate Add and Gelu here: RoBERTa-base
#   INT8, 8 x 128 on 2 cores, 271 ms with it, 250 ms without.
DISABLED_OPTIMIZERS = ("DoubleQDQPairsRemover", "BiasGeluFusion")


def session(path: str, threads: int | None = None):
    """An ONNX Runtime CPU session for the model file ``path``, all graph optimisations on (it fuses Q/DQ around
    MatMul into integer GEMMs) except ``DISABLED_OPTIMIZERS``; ``threads`` intra-op threads (default: one per
    core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its notes on the optimised graph are not for users
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(DISABLED_OPTIMIZERS))


class OrtClassifier:
    """``src_tokens -> logits`` through an ONNX Runtime session of an exported model (``export_onnx``)."""

    def __init__(self, path: str, threads: int | None = None):
        self.path = path
        self.session = session(path, threads)
        names = [i.name for i in self.session.get_inputs()]
        if names != ["src_tokens"]:
            raise ValueError(f"{path}: its inputs are {names}; an exported sentence-prediction model takes "
                             f"src_tokens (fairseq-quant-export writes such a model)")

    @property
    def quant(self) -> str | None:
        """The quantization the exporter recorded in the file (``W8A8``, ``FP32``...), if it did."""
        return self.session.get_modelmeta().custom_metadata_map.get("fairseq_quant.quant")

    def __call__(self, src_tokens: torch.Tensor) -> torch.Tensor:
        tokens = src_tokens.detach().cpu().numpy().astype(np.int64, copy=False)
        return torch.from_numpy(self.session.run(["logits"], {"src_tokens": tokens})[0])


def quantize_dynamic_peer(fp32_path: str, out_path: str) -> str:
    """ONNX Runtime's ``quantize_dynamic`` of the FP32 export ``fp32_path`` (int8 weights per tensor, uint8
    activations with ranges computed at run time, its defaults) written to ``out_path``: what a user would run
    without this plugin. Returns ``out_path``."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.WARNING)  # it logs every tensor it leaves alone at INFO
    try:
        quantize_dynamic(fp32_path, out_path, weight_type=QuantType.QInt8)
    finally:
        logging.getLogger().setLevel(quiet)
    import onnx

    proto = onnx.load(out_path)
    props = {p.key: p.value for p in proto.metadata_props}
    props["fairseq_quant.quant"] = "ORT dynamic INT8"
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, out_path)
    return out_path

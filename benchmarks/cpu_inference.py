"""CPU inference: torch FP32 eager against ONNX Runtime (FP32, our static INT8 Q/DQ export, its own quantize_dynamic)
and the plugin's torch INT8 deployment, in one run, on every core.

Models: RoBERTa-base shapes with random weights (``base``) and the pip-shipped all-MiniLM-L6-v2, converted
(``minilm``; a random 2-class head), both W8A8 (weights per channel, inputs per tensor, asymmetric, the attention's
matmul operands too) calibrated on two batches of random sentences. Each row: median milliseconds per batch over
``--repeats`` interleaved rounds after two warm-up calls, the ratio to torch FP32 eager and to ``quantize_dynamic``
(higher is faster), and the largest |logit difference| from the fake-quantized model.

    python benchmarks/cpu_inference.py [--models base,minilm] [--shapes 1x128,8x128] [--json out.json]
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HEAD, build_roberta, print_table, random_tokens, write_json  # noqa: E402

from fairseq_quant.core.recipe import QuantRecipe  # noqa: E402
from fairseq_quant.deploy import export_onnx  # noqa: E402
from fairseq_quant.deploy.runtime import OrtClassifier, quantize_dynamic_peer  # noqa: E402

W8A8 = ["--quantw", "--quantin"]
BASELINE = "torch FP32 eager"
PEER = "ONNX Runtime quantize_dynamic INT8"
COLUMNS = ["model", "shape", "case", "ms", "vs torch FP32", "vs quantize_dynamic", "max |dlogit| vs fake-quant",
           "note"]


def cpu_name() -> str:
    """The processor, its cores and whether it has VNNI (the integer dot-product instructions INT8 kernels use)."""
    model, flags = platform.processor() or "cpu", ""
    if os.path.exists("/proc/cpuinfo"):
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"model name\s*:\s*(.+)", text)
        model = found.group(1).strip() if found else model
        found = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
        flags = found.group(1) if found else ""
    vnni = "VNNI" if re.search(r"\b(avx512_vnni|avx_vnni)\b", flags) else "no VNNI"
    avx = "AVX-512" if "avx512f" in flags.split() else "AVX2" if "avx2" in flags.split() else "no AVX2"
    return f"{model}, {os.cpu_count()} cores, {avx}, {vnni}"


def minilm(flags: list[str]):
    """all-MiniLM-L6-v2 from its pip package, converted to fairseq and built as quant_roberta with ``flags``."""
    from fairseq_quant.data.convert_hf import convert
    from fairseq_quant.data.minilm import minilm_dir
    from fairseq_quant.plugin.quant_roberta import QuantRobertaModel

    out = tempfile.mkdtemp(prefix="minilm-")
    convert(minilm_dir(), out)
    kwargs = {k.lstrip("-").replace("-", "_"): True for k in flags}
    hub = QuantRobertaModel.from_pretrained(out, "model.pt", bpe=None, **kwargs)
    model = hub.model
    if HEAD not in model.classification_heads:
        model.register_classification_head(HEAD, num_classes=2)
    return model


def calibrated(name: str, smoke: bool):
    model = minilm(W8A8) if name == "minilm" else build_roberta(W8A8, "cpu", smoke)
    model.train()
    with torch.no_grad():  # train-mode passes record the input ranges
        for seed in (1, 2):
            model(random_tokens(model, 8, 32 if smoke else 128, seed), features_only=True,
                  classification_head_name=HEAD)
    return model.eval()


def timed(cases: list[tuple], repeats: int) -> list[float]:
    """Median milliseconds per call of each ``(name, fn, n, note)`` case: two warm-up calls each, then ``repeats``
    rounds that call every case once in turn (so a slow phase of a shared machine hits every case alike); a case
    takes part in its first ``n`` rounds only."""
    for _, fn, n, _ in cases:
        for _ in range(min(n, 2)):
            fn()
    times = [[] for _ in cases]
    for r in range(repeats):
        for i, (_, fn, n, _) in enumerate(cases):
            if r < n:
                start = time.perf_counter()
                fn()
                times[i].append(time.perf_counter() - start)
    return [1e3 * statistics.median(t) for t in times]


def main() -> None:
    import logging
    import warnings

    logging.basicConfig(level=logging.WARNING, force=True)
    warnings.filterwarnings("ignore")  # hydra's and the converter's notes on loading the checkpoints
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="base,minilm", help="base (RoBERTa-base shapes) and/or minilm")
    p.add_argument("--shapes", default="1x128,8x128", help="batch x length, comma-separated")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per case (default 10)")
    p.add_argument("--deployed-repeats", type=int, default=1,
                   help="timed calls of the torch._int_mm deployment, the slow one (default 1; 0 skips it)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of torch and ONNX Runtime "
                                                                        "(default: every core)")
    p.add_argument("--smoke", action="store_true", help="the tiny model, short sentences, 1 repeat (a quick check)")
    p.add_argument("--json", metavar="FILE", help="also write the results to FILE as JSON")
    opts = p.parse_args()
    torch.set_num_threads(opts.threads)
    repeats = 1 if opts.smoke else opts.repeats
    shapes = [tuple(int(v) for v in s.split("x")) for s in opts.shapes.split(",")]
    if opts.smoke:
        shapes = [(b, min(n, 16)) for b, n in shapes]
    device = cpu_name()
    print(f"device: {device}; torch {torch.__version__}, {opts.threads} threads")
    rows = []
    with tempfile.TemporaryDirectory(prefix="cpu-inference-") as tmp:
        for name in opts.models.split(","):
            model = calibrated(name, opts.smoke)
            fp32 = copy.deepcopy(model)
            fp32.set_quant_recipe(QuantRecipe.from_dict({"ops": []}))
            paths = {"int8": os.path.join(tmp, f"{name}-int8.onnx"), "fp32": os.path.join(tmp, f"{name}-fp32.onnx"),
                     "dynamic": os.path.join(tmp, f"{name}-dynamic.onnx")}
            export_onnx(model, paths["int8"])
            export_onnx(model, paths["fp32"], fp32=True)
            quantize_dynamic_peer(paths["fp32"], paths["dynamic"])
            sessions = {k: OrtClassifier(v, opts.threads) for k, v in paths.items()}
            deployed = None
            if opts.deployed_repeats > 0:
                from fairseq_quant.deploy import deploy

                deployed = copy.deepcopy(model)
                deploy(deployed, cpu_reference=True)  # on a CPU: torch._int_mm

            def torch_fn(m, tokens):
                return lambda: m(tokens, features_only=True, classification_head_name=HEAD)[0]

            def ort_fn(session, tokens):
                return lambda: session(tokens)

            for batch, length in shapes:
                tokens = random_tokens(model, batch, length, seed=7)
                with torch.no_grad():
                    fake = torch_fn(model, tokens)()
                    cases = [(BASELINE, torch_fn(fp32, tokens), repeats, ""),
                             ("torch W8A8 fake quantization", torch_fn(model, tokens), repeats, "the reference"),
                             ("ONNX Runtime FP32", ort_fn(sessions["fp32"], tokens), repeats, ""),
                             ("ONNX Runtime INT8, our static Q/DQ export", ort_fn(sessions["int8"], tokens), repeats,
                              "calibrated scales"),
                             (PEER, ort_fn(sessions["dynamic"], tokens), repeats, "ranges at run time")]
                    if deployed is not None:
                        cases.append(("torch INT8 deploy() (torch._int_mm)", torch_fn(deployed, tokens),
                                      opts.deployed_repeats, "the CPU fallback of the GPU kernels"))
                    measured = []
                    for (case, fn, _, note), ms in zip(cases, timed(cases, max(n for *_, n, _ in cases))):
                        diff = float((fn().float() - fake.float()).abs().max())
                        measured.append({"model": name, "shape": f"{batch}x{length}", "case": case, "ms": ms,
                                         "max |dlogit| vs fake-quant": diff, "note": note})
                base = next(r["ms"] for r in measured if r["case"] == BASELINE)
                peer = next(r["ms"] for r in measured if r["case"] == PEER)
                for r in measured:
                    r["vs torch FP32"] = base / r["ms"]
                    r["vs quantize_dynamic"] = peer / r["ms"]
                rows += measured
    print_table(rows, COLUMNS)
    write_json(opts.json, {"device": device, "threads": opts.threads, "torch": torch.__version__, "rows": rows})


if __name__ == "__main__":
    main()

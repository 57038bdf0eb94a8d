"""The experiments, as data: each is a list of rows (fine-tune this, evaluate that, export, report) over one task
and model, which ``cli.experiment`` runs. The fine-tuning settings they share live once, in the runner
(``FINETUNE``); an experiment names only what differs (its runs' flags, its updates and learning rate, and the few
settings it overrides, said in ``settings``).

Row kinds:
- ``Train(name, flags, start_from)``: one fairseq-train run per seed (``name-seedS``), from the task's model or
  from an earlier run's best checkpoint;
- ``Eval(tag, run, flags, onnx)``: evaluate.py on the run's best checkpoint (``onnx``: an exported file, run by
  ONNX Runtime), a row of the results table;
- ``Export(file, run, flags)``: fairseq-quant-export of the run's best checkpoint into the run folder;
- ``Sensitivity()``, ``CPTReport()``, ``Translate(...)``, ``Decode(...)``: the sweep, the CPT report over the
  training logs, and the translation experiment's training and decoding.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["EXPERIMENTS", "Experiment", "Option", "CPTReport", "prt_threshold", "Decode", "Eval", "Export",
           "Sensitivity", "Train", "Translate"]


@dataclass(frozen=True)
class Train:
    name: str
    flags: tuple[str, ...] = ()
    start_from: str | None = None  # a run of this experiment whose best checkpoint the run fine-tunes
    # (bit range LO-HI, cycles[, schedule[, input bit range]]): a cfg_cpt.json the runner writes; the inputs take
    # the weights' range unless a range of their own is given
    cpt: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Eval:
    tag: str
    run: str
    flags: tuple[str, ...] = ()
    onnx: str | None = None  # a file Export wrote: evaluated by ONNX Runtime


@dataclass(frozen=True)
class Export:
    file: str
    run: str
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sensitivity:
    pass


@dataclass(frozen=True)
class CPTReport:
    pass


@dataclass(frozen=True)
class Translate:
    name: str
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decode:
    name: str
    run: str
    label: str
    precision: str
    overrides: str | None = None  # --model-overrides: post-training quantization of the run's model


@dataclass(frozen=True)
class Option:
    """An experiment's own flag: ``--name`` with a default and a help text (values are strings)."""

    name: str
    default: str
    help: str


@dataclass(frozen=True)
class Experiment:
    """``plan(options) -> rows``; ``task``: ``default`` (the embedded task unless DATA is given), ``glue`` (GLUE_DIR
    and --tasks), ``checkpoint`` (--checkpoint and --data) or ``translation``; ``max_update``/``lr``: defaults for
    (a pretrained model, the tiny model from scratch); ``settings``: fine-tuning settings this experiment changes;
    ``table``: ``results``, ``latency`` (with ms per batch), ``pivot`` (rows tagged ``name|column``, the columns
    ``pivot``), ``cpt``, ``sensitivity`` or ``bleu``."""

    name: str
    help: str
    plan: object
    task: str = "default"
    pretrained: str | None = None  # default model: None = the tiny model on the default task, minilm with DATA
    max_update: tuple[int, int] = (300, 3000)
    lr: tuple[float, float] = (1e-4, 1e-3)
    seeds: str = "1"
    settings: dict = field(default_factory=dict)
    table: str = "results"
    pivot: tuple[tuple[str, str], ...] = ()  # table "pivot": (tag column, title) of each column
    options: tuple[Option, ...] = ()
    title: str = ""


CONFIGS = Path(__file__).resolve().parents[2] / "configs"
W8A8 = ("--quantw", "--quantin")
ALL_OPS = "gemm,act,norm,attn_scaling,residual"


def ptq(bits: int, calib: int = 16) -> tuple[str, ...]:
    return ("--quantw", "--bitsw", str(bits), "--quantin", "--bitsin", str(bits), "--calib-batches", str(calib))


def _quickstart(o) -> list:
    return [
        Train("fp32"), Train("w8a8-qat", ("--quantw", "--bitsw", "8", "--quantin", "--bitsin", "8")),
        Eval("FP32 fine-tuning", "fp32"), Eval("W8A8 QAT fine-tuning", "w8a8-qat"),
        *[Eval(f"PTQ of FP32, {b}-bit, 16 calibration batches", "fp32", ptq(b)) for b in (8, 6, 4)],
        Export("fp32.onnx", "fp32", ("--fp32",)), Export("ptq-w8a8.onnx", "fp32", W8A8 + ("--calib-batches", "16")),
        Export("qat-w8a8.onnx", "w8a8-qat"),
        Eval("FP32 fine-tuning", "fp32", onnx="fp32.onnx"),
        Eval("PTQ of FP32, 8-bit, 16 calibration batches", "fp32", onnx="ptq-w8a8.onnx"),
        Eval("W8A8 QAT fine-tuning", "w8a8-qat", onnx="qat-w8a8.onnx"),
    ]


def _glue(o) -> list:
    return [Train("fp32"), Train("w8a8-qat", ("--quantw", "--bitsw", "8", "--quantin", "--bitsin", "8")),
            Eval("FP32", "fp32"), Eval("W8A8 QAT", "w8a8-qat"),
            *[Eval(f"PTQ {b}-bit", "fp32", ptq(b)) for b in (8, 6, 4)]]


def _ptq_table(o) -> list:
    calib, iters = _count(o, "calib_batches"), _count(o, "adaround_iters", 1)
    a8 = ("--quantw", "--quantin", "--quantw-granularity", "tensor", "--quantize-ops", "gemm,residual",
          "--calib-batches", calib)
    return [
        Train("fp32"),
        # QAT starts from the fine-tuned FP32 model (its ranges estimated at the first step, then learned)
        Train("w4a8-qat", ("--quantw", "--bitsw", "4", "--quantin", "--bitsin", "8", "--learn-ranges",
                           "--quantize-ops", "gemm,residual"), start_from="fp32"),
        Eval("FP32", "fp32"),
        Eval("W8A8 PTQ, per-tensor min-max", "fp32", a8),
        Eval("W8A8 PTQ, MSE ranges", "fp32", a8 + ("--estimatorw", "mse_grid", "--estimatorin", "mse_grid")),
        Eval("W8A8 PTQ, PEG (residual sums: 6 permuted groups)", "fp32", a8 + ("--quant-dict", "{'residual': 'ngp6'}")),
        Eval("W8A{8,16} PTQ (x, h, y and residual sums at 16 bits)", "fp32",
             a8 + ("--quant-dict", "{'x': 16, 'h': 16, 'residual': 16}")),
        Eval("W4A32 PTQ, round to nearest", "fp32", ("--quantw", "--bitsw", "4")),
        Eval("W4A32 PTQ, AdaRound", "fp32", ("--quantw", "--bitsw", "4", "--adaround", "--adaround-iters", iters)),
        Eval("W4A8 QAT, learned ranges", "w4a8-qat"),
    ]


FORMATS = {
    "bf16": ("BF16 (e8m7)", ("--formatw", "e8m7", "--formatin", "e8m7")),
    "posit8": ("Posit8 (es=1)", ("--formatw", "posit8_1", "--formatin", "posit8_1")),
    "fp8": ("FP8 (E4M3, E5M2 gradients)", ("--formatw", "fp8_e4m3", "--formatw-scaling", "amax", "--formatin",
                                           "fp8_e4m3", "--formatin-scaling", "amax")),
    "int8": ("INT8 (W8A8)", ("--bitsw", "8", "--bitsin", "8")),
}


def _formats(o) -> list:
    calib = _count(o, "calib_batches")
    rows = [Train("fp32"), Eval("fp32|fine-tuned", "fp32")]
    for f in _listed(o["formats"], FORMATS, "--formats"):
        flags = FORMATS[f][1] + (("--formatgrad", "fp8_e5m2") if f == "fp8" else ())
        rows += [Train(f, W8A8 + flags + ("--quantize-ops", ALL_OPS)), Eval(f"{f}|fine-tuned", f)]
        ptq_flags = W8A8 + FORMATS[f][1] + ("--calib-batches", calib)
        rows += [Eval(f"{f}|PTQ {ops}", "fp32", ptq_flags + ("--quantize-ops", ops)) for ops in ("gemm", ALL_OPS)]
    return rows


def _cpt(o) -> list:
    from ..core.schedule import load_cpt_config

    rows = [Train("static8", ("--quantw", "--quantin", "--bitsw", "8", "--bitsin", "8"))]
    weights = _estimatorw(o)
    for path in o["cpt_configs"].split(","):
        load_cpt_config(path)  # every file valid before anything runs (CPTConfigError names the key)
        rows.append(Train(f"cpt-{path.rsplit('/', 1)[-1].removesuffix('.json')}",
                          W8A8 + ("--cpt-config", path) + weights))
    return rows + [CPTReport()]


def _estimatorw(o) -> tuple[str, ...]:
    """The cyclic runs' ``--estimatorw`` (--estimatorw of the cpt and precision-range experiments)."""
    from ..core.estimators import ESTIMATORS

    if o["estimatorw"] not in ESTIMATORS:
        raise ValueError(f"--estimatorw must be one of {', '.join(ESTIMATORS)}, got {o['estimatorw']!r}")
    return ("--estimatorw", o["estimatorw"])


def _cpt_sweep(o) -> list:
    """CPT configs made from --periods at --range and --ranges at --period (written into the run folder)."""
    periods = [_count({"periods": p}, "periods", 1) for p in o["periods"].split(",")]
    period = _count(o, "period", 1)
    combos = [(_bit_range(o["range"]), p) for p in periods] + [(_bit_range(r), period) for r in o["ranges"].split(",")]
    rows = [Train("static8", ("--quantw", "--quantin", "--bitsw", "8", "--bitsin", "8"))]
    for bits, period in dict.fromkeys(combos):
        rows.append(Train(f"cpt-w{bits}-a{bits}-p{period}", W8A8, cpt=(bits, period)))
    return rows + [CPTReport()]


INT8_MODES = {"bf16": (), "fwd": ("--int8-training", "fwd"), "fwd_dgrad": ("--int8-training", "fwd_dgrad"),
              "all": ("--int8-training", "all"), "all_sr": ("--int8-training", "all", "--int8-stochastic-rounding")}


def _int8(o) -> list:
    modes = _listed(o["modes"], INT8_MODES, "--modes")
    return list(itertools.chain.from_iterable(
        (Train(m, ("--bf16",) + INT8_MODES[m]), Eval(m, m)) for m in modes))


def _onnx(o) -> list:
    return [
        Train("fp32"), Train("w8a8-qat", W8A8),
        Export("fp32.onnx", "fp32", ("--fp32",)), Export("ptq-w8a8.onnx", "fp32", W8A8 + ("--calib-batches", "16")),
        Export("qat-w8a8.onnx", "w8a8-qat"), Export("ort-dynamic.onnx", "fp32", ("--ort-dynamic",)),
        Eval("FP32", "fp32"), Eval("FP32", "fp32", onnx="fp32.onnx"),
        Eval("W8A8 PTQ, 16 calibration batches", "fp32", W8A8 + ("--calib-batches", "16")),
        Eval("W8A8 PTQ, 16 calibration batches", "fp32", onnx="ptq-w8a8.onnx"),
        Eval("W8A8 QAT", "w8a8-qat"), Eval("W8A8 QAT", "w8a8-qat", onnx="qat-w8a8.onnx"),
        Eval("ONNX Runtime quantize_dynamic of the FP32 export", "fp32", onnx="ort-dynamic.onnx"),
    ]


def _translation(o) -> list:
    ptq = "{{'quantw': True, 'quantin': True, 'bitsw': {0}, 'bitsin': {0}}}"
    return [Translate("fp32"), Translate("w8a8-qat", ("--quantw", "--quantin", "--bitsw", "8", "--bitsin", "8")),
            Decode("fp32", "fp32", "FP32 training", "FP32"), Decode("w8a8-qat", "w8a8-qat", "W8A8 QAT", "W8A8"),
            Decode("ptq-w8a8", "fp32", "PTQ of the FP32 model", "W8A8", ptq.format(8)),
            Decode("ptq-w4a4", "fp32", "PTQ of the FP32 model", "W4A4", ptq.format(4))]


def _sensitivity(o) -> list:
    """The sweep's options, checked before anything runs."""
    if not o["checkpoint"] or not o["data"]:
        raise ValueError("give --checkpoint CKPT and DATA (the data it was trained on)")
    bits = o["bits"].split(",")
    if len(bits) not in (1, 2) or not all(b.isdigit() for b in bits):
        raise ValueError(f"--bits expects N or W,I (e.g. 8 or 4,8), got {o['bits']!r}")
    if not all(2 <= int(b) <= 16 for b in bits):
        raise ValueError(f"--bits: bit widths go from 2 to 16, got {o['bits']!r}")
    _count(o, "calib_batches")
    if o["max_sentences"]:
        _count(o, "max_sentences", 1)
    if not Path(o["checkpoint"]).is_file():
        raise ValueError(f"--checkpoint: no such file: {o['checkpoint']}")
    return [Sensitivity()]


def _listed(value: str, allowed: dict, flag: str) -> list[str]:
    names = [v for v in value.split(",") if v]
    bad = [v for v in names if v not in allowed]
    if bad or not names:
        raise ValueError(f"{flag}: unknown {', '.join(map(repr, bad)) or repr(value)}; allowed: {', '.join(allowed)}")
    return names


ROLES = ("together", "separate")


def _precision_range(o) -> list:
    """W8A8 fine-tuning whose bits rise from the bottom of --range to its top (the staircase schedule): weights and
    inputs together (--roles together), or one run for each, the other at the top of the range (separate)."""
    lo, hi = _bit_range(o["range"]).split("-")
    _count(o, "period", 1)
    prt_threshold(o)
    if lo == hi:
        raise ValueError(f"--range must span more than one width, got {o['range']!r}")
    if o["roles"] not in ROLES:
        raise ValueError(f"--roles must be one of {', '.join(ROLES)}, got {o['roles']!r}")
    flags = W8A8 + _estimatorw(o)
    if o["roles"] == "together":
        return [Train("precision-range", flags, cpt=(f"{lo}-{hi}", "1", "staircase"))]
    return [Train("precision-range-weights", flags, cpt=(f"{lo}-{hi}", "1", "staircase", f"{hi}-{hi}")),
            Train("precision-range-inputs", flags, cpt=(f"{hi}-{hi}", "1", "staircase", f"{lo}-{hi}"))]


def prt_threshold(o) -> float:
    """--criterion and --threshold of the precision range test: the threshold given, or the criterion's default
    (``cpt_report.CRITERIA``); a fraction in (0, 1] or a rise of more than 0 points."""
    from .cpt_report import CRITERIA

    if o["criterion"] not in CRITERIA:
        raise ValueError(f"--criterion must be one of {', '.join(CRITERIA)}, got {o['criterion']!r}")
    if not o["threshold"]:
        return CRITERIA[o["criterion"]]
    threshold = float(o["threshold"]) if o["threshold"].replace(".", "", 1).isdigit() else -1.0
    if o["criterion"] == "fraction" and not 0 < threshold <= 1:
        raise ValueError(f"--threshold must be a number in (0, 1] with --criterion fraction, got {o['threshold']!r}")
    if o["criterion"] == "rise" and not threshold > 0:
        raise ValueError(f"--threshold must be a number > 0 (points) with --criterion rise, got {o['threshold']!r}")
    return threshold


def _count(o, name: str, minimum: int = 0) -> str:
    """The option ``name`` of ``o``, checked to be an integer >= ``minimum`` (returned as the text given)."""
    value = o[name]
    if not (value.isdigit() and int(value) >= minimum):
        raise ValueError(f"--{name.replace('_', '-')} must be an integer >= {minimum}, got {value!r}")
    return value


def _bit_range(value: str) -> str:
    import re

    m = re.fullmatch(r"(\d+)-(\d+)", value)
    if not m or not 2 <= int(m[1]) <= int(m[2]) <= 16:
        raise ValueError(f"bit ranges are LO-HI with 2 <= LO <= HI <= 16 (e.g. 4-8), got {value!r}")
    return value


EXPERIMENTS = {e.name: e for e in (
    Experiment("quickstart", "the embedded default task: FP32 and W8A8 QAT fine-tuning, PTQ at 8/6/4 bits, and the "
               "FP32 and INT8 models exported to ONNX and run by ONNX Runtime", _quickstart, pretrained="minilm",
               max_update=(200, 3000), table="latency", title="Dev set of the embedded default task"),
    Experiment("glue", "GLUE tasks (GLUE_DIR, --tasks) prepared with the model's vocabulary: FP32 and W8A8 QAT "
               "fine-tuning, PTQ at 8/6/4 bits", _glue, task="glue", pretrained="minilm", max_update=(500, 500),
               lr=(5e-5, 5e-5), settings={"weight_decay": 0.1, "validations": 2},
               options=(Option("tasks", "SST-2,CoLA,MRPC,RTE,STS-B", "GLUE tasks, comma-separated"),
                        Option("max_train", "", "keep a random sample of N training rows of each task")),
               title="GLUE dev"),
    Experiment("ptq", "the PTQ/QAT table: W8A8 per-tensor, MSE, PEG and mixed W8A{8,16} PTQ, W4A32 with and without "
               "AdaRound, W4A8 QAT with learned ranges from the FP32 model", _ptq_table,
               options=(Option("calib_batches", "16", "training batches that calibrate the PTQ ranges"),
                        Option("adaround_iters", "500", "AdaRound steps per layer")), title="PTQ and QAT"),
    Experiment("formats", "number formats: fine-tuning with every operation in the format, and PTQ of the FP32 model "
               "to it (GEMMs, every operation)", _formats, table="pivot",
               pivot=(("fine-tuned", "fine-tuned, all ops quantized"), ("PTQ gemm", "PTQ of FP32, GEMMs"),
                      (f"PTQ {ALL_OPS}", "PTQ of FP32, all ops")),
               options=(Option("formats", "bf16,posit8,fp8,int8", f"formats, from {', '.join(FORMATS)}"),
                        Option("calib_batches", "16", "training batches that calibrate the PTQ ranges")),
               title="Number formats"),
    Experiment("sensitivity", "per-layer PTQ sensitivity of --checkpoint on --data (fairseq-quant-sensitivity)",
               _sensitivity, task="checkpoint", table="sensitivity",
               options=(Option("checkpoint", "", "the fine-tuned checkpoint (DATA: the data it was trained on)"),
                        Option("bits", "8", "N or W,I (e.g. 4,8)"),
                        Option("calib_batches", "8", "batches that calibrate each group's input ranges"),
                        Option("max_sentences", "", "evaluate the first N sentences only"))),
    Experiment("cpt", "static 8-bit against cyclic precision (--cpt-configs) on the same model, task and seeds",
               _cpt, seeds="1,2", table="cpt",
               options=(Option("cpt_configs", str(CONFIGS / "cfg_cpt.json"), "cfg_cpt.json files, comma-separated"),
                        Option("estimatorw", "mse_grid", "the cyclic runs' weight range estimator (the static "
                               "run keeps minmax): mse_grid (default: the clipping range of least error, searched "
                               "when the bits change), minmax, percentile or mse")),
               title="Static 8-bit vs CPT"),
    Experiment("cpt-sweep", "CPT periods (--periods at --range) and bit ranges (--ranges at --period)", _cpt_sweep,
               table="cpt", options=(Option("periods", "2,8,32", "numbers of cycles"),
                                     Option("ranges", "3-8,4-8,6-8", "bit ranges LO-HI"),
                                     Option("period", "8", "cycles of the range sweep"),
                                     Option("range", "4-8", "bit range of the period sweep")),
               title="CPT sweep"),
    Experiment("precision-range", "the precision range test: W8A8 fine-tuning whose bits rise one at a time "
               "through --range (weights and inputs together, or one run each with --roles separate); reports the "
               "lowest width from which training works and writes a cfg_cpt.json with it as the lower bound",
               _precision_range, table="precision-range", pretrained="minilm", max_update=(280, 700),
               options=(Option("range", "2-8", "bit range LO-HI the staircase climbs"),
                        Option("roles", "together", "together: weights and inputs climb as one; separate: a run "
                                                    "for each, the other at the top (a bound for each)"),
                        Option("period", "8", "num_cyclic_period of the cfg_cpt.json it writes"),
                        Option("criterion", "rise", "rise (default, the CPT paper's): the bound is the lowest "
                               "width whose training accuracy rises over the width below by more than --threshold "
                               "points; fraction: the lowest width from which every width reaches --threshold of "
                               "the top width's"),
                        Option("threshold", "", "rise: 10 points unless given; fraction: 0.9 unless given"),
                        Option("estimatorw", "mse_grid", "the staircase runs' weight range estimator, as the cpt "
                                                         "experiment's (mse_grid)")),
               title="Precision range test"),
    Experiment("int8-training", "BF16 against each --int8-training mode (and stochastic rounding), dev metric and "
               "time per run", _int8, options=(Option("modes", "bf16,fwd,fwd_dgrad,all,all_sr",
                                                      f"modes, from {', '.join(INT8_MODES)}"),),
               title="INT8 training"),
    Experiment("onnx", "CPU deployment: FP32, our static W8A8 Q/DQ exports (PTQ and QAT) and ONNX Runtime's "
               "quantize_dynamic, fake-quantized and through ONNX Runtime", _onnx, table="latency",
               title="CPU deployment"),
    Experiment("translation", "a synthetic translation task (user_dir/): FP32 and W8A8 QAT training of "
               "quant_transformer_tiny, PTQ at 8 and 4 bits, beam 4, sacreBLEU", _translation, task="translation",
               max_update=(600, 600), table="bleu", title="Test set of the toy language pair"),
)}

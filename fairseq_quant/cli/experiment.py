"""fairseq-quant-experiment NAME [DATA | GLUE_DIR] [options]: one runner for every experiment (``cli.experiments``).

The fine-tuning settings every experiment shares are here, once (``FINETUNE``). The runner prepares the task (the
embedded default task, a binarised GLUE task, or GLUE tasks from their TSVs) and the model (the pip-shipped
MiniLM or a Hugging Face directory, converted once; or ``tiny``, quant_roberta_tiny from random initialisation),
runs the experiment's rows as the commands a user would (fairseq-train, evaluate.py, fairseq-quant-export, ...),
each logged in a new folder ``OUT/<time>-<experiment>-<task>`` (nothing earlier is overwritten), says one line
as each run starts and ends, and renders the table.

    fairseq-quant-experiment quickstart
    fairseq-quant-experiment ptq runs/ptq/data/SST-2-minilm-4000 --max-update 200
    fairseq-quant-experiment glue ../shared/glue --tasks SST-2,MRPC --max-train 4000
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from .common import positive_int
from .experiments import EXPERIMENTS, Decode, Eval, Experiment, Export, Train, Translate

__all__ = ["FINETUNE", "cli_main", "finetune_flags"]

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "fairseq_quant"

# The fine-tuning settings of every experiment: fairseq's sentence prediction with Adam and a polynomial decay,
# batches of 32, dropout 0.1, on the CPU. Experiments change max_update, lr and the entries of ``SETTINGS``.
FINETUNE = (
    "--task", "sentence_prediction", "--init-token", "0", "--separator-token", "2",
    "--criterion", "sentence_prediction", "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)",
    "--lr-scheduler", "polynomial_decay", "--batch-size", "32", "--dropout", "0.1", "--attention-dropout", "0.1",
    "--cpu", "--num-workers", "0", "--no-epoch-checkpoints", "--no-last-checkpoints", "--log-format", "simple",
)
SETTINGS = {"weight_decay": 0.01, "validations": 3}  # validations: how many times a run validates (and saves)


class ExperimentError(ValueError):
    """Bad options or data (``usage``: before anything ran), or a failed step (the message names its log)."""

    def __init__(self, message: str, usage: bool = True):
        super().__init__(message)
        self.usage = usage


def finetune_flags(max_update: int, lr: float, seed: int, settings: dict) -> list[str]:
    """The shared settings (``FINETUNE``) with a run's length, learning rate (10% warm-up) and seed."""
    s = {**SETTINGS, **settings}
    return [*FINETUNE, "--lr", str(lr), "--warmup-updates", str(max_update // 10), "--total-num-update",
            str(max_update), "--max-update", str(max_update), "--weight-decay", str(s["weight_decay"]),
            "--seed", str(seed), "--validate-interval-updates", str(max(max_update // s["validations"], 1)),
            "--log-interval", str(max(max_update // 100, 1))]


class Runner:
    """Runs one experiment's rows in ``self.run_dir``, numbering the steps in its status lines."""

    def __init__(self, exp: Experiment, opts: argparse.Namespace):
        self.exp, self.opts = exp, opts
        self.out = Path(opts.out or f"runs/{exp.name}").resolve()
        self.seeds = [int(s) for s in opts.seeds.split(",")]
        self.logs: list[str] = []
        self.step = 0
        self.steps = 0
        self.env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))

    # -- one subprocess, logged ---------------------------------------------------------------------------------
    def command(self, what: str, cmd: list[str], log: Path, stdout: Path | None = None, counted: bool = True) -> None:
        """Run ``cmd``, its output appended to ``log`` (stdout to ``stdout`` instead, where given), with a status
        line as it starts and one as it ends; a failure stops the experiment with the end of the log."""
        if counted:
            self.step += 1
        where = f"[{self.step}/{self.steps}]" if counted else "[prepare]"
        print(f"{where} {what} (log: {log})", flush=True)
        start = time.perf_counter()
        with open(log, "a") as err, open(stdout or log, "a" if stdout is None else "w") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=err, text=True, env=self.env)
        if proc.returncode != 0:
            tail = "".join(open(log).readlines()[-15:])
            raise ExperimentError(f"{what} failed (exit {proc.returncode}); the end of {log}:\n{tail}", usage=False)
        print(f"{where} {what}: done in {time.perf_counter() - start:.0f} s", flush=True)

    # -- the task and the model ---------------------------------------------------------------------------------
    def prepare(self) -> None:
        """The model and the run folder: ``--pretrained`` (``tiny``: quant_roberta_tiny from scratch), else the
        experiment's model on the embedded task, else MiniLM for a GLUE task's DATA (binarised with its vocabulary)."""
        o, exp = self.opts, self.exp
        if exp.task in ("checkpoint", "translation"):  # no model to fine-tune from
            self.pretrained, self.max_update, self.lr = None, o.max_update or exp.max_update[1], None
            self.run_dir = self._new_folder(exp.name)
            return
        pretrained = o.pretrained or (exp.pretrained if exp.task != "default" or o.data is None else "minilm")
        self.pretrained = None if pretrained == "tiny" else pretrained
        if self.pretrained is None and exp.task == "default" and o.data is not None:
            raise ExperimentError(f"{exp.name}: the tiny model trains on the embedded default task; a GLUE task's DATA "
                                  f"takes --pretrained minilm or a Hugging Face directory")
        scratch = self.pretrained is None
        self.max_update = o.max_update or exp.max_update[1 if scratch else 0]
        self.lr = o.lr or exp.lr[1 if scratch else 0]
        model = "quant_roberta_tiny" if scratch else Path(str(self.pretrained)).name
        task = Path(o.data).name if exp.task == "default" and o.data else "default-task" if exp.task == "default" \
            else exp.task
        self.run_dir = self._new_folder(f"{exp.name}-{task}-{model}")
        self.restore: list[str] = []
        if scratch:
            self.arch_flags = ["--arch", "quant_roberta_tiny", "--max-positions", "64"]
            return
        self.converted = self._convert(self.pretrained)
        self.arch_flags = (self.converted / "fairseq_args.txt").read_text().split() + ["--shorten-method", "truncate"]
        self.restore = ["--restore-file", str(self.converted / "model.pt")]

    def _new_folder(self, name: str) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        for i in range(100):
            path = self.out / (f"{stamp}-{name}" + (f"-{i}" if i else ""))
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
        raise ExperimentError(f"--out {self.out}: cannot make a new run folder")

    def _convert(self, spec: str) -> Path:
        if spec == "minilm":
            from ..data.minilm import minilm_dir

            hf_dir, name = minilm_dir(), "minilm"
        elif (Path(spec) / "config.json").is_file():
            hf_dir, name = Path(spec), Path(spec).name
        else:
            raise ExperimentError(f"--pretrained expects minilm, tiny or a Hugging Face model directory with a "
                                  f"config.json, got {spec!r}")
        converted = self.out / "pretrained" / name
        if not (converted / "model.pt").is_file():
            self.command(f"converting {hf_dir}", ["fairseq-quant-convert-hf", str(hf_dir), str(converted)],
                         self.run_dir / "convert.log", counted=False)
        return converted

    def tasks(self) -> list[tuple[str, Path, list[str]]]:
        """``(label, data, task flags)`` of each task the experiment runs on."""
        o, exp = self.opts, self.exp
        if exp.task == "glue":
            if o.data is None or not Path(o.data).is_dir():
                raise ExperimentError(f"{exp.name}: give GLUE_DIR, the folder of the GLUE tasks' TSVs")
            return [self._glue_task(t) for t in o.tasks.split(",")]
        if o.data is None:
            data = self.out / "data"
            subprocess.run(["bash", str(REPO / "scripts" / "prepare_default_task.sh"), str(data)], check=True,
                           stdout=subprocess.DEVNULL, env=self.env)
            if self.pretrained is None:
                return [("default task", data / "bin", _default_task_flags())]
            return [("default task", self._tokenise_default_task(data), _default_task_flags())]
        data = Path(o.data)
        if not (data / "glue_task.json").is_file():
            raise ExperimentError(f"{exp.name}: {data} has no glue_task.json; prepare it with fairseq-quant-glue "
                                  f"GLUE_DIR TASK OUT --wordpiece VOCAB --srcdict DICT")
        if self.pretrained and (data / "input0" / "dict.txt").read_text() != (self.converted / "dict.txt").read_text():
            raise ExperimentError(f"{exp.name}: {data}/input0/dict.txt is not the vocabulary of {self.pretrained} "
                                  f"({self.converted}/dict.txt): prepare the task with --srcdict that file")
        task = json.loads((data / "glue_task.json").read_text())["task"]
        return [(task, data, _glue_flags(task))]

    def _tokeniser(self) -> list[str]:
        if (self.converted / "vocab.txt").is_file():
            return ["--wordpiece", str(self.converted / "vocab.txt")]
        return ["--bpe", "gpt2", "--encoder-json", str(self.converted / "vocab.json"), "--vocab-bpe",
                str(self.converted / "merges.txt")]

    def _tokenise_default_task(self, data: Path) -> Path:
        """The default task (GLUE SST-2 format) tokenised with the pretrained model's own vocabulary."""
        glue = data / "glue" / "SST-2"
        glue.mkdir(parents=True, exist_ok=True)
        for split in ("train", "dev"):
            shutil.copyfile(data / "raw" / f"{split}.tsv", glue / f"{split}.tsv")
        out = data / f"bin-{self.converted.name}"
        self.command("tokenising the default task", ["fairseq-quant-glue", str(glue.parent), "SST-2", str(out),
                                                     *self._tokeniser(), "--srcdict", str(self.converted / "dict.txt"),
                                                     "--workers", "2"], self.run_dir / "prepare.log", counted=False)
        return out

    def _glue_task(self, task: str) -> tuple[str, Path, list[str]]:
        o = self.opts
        out = self.out / "data" / (f"{task}-{self.converted.name}" + (f"-{o.max_train}" if o.max_train else ""))
        self.command(f"preparing {task}", ["fairseq-quant-glue", o.data, task, str(out), *self._tokeniser(),
                                           "--srcdict", str(self.converted / "dict.txt"), "--workers", "2",
                                           *(["--max-train", o.max_train] if o.max_train else [])],
                     self.run_dir / "prepare.log", counted=False)
        return task, out, _glue_flags(task)

    # -- the rows -----------------------------------------------------------------------------------------------
    def run(self) -> str:
        rows = self.exp.plan(vars(self.opts))
        self.prepare()
        if self.exp.task == "checkpoint":
            return self._sensitivity()
        if self.exp.task == "translation":
            return self._translation(rows)
        tasks = self.tasks()
        trains = [r for r in rows if isinstance(r, Train)]
        per_seed = [r for r in rows if isinstance(r, (Eval, Export))]
        self.steps = self.step + len(tasks) * len(self.seeds) * (len(trains) + len(per_seed)) + (
            self.exp.table == "cpt")  # the CPT report is a step too
        self.results = self.run_dir / "results.csv"
        for label, data, task_flags in tasks:
            for seed in self.seeds:
                for row in rows:
                    if isinstance(row, Train):
                        self.train(row, seed, data, task_flags, label)
                    elif isinstance(row, Export):
                        self.export(row, seed, data, label)
                    elif isinstance(row, Eval):
                        self.evaluate(row, seed, data, label)
        return self.table(rows)

    def save_dir(self, run: str, seed: int, label: str) -> Path:
        prefix = f"{label}-" if self.exp.task == "glue" else ""
        return self.run_dir / f"{prefix}{run}-seed{seed}"

    def train(self, row: Train, seed: int, data: Path, task_flags: list[str], label: str) -> None:
        save = self.save_dir(row.name, seed, label)
        flags = list(row.flags)
        restore = ["--restore-file", str(self.save_dir(row.start_from, seed, label) / "checkpoint_best.pt")] \
            if row.start_from else self.restore
        if restore:
            restore += ["--reset-optimizer", "--reset-dataloader", "--reset-meters", "--reset-lr-scheduler"]
        if row.cpt:
            lo, hi = (int(b) for b in row.cpt[0].split("-"))
            in_lo, in_hi = (int(b) for b in row.cpt[3].split("-")) if len(row.cpt) > 3 else (lo, hi)
            cfg = self.run_dir / f"cfg_cpt-{row.name}.json"
            schedule = {"schedule": row.cpt[2]} if len(row.cpt) > 2 else {}
            cfg.write_text(json.dumps({"wbit_min": lo, "wbit_max": hi, "inbit_min": in_lo, "inbit_max": in_hi,
                                       "num_cyclic_period": int(row.cpt[1]), **schedule}) + "\n")
            flags += ["--cpt-config", str(cfg)]
        log = save.with_suffix(".log")
        cmd = ["fairseq-train", str(data), "--user-dir", str(PLUGIN), *task_flags, *self.arch_flags, *restore,
               *finetune_flags(self.max_update, self.lr, seed, self.exp.settings), "--save-dir", str(save), *flags]
        self.command(f"fine-tuning {save.name} on {label}", cmd, log)
        self.logs.append(f"{row.name}={log}")

    def export(self, row: Export, seed: int, data: Path, label: str) -> None:
        ckpt = self.save_dir(row.run, seed, label) / "checkpoint_best.pt"
        out = self.onnx_file(row.file, seed)
        self.command(f"exporting {out.name}", ["fairseq-quant-export", "--checkpoint", str(ckpt), "--data", str(data),
                                               "--out", str(out), *row.flags], self.run_dir / "export.log")

    def onnx_file(self, name: str, seed: int) -> Path:
        return self.run_dir / (name if len(self.seeds) == 1 else name.replace(".onnx", f"-seed{seed}.onnx"))

    def evaluate(self, row: Eval, seed: int, data: Path, label: str) -> None:
        ckpt = self.save_dir(row.run, seed, label) / "checkpoint_best.pt"
        tag = row.tag + (f", seed {seed}" if len(self.seeds) > 1 else "")
        tag = f"{label} {tag}" if self.exp.task == "glue" else tag
        extra = list(row.flags)
        if row.onnx:
            extra += ["--backend", "onnxruntime", "--onnx", str(self.onnx_file(row.onnx, seed))]
        self.command(f"evaluating {tag}" + (" (ONNX Runtime)" if row.onnx else ""),
                     [sys.executable, str(REPO / "scripts" / "evaluate.py"), "--checkpoint", str(ckpt), "--data",
                      str(data), "--split", "valid", "--cpu", "--csv", str(self.results), "--tag", tag, *extra],
                     self.run_dir / "evaluate.log")

    def table(self, rows: list) -> str:
        from ..data.tables import read_results, results_table

        kind = self.exp.table
        if kind == "precision-range":
            return self._precision_range()
        if kind == "cpt":
            self.command("the CPT report", [sys.executable, str(REPO / "scripts" / "cpt_report.py"), *self.logs,
                                            "--out", str(self.run_dir / "report")], self.run_dir / "report.log")
            return (self.run_dir / "report" / "report.md").read_text()
        results = read_results(str(self.results))
        if kind == "pivot":
            from .experiments import FORMATS

            names = {"fp32": "FP32", **{k: v[0] for k, v in FORMATS.items()}}
            return results_table(results, pivot=list(self.exp.pivot), row_names=names, row_title="format")
        return results_table(results, latency=kind == "latency")

    def _precision_range(self) -> str:
        """The staircase runs' tables, and the cfg_cpt.json with their bounds (``cli.cpt_report.precision_range``):
        one run's for weights and inputs alike, or the weights' run's and the inputs' run's."""
        from .cpt_report import parse_log, precision_range
        from .experiments import prt_threshold

        o = self.opts
        top = int(o.range.split("-")[1])
        bounds, tables = {}, []
        for spec in self.logs:
            run = parse_log(spec.split("=", 1)[1])
            bound, table = precision_range(run, prt_threshold(vars(o)), o.criterion)
            climbing = run.changing  # the role is what the log shows climbing
            role = "weights and inputs" if len(climbing) == 2 else f"{next(iter(climbing))}s"
            bounds[role] = bound
            tables.append(f"{role}:\n\n{table}\n\nlowest width that trains: {bound} bits")
        w = bounds.get("weights", bounds.get("weights and inputs"))
        a = bounds.get("inputs", bounds.get("weights and inputs"))
        cfg = self.run_dir / "cfg_cpt.json"
        cfg.write_text(json.dumps({"wbit_min": w, "wbit_max": top, "inbit_min": a, "inbit_max": top,
                                   "num_cyclic_period": int(o.period)}, indent=2) + "\n")
        return "\n\n".join(tables) + f"\n\nwritten: {cfg} (weights {w}-{top} bits, inputs {a}-{top} bits)"

    # -- the experiments that are not fine-tuning runs -------------------------------------------------------------
    def _sensitivity(self) -> str:
        o = self.opts
        w, i = (o.bits.split(",") * 2)[:2]  # checked by the plan
        self.steps = self.step + 1
        self.command(f"W{w}A{i} sensitivity of {o.checkpoint}",
                     ["fairseq-quant-sensitivity", "--checkpoint", o.checkpoint, "--data", o.data, "--bitsw", w,
                      "--bitsin", i, "--calib-batches", o.calib_batches, "--out", str(self.run_dir),
                      *(["--max-sentences", o.max_sentences] if o.max_sentences else [])],
                     self.run_dir / "sensitivity.log")
        return (self.run_dir / "sensitivity.md").read_text()

    def _translation(self, rows: list) -> str:
        import sacrebleu

        data = self.out / "data"
        self.steps = self.step + 2 + len(rows)
        self.command("the toy parallel corpus", [sys.executable, str(REPO / "user_dir" / "toy_corpus.py"),
                                                 str(data / "raw")], self.run_dir / "prepare.log")
        binary = data / "bin"
        if not (binary / "dict.src.txt").is_file():
            self.command("binarising it", ["fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt",
                                           "--trainpref", str(data / "raw" / "train"), "--validpref",
                                           str(data / "raw" / "valid"), "--testpref", str(data / "raw" / "test"),
                                           "--joined-dictionary", "--workers", "1", "--destdir", str(binary)],
                         self.run_dir / "prepare.log")
        table = []
        refs = (data / "raw" / "test.tgt").read_text().splitlines()
        for row in rows:
            if isinstance(row, Translate):
                save = self.run_dir / row.name
                self.command(f"training {row.name}", [
                    "fairseq-train", str(binary), "--user-dir", str(REPO / "user_dir"), "--task", "translation",
                    "--source-lang", "src", "--target-lang", "tgt", "--arch", "quant_transformer_tiny",
                    "--share-all-embeddings", "--dropout", "0.1", "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)",
                    "--lr", "3e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "100", "--criterion",
                    "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--max-tokens", "2048",
                    "--max-update", str(self.max_update), "--disable-validation", "--no-epoch-checkpoints",
                    "--no-save-optimizer-state", "--cpu", "--seed", "1", "--num-workers", "0", "--log-format",
                    "simple", "--log-interval", "100", "--save-dir", str(save), *row.flags],
                    self.run_dir / f"{row.name}.train.log")
            elif isinstance(row, Decode):
                gen = self.run_dir / f"{row.name}.gen"
                self.command(f"decoding with {row.name}", [
                    "fairseq-generate", str(binary), "--user-dir", str(REPO / "user_dir"), "--path",
                    str(self.run_dir / row.run / "checkpoint_last.pt"), "--gen-subset", "test", "--source-lang",
                    "src", "--target-lang", "tgt", "--beam", "4", "--batch-size", "64",
                    "--required-batch-size-multiple", "1", "--num-workers", "0", "--cpu",
                    *(["--model-overrides", row.overrides] if row.overrides else [])],
                    self.run_dir / f"{row.name}.gen.log", stdout=gen)
                hyps = sorted((int(line.split("\t")[0][2:]), line.split("\t")[2]) for line in
                              gen.read_text().splitlines() if line.startswith("H-"))
                if len(hyps) != len(refs):
                    raise ExperimentError(f"{row.name}: {len(hyps)} hypotheses for {len(refs)} references ({gen})")
                bleu = sacrebleu.corpus_bleu([h for _, h in hyps], [refs]).score
                table.append([row.label, row.precision, f"{bleu:.2f}"])
        from ..data.tables import markdown_table

        return markdown_table(["run", "precision", "BLEU"], table)


def _default_task_flags() -> list[str]:
    return ["--num-classes", "2", "--best-checkpoint-metric", "accuracy", "--maximize-best-checkpoint-metric"]


def _glue_flags(task: str) -> list[str]:
    from ..data.glue import fairseq_train_flags

    return fairseq_train_flags(task)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fairseq-quant-experiment", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run an experiment of fairseq-quant: " + "; ".join(f"{e.name}: {e.help}"
                                                                     for e in EXPERIMENTS.values()))
    parser.add_argument("experiment", choices=list(EXPERIMENTS), help="which experiment")
    parser.add_argument("data", nargs="?", default=None, metavar="DATA",
                        help="binarised data of a GLUE task (made by fairseq-quant-glue with the model's vocabulary), "
                             "or GLUE_DIR for the glue experiment; default: the embedded default task")
    parser.add_argument("--pretrained", default=None, metavar="minilm|HF_DIR|tiny",
                        help="the model: the pip-shipped MiniLM, a Hugging Face directory (converted once), or tiny "
                             "(quant_roberta_tiny from random initialisation); default: the experiment's")
    parser.add_argument("--max-update", type=positive_int, default=None, metavar="N",
                        help="updates per fine-tuning run (default: the experiment's)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the experiment's)")
    parser.add_argument("--seeds", default=None, metavar="1,2", help="seeds, comma-separated (default: the "
                                                                    "experiment's)")
    parser.add_argument("--out", default=None, metavar="DIR", help="where runs go (default runs/EXPERIMENT)")
    seen = set()
    for exp in EXPERIMENTS.values():
        for o in exp.options:
            if o.name not in seen:
                seen.add(o.name)
                parser.add_argument("--" + o.name.replace("_", "-"), default=None, help=f"{exp.name}: {o.help}")
    return parser


def cli_main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    opts = parser.parse_intermixed_args(argv)  # DATA may follow the options
    exp = EXPERIMENTS[opts.experiment]
    own = {o.name for o in exp.options}
    others = [o.name for e in EXPERIMENTS.values() for o in e.options if o.name not in own
              and getattr(opts, o.name) is not None]
    if others:
        parser.error(f"{exp.name} takes no --{others[0].replace('_', '-')} (its options: "
                     f"{', '.join('--' + n.replace('_', '-') for n in own) or 'none'})")
    for o in exp.options:
        if getattr(opts, o.name) is None:
            setattr(opts, o.name, o.default)
    opts.seeds = opts.seeds or exp.seeds
    if not all(s.isdigit() for s in opts.seeds.split(",")):
        parser.error(f"--seeds expects integers like 1,2,3, got {opts.seeds!r}")
    runner = Runner(exp, opts)
    try:
        table = runner.run()
    except ExperimentError as e:
        parser.exit(2 if e.usage else 1, f"{parser.prog} {exp.name}: error: {e}\n")
    except ValueError as e:  # a bad option the rows read (--formats, --modes ...), before anything ran
        parser.exit(2, f"{parser.prog} {exp.name}: error: {e}\n")
    title = exp.title or exp.name
    if exp.task == "translation":
        print(f"\n{title}, quant_transformer_tiny, {runner.max_update} updates, beam 4, sacreBLEU (runs: "
              f"{runner.run_dir})")
    else:
        model = "quant_roberta_tiny" if runner.pretrained is None else runner.pretrained
        print(f"\n{title}, {model}, {runner.max_update} updates, seeds {opts.seeds} (dev metric in %; runs: "
              f"{runner.run_dir})")
    print(table)
    (runner.run_dir / "table.md").write_text(table + "\n")


if __name__ == "__main__":
    cli_main()

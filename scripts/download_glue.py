#!/usr/bin/env python3
"""Download the nine GLUE tasks into the standard GLUE layout, with the Python standard library only.

    python scripts/download_glue.py OUT_DIR [--tasks CoLA,SST-2,...|all] [--mrpc-dir DIR] [--force]

writes ``OUT_DIR/TASK/{train,dev,test}.tsv`` (MNLI: ``dev_matched``/``dev_mismatched`` and ``test_matched``/
``test_mismatched``), which ``fairseq-quant-glue`` (``scripts/preproc.bash``) binarises for fairseq.

Sources are those of the well-known ``download_glue_data.py`` (W4ngatang's gist, as since moved to
dl.fbaipublicfiles.com): one zip per task, of which the ``*.tsv`` files in the folder holding ``train.tsv`` are kept
(not the ``original/`` folders). MRPC is not redistributed as a zip: its train and test files are the Microsoft
Research Paraphrase Corpus files ``msr_paraphrase_train.txt`` / ``msr_paraphrase_test.txt`` (downloaded from
SentEval's copy, or taken from ``--mrpc-dir``, e.g. extracted from Microsoft's MSRParaphraseCorpus.msi with
``cabextract``; see ``--help``), and GLUE's dev set is the training rows whose id pair is listed in
``mrpc_dev_ids.tsv``; the rest stay train.

A task whose ``train.tsv`` exists is skipped; no existing file is overwritten without ``--force``. The network
layer is ``fetch``; ``unpack_task_archive`` and ``format_mrpc`` work on local files.
"""
from __future__ import annotations

import argparse
import http.client
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["TASKS", "TASK_URLS", "DownloadError", "download_task", "fetch", "format_mrpc", "parse_tasks",
           "unpack_task_archive"]  # fmt: skip

GLUE_DATA = "https://dl.fbaipublicfiles.com/glue/data"
TASK_URLS = {
    "CoLA": f"{GLUE_DATA}/CoLA.zip",
    "SST-2": f"{GLUE_DATA}/SST-2.zip",
    "QQP": f"{GLUE_DATA}/QQP-clean.zip",
    "STS-B": f"{GLUE_DATA}/STS-B.zip",
    "MNLI": f"{GLUE_DATA}/MNLI.zip",
    "QNLI": f"{GLUE_DATA}/QNLIv2.zip",
    "RTE": f"{GLUE_DATA}/RTE.zip",
    "WNLI": f"{GLUE_DATA}/WNLI.zip",
}
MRPC_URLS = {
    "msr_paraphrase_train.txt": "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_train.txt",
    "msr_paraphrase_test.txt": "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_test.txt",
    "mrpc_dev_ids.tsv": f"{GLUE_DATA}/mrpc_dev_ids.tsv",
}
TASKS = ("CoLA", "SST-2", "MRPC", "QQP", "STS-B", "MNLI", "QNLI", "RTE", "WNLI")
MRPC_COLUMNS = ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")
MRPC_MSI_HELP = (
    "MRPC from Microsoft's original: download "
    "https://download.microsoft.com/download/D/4/6/D46FF87A-F6B9-4252-AA8B-3604ED519838/MSRParaphraseCorpus.msi, "
    "then `cabextract MSRParaphraseCorpus.msi -d DIR`, rename DIR/_2DEC3DBE877E4DB192D17C0256E90F1D to "
    "msr_paraphrase_train.txt and DIR/_D7B391F9EAFF4B1B8BCE8F21B20B1B61 to msr_paraphrase_test.txt, and pass "
    "--mrpc-dir DIR (the dev ids are still downloaded unless DIR/mrpc_dev_ids.tsv exists)."
)


class DownloadError(RuntimeError):
    """A download failed; the message names the URL."""


def parse_tasks(spec: str) -> list[str]:
    """``"CoLA,sst-2"`` -> ``["CoLA", "SST-2"]`` (case-insensitive, canonical names, GLUE order kept as given);
    ``"all"`` -> all nine. ``ValueError`` naming the allowed tasks for an unknown name."""
    canonical = {task.lower(): task for task in TASKS}
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if any(name.lower() == "all" for name in names):
        return list(TASKS)
    unknown = [name for name in names if name.lower() not in canonical]
    if unknown or not names:
        raise ValueError(f"unknown GLUE task(s) {unknown or [spec]}; allowed: {', '.join(TASKS)} or all")
    return list(dict.fromkeys(canonical[name.lower()] for name in names))


def fetch(url: str, dest: str | os.PathLike, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` (written whole or not at all); ``DownloadError`` naming the URL on failure."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)
    except (OSError, http.client.HTTPException) as err:  # URLError, HTTPError and timeouts are OSErrors
        part.unlink(missing_ok=True)
        raise DownloadError(f"could not download {url}: {getattr(err, 'reason', None) or err}") from err
    os.replace(part, dest)
    return dest


def _check_free(paths: Sequence[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} already exist(s); pass --force to overwrite")


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    part = path.with_name(path.name + ".part")
    with open(part, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(line + "\n" for line in lines)
    os.replace(part, path)


def unpack_task_archive(archive: str | os.PathLike, task: str, out_dir: str | os.PathLike,
                        force: bool = False) -> list[Path]:
    """Extract a GLUE task zip: the ``*.tsv`` files of the folder that holds ``train.tsv`` (the shallowest one)
    become ``out_dir/task/NAME.tsv``; other files and subfolders (``original/``) are left out.

    Returns the written paths, sorted. ``ValueError`` (naming the archive) if it is not a zip or holds no
    ``train.tsv`` and ``dev*.tsv``; ``FileExistsError`` if a target exists and not ``force`` (nothing is written).
    """
    archive = Path(archive)
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise ValueError(f"{archive}: not a zip archive") from None
    with zf:
        names = [n for n in zf.namelist() if not n.startswith("__MACOSX/") and not n.endswith("/")]
        trains = [n for n in names if n.rsplit("/", 1)[-1] == "train.tsv"]
        if not trains:
            raise ValueError(f"{archive}: no train.tsv in it (members: {names[:10]})")
        folder = min(trains, key=lambda n: n.count("/"))[: -len("train.tsv")]
        members = sorted(n for n in names if n.startswith(folder) and "/" not in n[len(folder):] and n.endswith(".tsv"))
        if not any(n[len(folder):].startswith("dev") for n in members):
            raise ValueError(f"{archive}: no dev*.tsv beside {folder}train.tsv (found {members})")
        task_dir = Path(out_dir) / task
        targets = [task_dir / n[len(folder):] for n in members]
        _check_free(targets, force)
        task_dir.mkdir(parents=True, exist_ok=True)
        for member, target in zip(members, targets):
            part = target.with_name(target.name + ".part")
            with zf.open(member) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(part, target)
    return sorted(targets)


def _read_mrpc(path: Path) -> list[list[str]]:
    """Rows of an MSR paraphrase file (header checked and dropped); tolerant of a BOM and of CRLF line ends."""
    with open(path, encoding="utf-8-sig", newline="\n") as f:
        lines = [line.strip() for line in f]
    if not lines or tuple(lines[0].split("\t")) != MRPC_COLUMNS:
        raise ValueError(f"{path}: expected the header {list(MRPC_COLUMNS)}, found {lines[:1]}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != len(MRPC_COLUMNS):
            raise ValueError(f"{path}: line {number}: expected {len(MRPC_COLUMNS)} tab-separated fields "
                             f"{list(MRPC_COLUMNS)}, found {len(fields)}")
        rows.append(fields)
    return rows


def format_mrpc(train_txt: str | os.PathLike, test_txt: str | os.PathLike, dev_ids: str | os.PathLike,
                out_dir: str | os.PathLike, force: bool = False) -> list[Path]:
    """Write GLUE's MRPC (``out_dir/MRPC/{train,dev,test}.tsv``) from the MSR paraphrase files, as
    ``download_glue_data.py`` did: dev = the training rows whose ``(#1 ID, #2 ID)`` is a line of ``dev_ids``
    (``id1<TAB>id2``), train = the others, both with the header ``Quality #1 ID #2 ID #1 String #2 String``;
    test = the test file's rows as ``index #1 ID #2 ID #1 String #2 String`` (no label). Rows keep their order.

    ``ValueError`` naming the file for a wrong header or row, or dev ids absent from the training file;
    ``FileExistsError`` if a target exists and not ``force`` (nothing is written).
    """
    ids = set()
    with open(dev_ids, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                fields = line.strip().split("\t")
                if len(fields) != 2:
                    raise ValueError(f"{dev_ids}: line {number}: expected '#1 ID<TAB>#2 ID', found {line.strip()!r}")
                ids.add(tuple(fields))
    train_rows = _read_mrpc(Path(train_txt))
    test_rows = _read_mrpc(Path(test_txt))
    dev = [row for row in train_rows if (row[1], row[2]) in ids]
    train = [row for row in train_rows if (row[1], row[2]) not in ids]
    found = {(row[1], row[2]) for row in dev}
    if found != ids:
        missing = sorted(ids - found)
        raise ValueError(f"{dev_ids}: {len(missing)} dev id pairs are not in {train_txt}, e.g. {missing[:3]}")
    task_dir = Path(out_dir) / "MRPC"
    targets = [task_dir / f"{split}.tsv" for split in ("train", "dev", "test")]
    _check_free(targets, force)
    task_dir.mkdir(parents=True, exist_ok=True)
    header = "\t".join(MRPC_COLUMNS)
    _write_lines(targets[0], [header] + ["\t".join(row) for row in train])
    _write_lines(targets[1], [header] + ["\t".join(row) for row in dev])
    _write_lines(targets[2], ["index\t" + "\t".join(MRPC_COLUMNS[1:])]
                 + [f"{i}\t" + "\t".join(row[1:]) for i, row in enumerate(test_rows)])
    return targets


def download_task(task: str, out_dir: str | os.PathLike, force: bool = False, mrpc_dir: str | None = None,
                  fetch_url: Callable[[str, Path], Path] = fetch) -> list[Path]:
    """Download one task (a name of ``TASKS``) into ``out_dir/task/``; returns the written files, or ``[]`` when
    ``out_dir/task/train.tsv`` exists and not ``force`` (skipped). ``fetch_url(url, dest)`` is the network layer."""
    out_dir = Path(out_dir)
    if (out_dir / task / "train.tsv").exists() and not force:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=out_dir) as tmp:
        if task != "MRPC":
            archive = fetch_url(TASK_URLS[task], Path(tmp) / f"{task}.zip")
            return unpack_task_archive(archive, task, out_dir, force)
        files = {}
        for name, url in MRPC_URLS.items():
            local = Path(mrpc_dir) / name if mrpc_dir else None
            if local is not None and local.is_file():
                files[name] = local
            elif local is not None and name != "mrpc_dev_ids.tsv":
                raise FileNotFoundError(f"{local}: no such file. {MRPC_MSI_HELP}")
            else:
                files[name] = fetch_url(url, Path(tmp) / name)
        return format_mrpc(files["msr_paraphrase_train.txt"], files["msr_paraphrase_test.txt"],
                           files["mrpc_dev_ids.tsv"], out_dir, force)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; returns the exit status (0, or 1 with an ``error:`` line on stderr)."""
    parser = argparse.ArgumentParser(description="Download GLUE into OUT_DIR/TASK/{train,dev,test}.tsv.",
                                     epilog=MRPC_MSI_HELP)
    parser.add_argument("out_dir", metavar="OUT_DIR")
    parser.add_argument("--tasks", default="all", help=f"comma-separated, from {','.join(TASKS)}; or all (default)")
    parser.add_argument("--mrpc-dir", metavar="DIR",
                        help="take msr_paraphrase_{train,test}.txt (and mrpc_dev_ids.tsv if there) from DIR")
    parser.add_argument("--force", action="store_true", help="download again and overwrite existing files")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per network read (default 60)")
    args = parser.parse_args(argv)
    try:
        tasks = parse_tasks(args.tasks)
    except ValueError as err:
        parser.error(str(err))
    for task in tasks:
        try:
            written = download_task(task, args.out_dir, args.force, args.mrpc_dir,
                                    fetch_url=lambda url, dest: fetch(url, dest, args.timeout))
        except (OSError, ValueError, DownloadError) as err:
            print(f"error: {task}: {err}", file=sys.stderr)
            return 1
        if written:
            print(f"{task}: wrote {', '.join(p.name for p in written)} in {Path(args.out_dir) / task}")
        else:
            print(f"{task}: {Path(args.out_dir) / task / 'train.tsv'} exists, skipped (--force downloads again)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

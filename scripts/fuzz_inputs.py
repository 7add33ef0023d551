"""Fuzzes the input CLIs with broken copies of real files; prints ONE JSON line of counts.

    python scripts/fuzz_inputs.py [--seed 0] [--n 3] [--out DIR] [--good 4]
        [--image_kinds K,...] [--table_kinds K,...] [--file_timeout 30] [--run_timeout 600]

It mutates the ChestX-ray14 PNGs and the DICOMs of ``../shared/data`` and the label tables
(rows of NIH's ``Data_Entry_2017_v2020.csv.gz`` and CheXpert's ``train_sample.csv.gz``) in
seeded ways (``scripts/fuzz_mutants.py``: ``--n`` mutants of each kind), then runs:

- every image through ``image_inputs.load_image`` in a watched worker, one file at a time
  (a file over ``--file_timeout`` seconds is a hang; the worker restarts after it);
- ``python -m cxrjax.predict`` once on all of them and the untouched copies, with a tiny run
  made the way the tests make one (random weights, one checkpoint; kept in ``OUT/run``);
- ``python -m cxrjax.data.prepare`` on an NIH download of the PNG-named ones (with and
  without ``--skip_bad``), and once per mutated label table (NIH and ``--dataset chexpert``).

Each run has ``--run_timeout`` seconds. The checks: every bad file (or table row) is named in
one line (``error: PATH: why``, a ``prepare_problems.tsv`` / manifest line, or a one-line
error naming the table), and predict says nothing else about it (no library log line); no
traceback on stderr; no hang; every good file or row is scored or written; each exit code is
the documented one (predict: 1 when an input failed, else 0; prepare --skip_bad: 0 unless the
table is refused). The JSON line counts each outcome (``used``: scored or written;
``named_errors``; ``good_dropped``; ``unnamed``: a bad one neither used nor named; ...) and
lists the first findings; the exit status is 0 when every check holds. Every run's stderr is
kept in ``OUT/logs/``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import glob
import json
import os
import platform
import shutil
import sys
import time
from collections import Counter

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import fuzz_mutants as fm  # noqa: E402
import fuzz_runs  # noqa: E402

DATA = os.path.join(ROOT, "..", "shared", "data")
NIH_IMAGES = os.path.join(DATA, "nih_sample", "images")
DICOMS = [os.path.join(DATA, "dicom", n) for n in ("siim_pneumothorax_sample.dcm",
                                                   "monochrome1_sample.dcm")]
DATA_ENTRY = os.path.join(DATA, "nih", "Data_Entry_2017_v2020.csv.gz")
CHEXPERT = os.path.join(DATA, "chexpert", "train_sample.csv.gz")
TABLE_ROWS = 6  # rows per mutated label table (each has its image)


class Tally:
    """The counts of the JSON line, and the first few findings in words."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.findings: list[str] = []

    def add(self, key: str, what: str = "") -> None:
        self.counts[key] += 1
        if what and len(self.findings) < 40:
            self.findings.append(f"{key}: {what}")


# ------------------------------------------------------------------ images ---

def make_images(out: str, n: int, good: int, kinds: list[str], rng: np.random.Generator
                ) -> tuple[list[dict], Counter]:
    """The untouched copies and the mutants, as {path, kind, expect, source (file name)}."""
    folder = os.path.join(out, "images")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    pngs = sorted(glob.glob(os.path.join(NIH_IMAGES, "*.png")))
    files, made = [], Counter()
    for src in pngs[:good] + DICOMS:
        dst = os.path.join(folder, os.path.basename(src))
        shutil.copyfile(src, dst)
        files.append({"path": dst, "kind": "untouched", "expect": fm.GOOD,
                      "source": os.path.basename(src)})
    sources = {"png": pngs[good:] or pngs, "dcm": DICOMS}
    for kind in kinds:
        for ext, pool in sources.items():
            for i in range(n):
                src = pool[int(rng.integers(len(pool)))]
                with open(src, "rb") as f:
                    mutant = fm.IMAGE_KINDS[kind](f.read(), ext, rng)
                stem = os.path.splitext(os.path.basename(src))[0]
                dst = os.path.join(folder, f"{stem}__{ext}_{kind}{i}.{mutant.ext}")
                with open(dst, "wb") as f:
                    f.write(mutant.data)
                files.append({"path": dst, "kind": f"{ext}_{kind}", "expect": mutant.expect,
                              "source": os.path.basename(src)})
                made[f"image_{ext}_{kind}"] += 1
    return files, made


def judge(item: dict, used: bool, named: int, what: str, tally: Tally,
          strict: bool = True) -> None:
    """One file's or row's outcome against what its mutation requires (``strict``: one line
    per file; a table row may be named twice, as a row and as its image)."""
    name = f"{what} {item.get('id') or item.get('path')}"
    if named > 1 and strict:
        tally.add("named_more_than_once", name)
    if used and named:
        tally.add("used_and_named", name)
    elif used:
        tally.add("used")
        if item["expect"] == fm.BAD:
            tally.add("bad_accepted", name)
    elif named:
        tally.add("named_errors")
        if item["expect"] == fm.GOOD:
            tally.add("good_dropped", f"{name} (named as bad)")
    else:
        tally.add("good_dropped" if item["expect"] == fm.GOOD else "unnamed", f"{name} (lost)")


def check_decoding(files: list[dict], out: str, timeout: float, tally: Tally) -> None:
    """Each file alone through ``load_image``: a hang, a traceback or a multi-line error."""
    results = fuzz_runs.decode_each([f["path"] for f in files], 72, 64, timeout,
                                    os.path.join(out, "logs", "decode.err"))
    for item, (state, text) in zip(files, results, strict=True):
        if state == "hang":
            tally.add("hangs", f"decoding {item['path']} took over {timeout:g} s")
        elif state == "traceback":
            tally.add("tracebacks", f"decoding {item['path']}: {text}")
        elif state == "error" and "\n" in text:
            tally.add("multi_line_errors", f"decoding {item['path']}")


def check_predict(files: list[dict], workdir: str, out: str, timeout: float,
                  tally: Tally) -> None:
    """predict on every file at once: each good one scored, each bad one named once."""
    pred_out = os.path.join(out, "predict")
    shutil.rmtree(pred_out, ignore_errors=True)
    run = fuzz_runs.run_cli(["-m", "cxrjax.predict", "--workdir", workdir, "--out", pred_out,
                             *(f["path"] for f in files)], timeout, out, "predict", tally)
    if run is None:
        return
    scored = set()
    if os.path.exists(os.path.join(pred_out, "predictions.csv")):
        with open(os.path.join(pred_out, "predictions.csv"), newline="") as f:
            scored = {row["path"] for row in csv.DictReader(f)}
    named = Counter(line.split(": ", 2)[1] for line in run.stderr.splitlines()
                    if line.startswith("error: ") and line.count(": ") >= 2)
    for item in files:
        judge(item, item["path"] in scored, named[item["path"]], "predict", tally)
    for line in run.stderr.splitlines():  # a second line about a file: a library's log
        if line and not line.startswith(("error: ", "warning: ", "note: ")) and \
                "input(s) failed" not in line:
            tally.add("stray_lines", f"predict stderr: {line[:160]}")
    expected_rc = 1 if len(scored) < len(files) else 0
    if run.returncode != expected_rc:
        tally.add("exit_code_mismatches", f"predict exited {run.returncode}, not {expected_rc}")
    tally.counts["files_processed"] += len(files)


def check_prepare_images(files: list[dict], out: str, timeout: float, tally: Tally) -> None:
    """An NIH download of the good PNGs and the PNG-named mutants (each with its source's
    row): --skip_bad writes every good one and lists every bad one; without it, nothing is
    written and prepare_problems.tsv lists them all."""
    header, rows = fuzz_runs.data_entry_rows(DATA_ENTRY)
    pngs, lines = [], []
    for item in files:  # a DICOM named .png is no PNG to prepare, whatever predict makes of it
        if item["path"].endswith(".png"):
            dicom = item["source"] not in rows
            pngs.append({**item, "expect": fm.BAD if dicom else item["expect"],
                         "row": rows[files[0]["source"] if dicom else item["source"]]})
    manual = os.path.join(out, "prepare_images", "nih")
    shutil.rmtree(os.path.dirname(manual), ignore_errors=True)
    os.makedirs(os.path.join(manual, "images"))
    for item in pngs:
        name = os.path.basename(item["path"])
        item["id"] = name
        shutil.copyfile(item["path"], os.path.join(manual, "images", name))
        lines.append(",".join([name, *item["row"].split(",")[1:]]))
    with open(os.path.join(manual, "Data_Entry_2017_v2020.csv"), "w") as f:
        f.write("\n".join([header, *lines]) + "\n")
    for skip in (True, False):
        data_dir = os.path.join(os.path.dirname(manual), f"out_skip{int(skip)}")
        result = fuzz_runs.prepare(["--manual_dir", manual, "--data_dir", data_dir], skip,
                                   timeout, out, f"prepare_images_skip{int(skip)}", tally)
        if result is None:
            continue
        rc, written, problems, _ = result
        if rc != (1 if problems and not skip else 0):
            tally.add("exit_code_mismatches", f"prepare (skip_bad={skip}) exited {rc}")
        for item in pngs:
            named = fuzz_runs.hits(problems, item["id"])
            if skip:
                judge(item, item["id"] in written, named, "prepare", tally, strict=False)
            elif item["expect"] == fm.BAD and not named:  # refused: every bad file listed
                tally.add("unnamed", f"prepare without --skip_bad: {item['id']}")
            elif item["expect"] == fm.GOOD and named:
                tally.add("good_dropped", f"prepare without --skip_bad: {item['id']}")
        tally.counts["files_processed"] += len(pngs) if skip else 0


# ------------------------------------------------------------------ tables ---

def check_tables(out: str, n: int, kinds: list[str], rng: np.random.Generator,
                 timeout: float, tally: Tally) -> Counter:
    """Each mutated label table prepared alone (with --skip_bad): good rows written, bad
    rows named (by image or line), a refused table named in the error."""
    made: Counter[str] = Counter()
    for dataset in ("nih", "chexpert"):
        table, where = fuzz_runs.download(dataset, os.path.join(out, f"tables_{dataset}"),
                                          DATA_ENTRY, CHEXPERT, NIH_IMAGES, TABLE_ROWS)
        name = "Data_Entry_2017_v2020" if dataset == "nih" else "train"
        for kind in kinds:
            for i in range(n):
                mutant = fm.TABLE_KINDS[kind](table, rng)
                manual = os.path.join(out, f"tables_{dataset}", f"{kind}{i}")
                fuzz_runs.fresh_download(where, manual, name + mutant.suffix, mutant.data)
                made[f"table_{dataset}_{kind}"] += 1
                argv = ["--manual_dir", manual, "--data_dir", manual + "_out"]
                if dataset == "chexpert":
                    argv = ["--dataset", "chexpert", *argv]
                result = fuzz_runs.prepare(argv, True, timeout, out,
                                           f"table_{dataset}_{kind}{i}", tally)
                if result is not None:
                    _judge_table(dataset, kind, mutant, table, result, tally)
    return made


def _judge_table(dataset: str, kind: str, mutant: fm.TableMutant, table: fm.Table,
                 result: tuple, tally: Tally) -> None:
    rc, written, problems, error = result
    label = f"{dataset} table {kind}"
    tally.counts["files_processed"] += 1
    if rc != 0 and not problems:  # refused as a whole: only a table that may be, by name
        if ("Data_Entry" if dataset == "nih" else "train.csv") in error:
            tally.add("named_errors")
            if mutant.whole == fm.GOOD:
                tally.add("good_dropped", f"{label}: a valid table was refused: {error}")
        else:
            tally.add("unnamed", f"{label}: exit {rc} without naming the table: {error}")
        return
    if mutant.whole == fm.BAD:
        tally.add("bad_accepted", f"{label}: a broken table was read")
    lines = mutant.lines or {rid: n for n, rid in enumerate(table.ids, start=2)}
    # A damaged id (a flipped byte in a path) is named as written: such a problem belongs to
    # a row that is neither written nor named by its id or line.
    unclaimed = [p for p in problems if p[0] not in table.ids and not any(
        fuzz_runs.hits([p], "", n) for n in lines.values())]
    for rid in table.ids:
        if rid in mutant.rows:  # else cut off with the end of the file
            named = fuzz_runs.hits(problems, rid, lines[rid])
            if not named and rid not in written and unclaimed:
                named = bool(unclaimed.pop(0))
            judge({"id": rid, "expect": mutant.rows[rid]}, rid in written, named, label, tally,
                  strict=False)
    if set(written) - set(table.ids):
        tally.add("bad_accepted", f"{label}: wrote ids not in the table: "
                                  f"{sorted(set(written) - set(table.ids))[:3]}")


# -------------------------------------------------------------------- main ---

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=3, help="mutants per kind (and source type)")
    parser.add_argument("--out", default="/tmp/cxrjax_fuzz")
    parser.add_argument("--good", type=int, default=4, help="untouched NIH PNGs scored beside")
    parser.add_argument("--image_kinds", default=",".join(fm.IMAGE_KINDS))
    parser.add_argument("--table_kinds", default=",".join(fm.TABLE_KINDS))
    parser.add_argument("--file_timeout", type=float, default=30.0)
    parser.add_argument("--run_timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    image_kinds = [k for k in args.image_kinds.split(",") if k]
    table_kinds = [k for k in args.table_kinds.split(",") if k]
    unknown = (set(image_kinds) - set(fm.IMAGE_KINDS)) | (set(table_kinds) - set(fm.TABLE_KINDS))
    if unknown:
        parser.error(f"unknown kind(s): {', '.join(sorted(unknown))}")
    start, rng, tally = time.time(), np.random.default_rng(args.seed), Tally()
    os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
    files, made = make_images(args.out, args.n, args.good, image_kinds, rng)
    check_decoding(files, args.out, args.file_timeout, tally)
    workdir = fuzz_runs.tiny_run(os.path.join(args.out, "run"))
    check_predict(files, workdir, args.out, args.run_timeout, tally)
    check_prepare_images(files, args.out, args.run_timeout, tally)
    made += check_tables(args.out, args.n, table_kinds, rng, args.run_timeout, tally)
    keys = ("files_processed", "used", "named_errors", "tracebacks", "hangs", "good_dropped",
            "unnamed", "bad_accepted", "used_and_named", "named_more_than_once",
            "multi_line_errors", "stray_lines", "exit_code_mismatches", "runs")
    report = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "seed": args.seed, "n": args.n, "mutants": dict(sorted(made.items())),
              "mutants_total": sum(made.values()), **{k: tally.counts[k] for k in keys},
              "seconds": round(time.time() - start, 1), "findings": tally.findings}
    print(json.dumps(report))
    failed = ("tracebacks", "hangs", "good_dropped", "unnamed", "used_and_named",
              "named_more_than_once", "multi_line_errors", "stray_lines", "exit_code_mismatches")
    return 1 if any(tally.counts[k] for k in failed) else 0


if __name__ == "__main__":
    sys.exit(main())

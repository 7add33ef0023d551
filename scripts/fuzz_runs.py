"""The runs behind ``scripts/fuzz_inputs.py``: the CLIs under a time limit, a watched decoding
worker (one time limit per file), the downloads a label table is prepared from, a tiny run.

``python scripts/fuzz_runs.py --decode RES CROP`` is the worker: JSON paths on stdin, then one
line per file on stdout (``begin``, then ``ok``, ``error`` or ``traceback``).
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import time
import traceback
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACEBACK = "Traceback (most recent call last)"
PREPARE_FLAGS = ["--resolution", "16", "--workers", "0"]


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": ROOT + (os.pathsep + path if path else ""),
            "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}


def run_cli(argv: list[str], timeout: float, out: str, name: str,
            tally: Any) -> subprocess.CompletedProcess | None:
    """``python ARGV`` under ``timeout`` s; stderr kept in OUT/logs/NAME.err; a hang or a
    traceback is tallied (None on a hang)."""
    tally.counts["runs"] += 1
    log = os.path.join(out, "logs", f"{name}.err")
    try:
        run = subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                             errors="replace", timeout=timeout, env=_env(), cwd=ROOT,
                             check=False)
    except subprocess.TimeoutExpired as e:
        with open(log, "w") as f:
            f.write(e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes)
                    else (e.stderr or ""))
        tally.add("hangs", f"{name}: over {timeout:g} s")
        return None
    with open(log, "w") as f:
        f.write(run.stderr)
    if TRACEBACK in run.stderr:
        tally.add("tracebacks", f"{name}: {run.stderr.strip().splitlines()[-1][:200]} "
                                f"(see {log})")
    return run


# ------------------------------------------------------------------ prepare ---

def _problems(data_dir: str, skip_bad: bool) -> tuple[set[str], list[tuple[str, str]]]:
    """(written ids, [(image, reason)]) from the built dataset's metadata or the problems TSV."""
    meta = glob.glob(os.path.join(data_dir, "*", "*", "*", "metadata.json"))
    if skip_bad and meta:
        with open(meta[0]) as f:
            m = json.load(f)
        return set(m.get("image_ids", [])), [(p["image"], p["reason"]) for p in m["skipped"]]
    tsv = os.path.join(data_dir, "prepare_problems.tsv")
    if not os.path.exists(tsv):
        return set(), []
    with open(tsv, newline="", errors="replace") as f:  # image<TAB>reason, unquoted
        return set(), [tuple(x.rstrip("\n").split("\t", 1)) for x in f][1:]


def prepare(argv: list[str], skip_bad: bool, timeout: float, out: str, name: str,
            tally: Any) -> tuple[int, set[str], list[tuple[str, str]], str] | None:
    """``cxrjax.data.prepare ARGV`` (a fresh data_dir): (exit code, ids written, problems
    [(image, reason)], the first ``error:`` line); None on a hang."""
    data_dir = argv[argv.index("--data_dir") + 1]
    shutil.rmtree(data_dir, ignore_errors=True)
    run = run_cli(["-m", "cxrjax.data.prepare", *argv, *PREPARE_FLAGS,
                   *(["--skip_bad"] if skip_bad else [])], timeout, out, name, tally)
    if run is None:
        return None
    written, problems = _problems(data_dir, skip_bad)
    error = next((x for x in run.stderr.splitlines() if x.startswith("error:")), "")
    return run.returncode, written, problems, error


def hits(problems: list[tuple[str, str]], image: str, line: int | None = None) -> int:
    """How many problems name ``image`` (or, for a table row, its line)."""
    def covers(reason: str) -> bool:
        return line is not None and any(
            int(a) <= line <= int(b or a) for a, b in re.findall(r"\blines? (\d+)(?:-(\d+))?",
                                                                 reason))

    return sum(1 for i, r in problems if i == image or covers(r))


def data_entry_rows(path: str) -> tuple[str, dict[str, str]]:
    """NIH's header line and each image's row line."""
    with gzip.open(path, "rt", newline="") as f:
        lines = f.read().splitlines()
    return lines[0], {line.split(",", 1)[0]: line for line in lines[1:]}


def download(dataset: str, folder: str, data_entry: str, chexpert: str, nih_images: str,
             count: int):
    """A download of ``count`` rows with their images (in FOLDER/base) and its ``Table``."""
    from fuzz_mutants import Table
    from PIL import Image

    base = os.path.join(folder, "base")
    shutil.rmtree(folder, ignore_errors=True)
    pngs = sorted(glob.glob(os.path.join(nih_images, "*.png")))[:count]
    if dataset == "nih":
        header, rows = data_entry_rows(data_entry)
        os.makedirs(os.path.join(base, "images"))
        for p in pngs:
            shutil.copyfile(p, os.path.join(base, "images", os.path.basename(p)))
        ids = [os.path.basename(p) for p in pngs]
        extra = [x for k, x in rows.items() if k not in ids][:3000]
        return Table(header, [rows[i] for i in ids], ids, 4, 5, 7, extra), base
    with gzip.open(chexpert, "rt", newline="") as f:
        lines = f.read().splitlines()
    frontal = [x for x in lines[1:] if ",Frontal," in x][:count]
    ids = [x.split(",", 1)[0].split("/", 1)[1] for x in frontal]
    for rid, p in zip(ids, pngs, strict=True):
        os.makedirs(os.path.dirname(os.path.join(base, rid)), exist_ok=True)
        with Image.open(p) as img:
            img.convert("L").resize((128, 128)).save(os.path.join(base, rid), "JPEG")
    return Table(lines[0], frontal, ids, 2, 1, 19, [x for x in lines[1:] if x not in frontal]), base


def fresh_download(base: str, manual: str, table_name: str, data: bytes) -> None:
    """MANUAL: links to BASE's image folders and the table written as ``table_name``."""
    shutil.rmtree(manual, ignore_errors=True)
    os.makedirs(manual)
    for entry in os.listdir(base):
        os.symlink(os.path.join(base, entry), os.path.join(manual, entry))
    with open(os.path.join(manual, table_name), "wb") as f:
        f.write(data)


# ------------------------------------------------------------------ decode ---

def decode_each(paths: list[str], resolution: int, crop: int, timeout: float,
                log: str) -> list[tuple[str, str]]:
    """Each path's (state, text): ok, error (ImageError's message), traceback, or hang (over
    ``timeout`` s; the worker is killed and restarted after it)."""
    results: list[tuple[str, str]] = []
    with open(log, "w") as err:
        while len(results) < len(paths):
            results += _watch(paths[len(results):], resolution, crop, timeout, err)
    return results


def _watch(paths: list[str], resolution: int, crop: int, timeout: float,
           err: Any) -> list[tuple[str, str]]:
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--decode",
                             str(resolution), str(crop)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=err, env=_env(), cwd=ROOT, text=True)
    proc.stdin.write(json.dumps(paths))
    proc.stdin.close()
    results: list[tuple[str, str]] = []
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.time() + max(timeout, 300.0)  # the worker's imports, then each file
    while len(results) < len(paths):
        if not sel.select(max(deadline - time.time(), 0)):
            proc.kill()
            proc.wait()
            return [*results, ("hang", "")]
        line = proc.stdout.readline()
        if not line:  # died without a word: a crash of the decoder itself
            proc.wait()
            return [*results, ("traceback", f"worker died (exit {proc.returncode})")]
        state, _, text = line.rstrip("\n").partition("\t")
        if state == "begin":
            deadline = time.time() + timeout
        else:
            results.append((state, json.loads(text)))
    proc.wait()
    return results


def _decode_worker(resolution: int, crop: int) -> None:
    from cxrjax.data.image_inputs import ImageError, load_image

    for path in json.load(sys.stdin):
        print("begin", flush=True)
        try:
            load_image(path, resolution, crop)
            state, text = "ok", ""
        except ImageError as e:
            state, text = "error", str(e)
        except Exception:  # noqa: BLE001 - the finding: any other exception is a traceback
            state, text = "traceback", traceback.format_exc()
        print(f"{state}\t{json.dumps(text)}", flush=True)


# -------------------------------------------------------------------- run ---

def tiny_run(workdir: str) -> str:
    """A run ``predict`` loads, made as tests/test_predict.py makes one: a tiny R18 +
    R18-F-MSML config (72 px, 64 px crops) and one checkpoint of seeded random weights.
    Reused when WORKDIR already holds it."""
    done = os.path.join(workdir, "made")
    if os.path.exists(done):
        return workdir
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--make_run", workdir],
                          env=_env(), cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"could not make the tiny run in {workdir}:\n{proc.stderr[-3000:]}")
    with open(done, "w") as f:
        f.write("ok\n")
    return workdir


def random_variables(model: Any, crop: int, seed: int = 0) -> dict:
    """Variables without compiling the model's init (slow on 2 cores): fan-in-scaled normal
    weights, BatchNorm statistics mean 0 and variance 1 (the tests' helpers serve it too)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, crop, crop, 1), jnp.uint8)))
    rng = np.random.default_rng(seed)

    def value(path, leaf):
        name = jax.tree_util.keystr(path)
        if "batch_stats" in name:
            return jnp.full(leaf.shape, 1.0 if "var" in name else 0.0, leaf.dtype)
        fan_in = max(int(np.prod(leaf.shape[:-1])), 1)
        return jnp.asarray(rng.normal(0, 1 / np.sqrt(fan_in), leaf.shape), leaf.dtype)

    out = jax.tree_util.tree_map_with_path(value, dict(shapes))
    return {"params": out["params"], "batch_stats": out.get("batch_stats", {})}


def _make_run(workdir: str) -> None:
    import importlib

    from cxrjax import models, train_step
    from cxrjax.evaluation import inference
    from cxrjax.io import checkpoint
    from cxrjax.runfolder import loading as runs

    c = importlib.import_module("configs.r18_msml").get_config()
    c.model.trunk_a = "resnet_tiny"
    if c.model.trunk_b is not None:
        c.model.trunk_b = "resnet_tiny"
    c.model.bilinear_dim, c.model.init = 16, "scratch"
    c.data.resolution, c.data.crop = 72, 64
    c.train.batch_size = c.train.eval_batch_size = 4
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(c.to_json_best_effort(indent=2))
    model = models.build_model(c.model)
    variables = random_variables(model, 64)
    manager = checkpoint.open_manager(runs.stage_dir(workdir, 0, c.train.stages[0]), 3)
    state, _ = train_step.create_stage(c, 0, model, variables, 10, inference.create_mesh())
    checkpoint.save(manager, 10, state, {"step": 10}, {"stage": "global"}, None)
    manager.wait_until_finished()


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    if sys.argv[1] == "--decode":
        _decode_worker(int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1] == "--make_run":
        _make_run(sys.argv[2])

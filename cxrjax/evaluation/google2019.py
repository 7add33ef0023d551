"""NIH's radiologist-adjudicated labels (Majkowska et al., Radiology 2020) as a test reference.

Google's file labels 4,375 images of NIH's official test and validation lists for four
findings, each ``YES``/``NO`` after adjudication by three radiologists. A model is scored on the
findings it can be compared on:

* ``Pneumothorax``: the model's Pneumothorax probability.
* ``Nodule or mass``: the larger of the model's Nodule and Mass probabilities (the finding is
  present when either is; the max is the probability of the more likely one, and it needs no
  calibration between the two outputs).
* ``Fracture`` and ``Airspace opacity``: only for a model with a ``Fracture`` / ``Lung Opacity``
  class (the canonical label-space names); an NIH-14 model has neither and is not scored on them.

The file is not shipped in the package (its redistribution terms are not stated; README): users
pass their copy as ``google2019=PATH`` or set ``CXRJAX_GOOGLE2019``.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Sequence

import numpy as np

from cxrjax.evaluation import masked_metrics
from cxrjax.io import fileio

NAME = "google2019"
ENV = "CXRJAX_GOOGLE2019"
FINDINGS = ("Pneumothorax", "Nodule or mass", "Fracture", "Airspace opacity")
SOURCE_CLASSES = {"Pneumothorax": ("Pneumothorax",), "Nodule or mass": ("Nodule", "Mass"),
                  "Fracture": ("Fracture",), "Airspace opacity": ("Lung Opacity",)}
RULES = {"Pneumothorax": "Pneumothorax", "Nodule or mass": "max(Nodule, Mass)",
         "Fracture": "Fracture", "Airspace opacity": "Lung Opacity"}
_VALUES = {"YES": 1, "NO": 0}


def is_google2019(labels: str | None) -> bool:
    """Whether a ``--labels`` value names these labels (``google2019`` or ``google2019=PATH``)."""
    return bool(labels) and (labels == NAME or labels.startswith(NAME + "="))


def resolve_path(labels: str) -> str:
    """The file named by ``google2019=PATH`` (or ``$CXRJAX_GOOGLE2019`` for a bare name)."""
    path = labels[len(NAME) + 1:] if labels.startswith(NAME + "=") else os.environ.get(ENV, "")
    if not path:
        raise ValueError(f"--labels {NAME}: give your copy of Google's file as --labels "
                         f"{NAME}=PATH (or set {ENV}); it is not shipped with cxrjax")
    path = fileio.expand(path)
    if not fileio.exists(path):
        raise FileNotFoundError(f"--labels {NAME}: no such file: {path}")
    return path


def read_labels(path: str) -> tuple[list[str], np.ndarray, list[str]]:
    """(image ids, (N, 4) 0/1 labels in ``FINDINGS`` order, set ids) of Google's CSV(.gz).

    Read by column name; CRLF line ends and the unquoted bracketed headers (which hold commas,
    so a row has 16 fields) are the file as published."""
    data = fileio.read_bytes(path)
    text = (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise ValueError(f"{path}: empty")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in ("Image Index", *FINDINGS, "Set Id") if c not in header]
    if missing:
        raise ValueError(f"{path}: not Google's NIH labels file (no column(s) {missing})")
    col = {name: header.index(name) for name in ("Image Index", *FINDINGS, "Set Id")}
    ids, labels, sets = [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
        cells = [row[col[f]].strip().upper() for f in FINDINGS]
        bad = [c for c in cells if c not in _VALUES]
        if bad:
            raise ValueError(f"{path}:{line}: label {bad[0]!r} is not YES or NO")
        ids.append(row[col["Image Index"]].strip())
        labels.append([_VALUES[c] for c in cells])
        sets.append(row[col["Set Id"]].strip())
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: an image is listed twice")
    return ids, np.asarray(labels, np.uint8).reshape(-1, len(FINDINGS)), sets


def model_scores(probs: np.ndarray, classes: Sequence[str]) -> dict[str, np.ndarray]:
    """Per finding the model can be scored on, its score (N,) by ``RULES``."""
    column = {c: i for i, c in enumerate(classes)}
    out = {}
    for finding in FINDINGS:
        sources = SOURCE_CLASSES[finding]
        if all(s in column for s in sources):
            out[finding] = np.max(probs[:, [column[s] for s in sources]], axis=1)
    return out


def score(image_ids: Sequence[str], probs: np.ndarray, classes: Sequence[str], path: str, *,
          n_boot: int = 1000, seed: int = 0) -> dict:
    """The model's AUCs on the adjudicated labels of the images it scored that the file
    lists, per finding it has (with stratified bootstrap CIs) and their mean (with its CI)."""
    ids, labels, sets = read_labels(path)
    probs = np.asarray(probs, np.float64)
    if probs.shape != (len(image_ids), len(classes)):
        raise ValueError(f"probabilities {probs.shape} for {len(image_ids)} images and "
                         f"{len(classes)} classes")
    by_finding = model_scores(probs, classes)
    if not by_finding:
        raise ValueError(f"the model's classes ({', '.join(classes)}) give none of {FINDINGS}")
    position = {name: i for i, name in enumerate(image_ids)}
    rows = [i for i, name in enumerate(ids) if name in position]
    if not rows:
        raise ValueError(f"none of the {len(image_ids)} scored images is among the {len(ids)} "
                         f"images of {path}")
    mine = np.array([position[ids[i]] for i in rows])
    names = list(by_finding)
    scores = np.stack([by_finding[f][mine] for f in names], axis=1)
    truth = labels[rows][:, [FINDINGS.index(f) for f in names]]
    out, _ = masked_metrics.summary(scores, truth, None, names, n_boot=n_boot, seed=seed)
    out.update(labels=NAME, labels_file=path, rules={f: RULES[f] for f in names},
               not_scored=[f for f in FINDINGS if f not in by_finding],
               images_in_file=len(ids), images_scored_not_in_file=len(image_ids) - len(rows),
               sets={s: int(sum(sets[i] == s for i in rows)) for s in sorted(set(sets))})
    return out


def format_text(result: dict) -> str:
    """The findings table (AUC with 95% CI, positives of labelled images) and the mean."""
    from cxrjax.evaluation.prediction_files import format_value as fv

    lines = [f"{'finding':<18} {'rule':<18} {'AUC':>7}  95% CI            positives/images"]
    for f, auc in result["per_class"].items():
        lo, hi = result["per_class_ci95"][f]
        lines.append(f"{f:<18} {result['rules'][f]:<18} {fv(auc, 4):>7}  [{fv(lo, 4)}, "
                     f"{fv(hi, 4)}]  {result['n_positive'][f]}/{result['n_known'][f]}")
    lo, hi = result["mean_auc_ci95"]
    lines.append(f"{'mean':<18} {'':<18} {fv(result['mean_auc'], 4):>7}  [{fv(lo, 4)}, "
                 f"{fv(hi, 4)}]  {result['n_images']} images of {result['labels_file']}")
    if result["not_scored"]:
        lines.append(f"not scored (the model has no such class): "
                     f"{', '.join(result['not_scored'])}")
    return "\n".join(lines)

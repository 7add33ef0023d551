"""Train/val/test splits of ChestX-ray14, chosen at load time (no image is re-decoded).

Schemes:
  * ``paper``   the paper's random 70/10/20 split at the patient level. Patients are ordered by
                SHA-256 of ``"{seed}:{patient_id}"`` and cut by cumulative image count, so the
                split is identical on every machine, NumPy and Python version.
  * ``official`` NIH's ``train_val_list.txt`` / ``test_list.txt``; validation is carved from
                train_val by patient (12.5% of its images, i.e. ~10% of the data).
  * ``chexnet`` the lists of the CheXNet reimplementations and MedMNIST's ChestMNIST
                (78,468 / 11,219 / 22,433), shipped with the package.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Sequence

import numpy as np

from cxrjax.data import labels as labels_lib

SCHEMES = ("paper", "official", "chexnet")
SPLITS = ("train", "val", "test")
OFFICIAL_LISTS = ("train_val_list.txt", "test_list.txt")
CHEXNET_LISTS = {s: f"{s}_list.txt" for s in SPLITS}


def patient_order(patient_ids: np.ndarray, seed: int) -> np.ndarray:
    """Unique patient ids in a seeded order that depends only on (seed, id)."""
    unique = np.unique(patient_ids)
    keys = [hashlib.sha256(f"{seed}:{int(p)}".encode()).digest() for p in unique]
    return unique[sorted(range(len(unique)), key=keys.__getitem__)]


def patient_split(patient_ids: np.ndarray, fractions: Sequence[float], seed: int) -> np.ndarray:
    """Assigns each row a part 0..len(fractions)-1, whole patients at a time, by image count.

    Patients are taken in the seeded order; a patient goes to the first part whose cumulative
    image target is not yet reached, so part sizes match ``fractions`` to within one patient.
    """
    patient_ids = np.asarray(patient_ids)
    order = patient_order(patient_ids, seed)
    uniq, counts = np.unique(patient_ids, return_counts=True)
    count_of = dict(zip(uniq.tolist(), counts.tolist(), strict=True))
    bounds = np.cumsum(fractions) / np.sum(fractions) * len(patient_ids)
    part_of: dict[int, int] = {}
    done, part = 0, 0
    for p in order.tolist():
        # Put the patient where the running total lands closest to the boundary.
        while part < len(bounds) - 1 and done + count_of[p] / 2 > bounds[part]:
            part += 1
        part_of[p] = part
        done += count_of[p]
    return np.array([part_of[p] for p in patient_ids.tolist()], np.int64)


def _read_list(path: str) -> list[str]:
    """First whitespace-separated field of each non-empty line (plain or .gz)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.split()[0] for line in f if line.strip()]


def _find_list(lists_dir: str, name: str) -> str | None:
    for candidate in (name, name + ".gz"):
        path = os.path.join(lists_dir, candidate)
        if os.path.exists(path):
            return path
    return None


def _assign(table: labels_lib.LabelTable, lists: dict[str, list[str]], what: str
            ) -> dict[str, list[str]]:
    """Restricts named lists to the table (kept in table order); every table row needs a list."""
    where: dict[str, str] = {}
    for split, names in lists.items():
        for n in names:
            if n in where and where[n] != split:
                raise ValueError(f"{what}: image {n} is in both {where[n]} and {split} lists")
            where[n] = split
    missing = [n for n in table.image_ids if n not in where]
    if missing:
        raise ValueError(f"{what}: {len(missing)} image(s) of the label table are in no list, "
                         f"e.g. {', '.join(missing[:5])}")
    out: dict[str, list[str]] = {s: [] for s in lists}
    for n in table.image_ids:
        out[where[n]].append(n)
    return out


def chexnet_lists(lists_dir: str | None = None) -> dict[str, list[str]]:
    """The CheXNet lists as image names, in file order; default: the copy in the package."""
    if lists_dir is None:
        lists_dir = labels_lib.resource_path("chexnet_split")
    out = {}
    for split, name in CHEXNET_LISTS.items():
        path = _find_list(lists_dir, name)
        if path is None:
            raise FileNotFoundError(f"chexnet split: {name}[.gz] not found in {lists_dir}")
        out[split] = _read_list(path)
    return out


def split_images(data_entry_csv: str | os.PathLike | None, scheme: str = "paper", seed: int = 0,
                 lists_dir: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "test": [...]}`` image names, each in table order.

    ``data_entry_csv=None`` uses the shipped 112,120-row table. ``lists_dir`` holds the
    official lists (default: the CSV's folder) or CheXNet-format lists (default: shipped).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown split scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    table = labels_lib.load_label_table(None if data_entry_csv is None else
                                        os.fspath(data_entry_csv))
    lists_dir = None if lists_dir is None else os.fspath(lists_dir)
    if scheme == "paper":
        part = patient_split(table.patient_ids, (0.7, 0.1, 0.2), seed)
        return {s: [n for n, p in zip(table.image_ids, part, strict=True) if p == i]
                for i, s in enumerate(SPLITS)}
    if scheme == "chexnet":
        return _assign(table, chexnet_lists(lists_dir), "chexnet split")
    # official
    if lists_dir is None:
        if data_entry_csv is None:
            raise FileNotFoundError(
                "official split: NIH's train_val_list.txt / test_list.txt are not shipped; pass "
                "lists_dir (the folder of your NIH download) or use the 'chexnet' scheme")
        lists_dir = os.path.dirname(os.path.abspath(os.fspath(data_entry_csv)))
    paths = {name: _find_list(lists_dir, name) for name in OFFICIAL_LISTS}
    absent = [n for n, p in paths.items() if p is None]
    if absent:
        raise FileNotFoundError(f"official split: {', '.join(absent)} not found in {lists_dir}; "
                                "they come with the NIH download (or use the 'chexnet' scheme)")
    assigned = _assign(table, {"train_val": _read_list(paths["train_val_list.txt"]),
                               "test": _read_list(paths["test_list.txt"])}, "official split")
    train_val = assigned["train_val"]
    rows = table.rows(train_val)
    part = patient_split(table.patient_ids[rows], (0.875, 0.125), seed)
    return {"train": [n for n, p in zip(train_val, part, strict=True) if p == 0],
            "val": [n for n, p in zip(train_val, part, strict=True) if p == 1],
            "test": assigned["test"]}

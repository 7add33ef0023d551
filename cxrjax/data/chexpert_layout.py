"""The CheXpert v1.0 download as users have it: ``train.csv``, ``valid.csv`` and the JPEGs.

``manual_dir`` is the release folder (``CheXpert-v1.0-small/`` or ``CheXpert-v1.0/``) holding
the two CSVs and ``train/patientNNNNN/studyN/viewN_frontal.jpg``. A CSV's ``Path`` starts with
that folder's name, which is dropped to find the file. Label cells are ``1.0`` / ``0.0`` /
``-1.0`` (uncertain) / empty (not mentioned: negative); laterals have an empty ``AP/PA``; sex
may be ``Unknown`` (missing) and age 0 (missing: CheXpert's patients are adults; 90 means
90 or older). Line ends may be CRLF.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

from cxrjax.data import label_space
from cxrjax.data import labels as labels_lib
from cxrjax.data import release_rows as rr
from cxrjax.data.nih_layout import Problem, csv_rows

CSV_NAMES = {"train": "train.csv", "valid": "valid.csv"}
META_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
COLUMNS = (*META_COLUMNS, *label_space.CHEXPERT_COLUMNS)


def view_of(frontal_lateral: str, ap_pa: str) -> str:
    """``LATERAL`` for laterals; a frontal's ``AP/PA`` (``AP``, ``PA``, ...), or "" if empty."""
    if frontal_lateral.strip().lower() == "lateral":
        return "LATERAL"
    return ap_pa.strip().upper()


def read_table(csv_path: str, manual_dir: str, split: str
               ) -> tuple[list[rr.ImageRow], list[Problem]]:
    """Every row of one CheXpert CSV as an ``ImageRow`` (UNCERTAIN kept), and its bad rows."""
    rows, problems = [], []
    source = os.path.basename(csv_path)
    with labels_lib.open_text(csv_path, "CheXpert CSV") as f:
        reader = csv.reader(f)
        col = rr.require_columns(next(reader, []), COLUMNS, source)
        for line_no, fields in csv_rows(reader, csv_path, problems):
            where = f"{source} line {line_no}"
            path = fields[col["Path"]].strip() if len(fields) > col["Path"] else ""
            try:
                relative = path.split("/", 1)[1]  # drop the release folder's name
                parts = relative.split("/")  # train/patientNNNNN/studyN/viewN_frontal.jpg
                age = rr.parse_age(fields[col["Age"]])
                rows.append(rr.ImageRow(
                    image_id=relative, path=os.path.join(manual_dir, relative),
                    patient_id=parts[1], study_id=f"{parts[1]}/{parts[2]}",
                    states=label_space.chexpert_states({c: fields[col[c]] for c in
                                                        label_space.CHEXPERT_COLUMNS}),
                    sex=rr.canonical_sex(fields[col["Sex"]]), age=age if age > 0 else -1,
                    view=view_of(fields[col["Frontal/Lateral"]], fields[col["AP/PA"]]),
                    split=split))
            except IndexError:
                problems.append(Problem(path or "?", f"{where}: too few fields or a Path not "
                                                     "like FOLDER/train/patientN/studyN/x.jpg"))
            except ValueError as e:  # LabelSpaceError included
                problems.append(Problem(path or "?", f"{where}: {e}"))
    return rows, problems


def scan(manual_dir: str, views: Sequence[str] = rr.DEFAULT_VIEWS,
         uncertain: str | None = None, check_files: bool = True) -> rr.Scan:
    """The download read: rows of the selected views, exclusions and problems."""
    if not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"manual_dir not found: {manual_dir}")
    rows, problems = [], []
    for split, name in CSV_NAMES.items():
        try:
            path = rr.find_file(manual_dir, [name], f"CheXpert {name}")
        except FileNotFoundError:
            if split == "valid":
                continue  # a download may hold train.csv alone
            raise
        split_rows, split_problems = read_table(path, manual_dir, split)
        rows += split_rows
        problems += split_problems
    seen: dict[str, int] = {}
    for row in rows:
        seen[row.image_id] = seen.get(row.image_id, 0) + 1
    problems += [Problem(name, f"listed {n} times") for name, n in seen.items() if n > 1]
    rows = [r for r in rows if seen[r.image_id] == 1]
    excluded: list[rr.Exclusion] = []
    rows = rr.select(rows, excluded, views, uncertain)
    if check_files:
        rows = rr.check_files(rows, problems)
    return rr.Scan(rows, excluded, problems)

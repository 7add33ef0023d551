"""The MIMIC-CXR-JPG 2.0.0/2.1.0 download as users have it: label, metadata and split tables,
and ``files/pXX/pSUBJECT/sSTUDY/DICOM.jpg``.

Labels are per *study* (``mimic-cxr-2.0.0-chexpert.csv.gz`` or ``-negbio``: CheXpert's cells);
the metadata table (one row per *image*) joins them to images; the split file gives the
official patient-disjoint ``train`` / ``validate`` / ``test``. Sex and age are not in the
release: if MIMIC-IV's ``patients.csv(.gz)`` is put in ``manual_dir``, sex is its ``gender``
and age ``anchor_age + (study year - anchor_year)`` (MIMIC shifts both dates alike).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from cxrjax.data import label_space
from cxrjax.data import release_rows as rr
from cxrjax.data.nih_layout import Problem

LABELERS = ("chexpert", "negbio")
PREFIX = "mimic-cxr-2.0.0-"
META_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate")
SPLIT_COLUMNS = ("dicom_id", "split")
PATIENT_COLUMNS = ("subject_id", "gender", "anchor_age", "anchor_year")
# MIMIC's names for a lateral; the others (PA, AP, AP AXIAL, ...) are kept as written.
_LATERAL = {"LATERAL", "LL", "RL"}


def read_labels(path: str) -> tuple[dict[str, np.ndarray], list[Problem]]:
    """study_id -> states (UNCERTAIN kept) from one labeler's table, and its bad rows."""
    states, problems = {}, []
    columns = ("subject_id", "study_id", *label_space.CHEXPERT_COLUMNS)
    for line_no, cells in rr.table_cells(path, columns):
        try:
            states[cells["study_id"]] = label_space.chexpert_states(cells)
        except ValueError as e:
            problems.append(Problem(f"s{cells['study_id']}",
                                    f"{os.path.basename(path)} line {line_no}: {e}"))
    return states, problems


def read_patients(manual_dir: str) -> dict[str, tuple[str, int, int]]:
    """subject_id -> (sex, anchor_age, anchor_year) from MIMIC-IV's patients table, if given."""
    try:
        path = rr.find_file(manual_dir, ["patients.csv"], "patients table")
    except FileNotFoundError:
        return {}
    return {c["subject_id"]: (rr.canonical_sex(c["gender"]), int(c["anchor_age"]),
                              int(c["anchor_year"]))
            for _, c in rr.table_cells(path, PATIENT_COLUMNS)}


def image_path(manual_dir: str, subject_id: str, study_id: str, dicom_id: str) -> str:
    """``files/p<first two digits>/p<subject>/s<study>/<dicom>.jpg`` under ``manual_dir``."""
    return os.path.join(manual_dir, "files", f"p{subject_id[:2]}", f"p{subject_id}",
                        f"s{study_id}", f"{dicom_id}.jpg")


def view_of(view_position: str) -> str:
    """``LATERAL`` for MIMIC's laterals (LATERAL, LL, RL); other positions as written."""
    view = view_position.strip().upper()
    return "LATERAL" if view in _LATERAL else view


def scan(manual_dir: str, views: Sequence[str] = rr.DEFAULT_VIEWS, labeler: str = "chexpert",
         uncertain: str | None = None, check_files: bool = True) -> rr.Scan:
    """The download read: rows of the selected views, exclusions and problems."""
    if labeler not in LABELERS:
        raise ValueError(f"unknown MIMIC labeler {labeler!r}; expected one of "
                         f"{', '.join(LABELERS)}")
    if not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"manual_dir not found: {manual_dir}")
    states, problems = read_labels(rr.find_file(manual_dir, [f"{PREFIX}{labeler}.csv"],
                                                f"{labeler} label table"))
    splits = {c["dicom_id"]: c["split"] for _, c in rr.table_cells(
        rr.find_file(manual_dir, [f"{PREFIX}split.csv"], "split table"), SPLIT_COLUMNS)}
    patients = read_patients(manual_dir)
    rows, excluded = [], []
    first_line: dict[str, int] = {}
    meta = rr.find_file(manual_dir, [f"{PREFIX}metadata.csv"], "metadata table")
    for line_no, c in rr.table_cells(meta, META_COLUMNS):
        dicom, subject, study = c["dicom_id"], c["subject_id"], c["study_id"]
        if dicom in first_line:
            problems.append(Problem(dicom, f"{os.path.basename(meta)} line {line_no}: "
                                           f"duplicate of line {first_line[dicom]}"))
            continue
        first_line[dicom] = line_no
        if study not in states:
            excluded.append(rr.Exclusion(dicom, rr.MISSING_LABEL,
                                         f"study s{study} has no row in the {labeler} table"))
            continue
        if dicom not in splits:
            problems.append(Problem(dicom, f"{os.path.basename(meta)} line {line_no}: not in "
                                           "the split table"))
            continue
        sex, age = "", -1
        if subject in patients and c["StudyDate"][:4].isdigit():
            sex, anchor_age, anchor_year = patients[subject]
            age = anchor_age + int(c["StudyDate"][:4]) - anchor_year
        rows.append(rr.ImageRow(
            image_id=dicom, path=image_path(manual_dir, subject, study, dicom),
            patient_id=subject, study_id=study, states=states[study], sex=sex, age=age,
            view=view_of(c["ViewPosition"]), split=splits[dicom]))
    rows = rr.select(rows, excluded, views, uncertain)
    if check_files:
        rows = rr.check_files(rows, problems)
    return rr.Scan(rows, excluded, problems)

"""Synthetic sets in the CheXpert, MIMIC-CXR-JPG and PadChest on-disk layouts.

The chests are ``synthetic``'s (real NIH patients' labels, procedural images); only the files
differ: each release's CSV columns and terms, folder tree and image format (CheXpert and MIMIC
8-bit JPEG, PadChest 16-bit PNG holding 12-bit data). NIH findings are written in each
release's words where it has them (Effusion -> "Pleural Effusion" / "pleural effusion"; Mass and
Nodule -> CheXpert's "Lung Lesion"; Infiltration -> "Lung Opacity"); a seeded tenth of the
CheXpert/MIMIC positives are written uncertain (``-1.0``), as their labelers do. A ``Site``
changes how the chests are acquired (exposure curve, noise, a burned-in marker) and who they are
(the share of "No Finding"); the default site changes nothing.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import os

import numpy as np
from PIL import Image

from cxrjax.data import label_space
from cxrjax.data import labels as labels_lib
from cxrjax.data import splits as splits_lib

FORMATS = ("chexpert", "mimic_cxr", "padchest")


@dataclasses.dataclass(frozen=True)
class Site:
    """How another hospital's images and patients differ: ``gamma`` (exposure curve),
    ``noise`` (gray levels of Gaussian noise), a burned-in corner ``marker``, and the share of
    "No Finding" patients (None: as drawn from NIH)."""

    gamma: float = 1.0
    noise: float = 0.0
    marker: bool = False
    no_finding_share: float | None = None


SITES = {"same": Site(), "other": Site(gamma=0.6, noise=12.0, marker=True,
                                       no_finding_share=0.25)}


def pick_rows(table, pool: list[int], n: int, site: Site) -> list[int]:
    """``n`` rows of ``pool`` (seeded order kept) with the site's share of "No Finding"."""
    if site.no_finding_share is None:
        return sorted(pool[:n])
    normal = [i for i in pool if not table.labels[i].any()]
    sick = [i for i in pool if table.labels[i].any()]
    k = min(round(site.no_finding_share * n), len(normal))
    if n - k > len(sick):
        raise ValueError(f"cannot draw {n} images at this site's prevalence; use a smaller n")
    return sorted(normal[:k] + sick[:n - k])


def apply_site(image: np.ndarray, site: Site, seed: int) -> np.ndarray:
    """One rendered uint8 chest as the site acquires it; ``Site()`` returns it unchanged."""
    if site == Site():
        return image
    x = 255.0 * (image / 255.0) ** site.gamma
    if site.noise:
        x = x + np.random.default_rng(seed).normal(0, site.noise, x.shape)
    if site.marker:
        side = max(2, image.shape[0] // 12)
        x[side:2 * side, side:2 * side] = 255.0
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)
UNCERTAIN_SHARE = 0.1
# NIH class -> CheXpert/MIMIC column; NIH classes absent here are not written.
_CHEXPERT_COLUMN = {"Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly",
                    "Effusion": "Pleural Effusion", "Infiltration": "Lung Opacity",
                    "Mass": "Lung Lesion", "Nodule": "Lung Lesion", "Pneumonia": "Pneumonia",
                    "Pneumothorax": "Pneumothorax", "Consolidation": "Consolidation",
                    "Edema": "Edema"}
_SEX = {"M": "Male", "F": "Female"}


def _write_csv(path: str, header: list[str], rows: list[list], crlf: bool = True) -> None:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n" if crlf else "\n").writerows([header, *rows])
    data = buf.getvalue().encode()
    with (gzip.open(path, "wb") if path.endswith(".gz") else open(path, "wb")) as f:
        f.write(data)


def _chexpert_cells(multi_hot: np.ndarray, rng: np.random.Generator) -> dict[str, str]:
    """CheXpert-style cells for one NIH multi-hot; a tenth of the positives uncertain."""
    cells = {}
    for name, value in zip(labels_lib.CLASSES, multi_hot, strict=True):
        column = _CHEXPERT_COLUMN.get(name)
        if column and value:
            cells[column] = "-1.0" if rng.random() < UNCERTAIN_SHARE else "1.0"
    if not multi_hot.any():
        cells["No Finding"] = "1.0"
    return cells


def _save(image: np.ndarray, path: str, sixteen_bit: bool) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if sixteen_bit:  # 12-bit data in a 16-bit PNG, as PadChest's are
        Image.fromarray(image.astype(np.uint16) * 16).save(path)
    else:
        Image.fromarray(image).save(path, quality=95)


VALID_SHARE = 0.2  # of the synthetic CheXpert patients, written to valid.csv (the test set)


def write_chexpert(out_dir: str, table, rows, images, rng) -> None:
    """``train.csv`` and ``valid.csv`` (CRLF; a seeded fifth of the patients in valid, which
    the release's splits make the test set) and ``{train,valid}/patientN/studyN/*.jpg``."""
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA",
              *label_space.CHEXPERT_COLUMNS]
    valid = splits_lib.patient_split(table.patient_ids[rows], (1 - VALID_SHARE, VALID_SHARE), 0)
    out: dict[str, list] = {"train": [], "valid": []}
    for k, (i, image) in enumerate(zip(rows, images, strict=True)):
        split = "valid" if valid[k] else "train"
        rel = (f"{split}/patient{table.patient_ids[i]:05d}/study{table.follow_up[i] + 1}/"
               "view1_frontal.jpg")
        _save(image, os.path.join(out_dir, rel), sixteen_bit=False)
        cells = _chexpert_cells(table.labels[i], rng)
        out[split].append([f"CheXpert-v1.0-small/{rel}", _SEX.get(table.sex[i], "Unknown"),
                           table.age[i], "Frontal", table.view[i],
                           *[cells.get(c, "") for c in label_space.CHEXPERT_COLUMNS]])
    for split, lines in out.items():
        _write_csv(os.path.join(out_dir, f"{split}.csv"), header, lines)


def write_mimic(out_dir: str, table, rows, images, rng, seed: int) -> None:
    """The four MIMIC-CXR-JPG tables (.csv.gz), MIMIC-IV's patients.csv.gz, and the JPEGs."""
    subject = {i: str(10_000_000 + int(table.patient_ids[i])) for i in rows}
    study = {i: str(50_000_000 + int(table.patient_ids[i]) * 100 + int(table.follow_up[i]))
             for i in rows}
    part = splits_lib.patient_split(table.patient_ids[rows], (0.8, 0.1, 0.1), seed + 2)
    meta, labels, split, patients = [], {}, [], {}
    for k, (i, image) in enumerate(zip(rows, images, strict=True)):
        dicom = f"{seed:08x}-{i:08x}"
        s, st = subject[i], study[i]
        _save(image, os.path.join(out_dir, "files", f"p{s[:2]}", f"p{s}", f"s{st}",
                                  f"{dicom}.jpg"), sixteen_bit=False)
        meta.append([dicom, s, st, "CHEST (PA AND LAT)", table.view[i], 256, 256,
                     f"2180{1 + table.follow_up[i] % 12:02d}01", "120000", "", "", ""])
        labels[st] = [s, st, _chexpert_cells(table.labels[i], rng)]
        split.append([dicom, st, s, ("train", "validate", "test")[part[k]]])
        patients[s] = [s, table.sex[i], int(table.age[i]), 2180, "2017 - 2019", ""]
    _write_csv(os.path.join(out_dir, "mimic-cxr-2.0.0-metadata.csv.gz"),
               ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription",
                "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime",
                "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
                "PatientOrientationCodeSequence_CodeMeaning"], meta, crlf=False)
    columns = sorted(label_space.CHEXPERT_COLUMNS)
    for labeler in ("chexpert", "negbio"):
        _write_csv(os.path.join(out_dir, f"mimic-cxr-2.0.0-{labeler}.csv.gz"),
                   ["subject_id", "study_id", *columns],
                   [[s, st, *[c.get(col, "") for col in columns]]
                    for s, st, c in labels.values()], crlf=False)
    _write_csv(os.path.join(out_dir, "mimic-cxr-2.0.0-split.csv.gz"),
               ["dicom_id", "study_id", "subject_id", "split"], split, crlf=False)
    _write_csv(os.path.join(out_dir, "patients.csv.gz"),
               ["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"],
               list(patients.values()), crlf=False)


def write_padchest(out_dir: str, table, rows, images) -> None:
    """PadChest's label CSV (Python-style lists) and 16-bit PNGs in folders 0, 1, ..."""
    first_term = {cls: terms[0] for cls, terms in label_space.PADCHEST_TERMS.items()}
    out = []
    for k, (i, image) in enumerate(zip(rows, images, strict=True)):
        name = f"{seed_free_id(i)}.png"
        folder = str(k // 50)
        _save(image, os.path.join(out_dir, folder, name), sixteen_bit=True)
        terms = [first_term[c] for c, v in zip(labels_lib.CLASSES, table.labels[i], strict=True)
                 if v] or ["normal"]
        year = 2015 + int(table.follow_up[i]) % 3
        out.append([name, folder, f"{year}0101", f"st{i}", f"pc{table.patient_ids[i]}",
                    year - int(table.age[i]), table.sex[i], table.view[i], table.view[i],
                    "Supine", repr(terms), "[]"])
    _write_csv(os.path.join(out_dir, "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"),
               ["ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth",
                "PatientSex_DICOM", "ViewPosition_DICOM", "Projection", "MethodProjection",
                "Labels", "Localizations"], out)


def seed_free_id(row: int) -> str:
    """A PadChest-like image id for a row of the NIH table."""
    return f"2168401113669640{row:08d}_00-000-000"


def write(out_dir: str, fmt: str, table, rows: list[int], images: list[np.ndarray],
          seed: int) -> None:
    """Writes rendered ``images`` (of NIH table ``rows``) in the layout of release ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected nih or one of {', '.join(FORMATS)}")
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed + 7)
    if fmt == "chexpert":
        write_chexpert(out_dir, table, rows, images, rng)
    elif fmt == "mimic_cxr":
        write_mimic(out_dir, table, rows, images, rng, seed)
    else:
        write_padchest(out_dir, table, rows, images)

"""Tiny downloads in each release's on-disk layout, written by tests (CSV columns, folder tree,
JPEG or 16-bit PNG), for the readers and the builders."""

import csv
import gzip
import io
import os

import numpy as np
from PIL import Image

CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding",
                   "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                   "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
                   "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]
MIMIC_LABEL_COLUMNS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                       "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity",
                       "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
                       "Pneumothorax", "Support Devices"]
PADCHEST_HEADER = ["ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID",
                   "PatientBirth", "PatientSex_DICOM", "ViewPosition_DICOM", "Projection",
                   "MethodProjection", "Labels", "Localizations"]


def write_csv(path, header, rows, crlf=True):
    """A CSV as the releases write them (CRLF line ends by default), gzipped if .gz."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n" if crlf else "\n").writerows([header, *rows])
    data = buf.getvalue().encode()
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)


def gray(value, size=24):
    return np.full((size, size), value, np.uint8)


def write_jpeg(path, value, size=24):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    Image.fromarray(gray(value, size)).save(path, quality=100)


def write_png16(path, value16, size=24, truncate=False):
    """A 16-bit grayscale PNG filled with ``value16``; ``truncate`` cuts the file in half."""
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    arr = np.full((size, size), value16, np.uint16)
    Image.fromarray(arr).save(path)
    if truncate:
        data = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(data[:len(data) // 2])


def chexpert_folder(root, rows, images=True):
    """``root``/train.csv (CheXpert's columns) and a JPEG per row, gray = 10 * row number.

    ``rows``: (patient, study, view_name, sex, age, frontal_lateral, ap_pa, {column: cell}).
    """
    out = []
    for i, (patient, study, view, sex, age, fl, appa, cells) in enumerate(rows):
        rel = f"train/patient{patient:05d}/study{study}/{view}.jpg"
        out.append([f"CheXpert-v1.0-small/{rel}", sex, str(age), fl, appa,
                    *[cells.get(c, "") for c in CHEXPERT_HEADER[5:]]])
        if images:
            write_jpeg(os.path.join(root, rel), 10 * (i + 1))
    write_csv(os.path.join(root, "train.csv"), CHEXPERT_HEADER, out)
    return root


def mimic_folder(root, images, study_labels, negbio=None, splits=None, patients=None):
    """MIMIC-CXR-JPG's tables (.csv.gz) and JPEGs, gray = 10 * image number.

    ``images``: (dicom_id, subject_id, study_id, ViewPosition, StudyDate);
    ``study_labels``: {study_id: (subject_id, {column: cell})}.
    """
    meta = [[d, s, st, "", v, "3056", "2544", date, "120000", "", "", ""]
            for d, s, st, v, date in images]
    write_csv(os.path.join(root, "mimic-cxr-2.0.0-metadata.csv.gz"),
              ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription",
               "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime",
               "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
               "PatientOrientationCodeSequence_CodeMeaning"], meta, crlf=False)
    for name, table in (("chexpert", study_labels), ("negbio", negbio or study_labels)):
        write_csv(os.path.join(root, f"mimic-cxr-2.0.0-{name}.csv.gz"),
                  ["subject_id", "study_id", *MIMIC_LABEL_COLUMNS],
                  [[subj, st, *[cells.get(c, "") for c in MIMIC_LABEL_COLUMNS]]
                   for st, (subj, cells) in table.items()], crlf=False)
    splits = splits or {d: "train" for d, *_ in images}
    write_csv(os.path.join(root, "mimic-cxr-2.0.0-split.csv.gz"),
              ["dicom_id", "study_id", "subject_id", "split"],
              [[d, st, s, splits[d]] for d, s, st, *_ in images if d in splits], crlf=False)
    if patients:
        write_csv(os.path.join(root, "patients.csv.gz"),
                  ["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group",
                   "dod"], [[s, g, a, y, "", ""] for s, (g, a, y) in patients.items()])
    for i, (d, s, st, *_) in enumerate(images):
        write_jpeg(os.path.join(root, "files", f"p{s[:2]}", f"p{s}", f"s{st}", f"{d}.jpg"),
                   10 * (i + 1))
    return root


def padchest_folder(root, rows, truncated=()):
    """PadChest's CSV and 16-bit PNGs in folder ``ImageDir``, value = 1000 * row number.

    ``rows``: (ImageID, ImageDir, StudyDate, PatientID, birth, sex, Projection, Labels text).
    """
    out = []
    for i, (image, folder, date, patient, birth, sex, projection, labels) in enumerate(rows):
        out.append([image, folder, date, f"st{patient}", patient, birth, sex, projection,
                    projection, "Supine", labels, "[]"])
        write_png16(os.path.join(root, folder, image), 1000 * (i + 1),
                    truncate=image in truncated)
    write_csv(os.path.join(root, "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"),
              PADCHEST_HEADER, out)
    return root

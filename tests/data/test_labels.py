"""Tests of the shipped NIH label table and the label parser."""

import io

import numpy as np
import pytest

from cxrjax.data import labels


def test_shipped_table_has_every_release_image_and_patient():
    table = labels.load_label_table()
    assert len(table) == 112_120
    assert len(np.unique(table.patient_ids)) == 30_805
    assert table.labels.shape == (112_120, 14)
    # About 54% of ChestX-ray14 is "No Finding"; Hernia is the rarest class (~0.2%).
    assert 0.53 < (table.labels.sum(1) == 0).mean() < 0.55
    assert table.labels.mean(0).argmin() == labels.CLASSES.index("Hernia")


def test_prevalence_weights_sum_to_the_papers_0_724():
    weights = labels.load_label_table().prevalence()
    assert weights.sum() == pytest.approx(0.724, abs=1e-3)


def test_parse_finding_labels_multi_hot_in_nih_order():
    y = labels.parse_finding_labels("Effusion|Mass")
    assert y.tolist() == [0, 0, 1, 0, 1] + [0] * 9
    assert labels.parse_finding_labels("No Finding").sum() == 0
    assert labels.format_finding_labels(y) == "Effusion|Mass"


def test_unknown_label_names_label_and_row():
    with pytest.raises(labels.LabelError, match=r"unknown label 'Pneumonitis'.*row 7"):
        labels.parse_finding_labels("Effusion|Pneumonitis", row=7)


def _csv(*rows: str) -> io.StringIO:
    header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
              "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
    return io.StringIO("\n".join([header, *rows]) + "\n")


def test_data_entry_rejects_duplicate_rows_and_unknown_labels_with_line_numbers():
    good = "a.png,Mass,0,1,50,M,PA,1,1,0.1,0.1"
    with pytest.raises(labels.LabelError, match=r"line 3: duplicate image 'a.png'"):
        labels.parse_data_entry(_csv(good, good))
    with pytest.raises(labels.LabelError,
                       match=r"unknown label 'Tumour' \(row Data_Entry line 2\)"):
        labels.parse_data_entry(_csv("b.png,Tumour,0,1,50,M,PA,1,1,0.1,0.1"))


def test_rows_lookup_names_missing_images():
    table = labels.load_label_table()
    assert table.rows(["00000001_000.png"]).tolist() == [0]
    with pytest.raises(labels.LabelError, match="not_there.png"):
        table.rows(["00000001_000.png", "not_there.png"])


def test_bboxes_map_infiltrate_spelling():
    boxes = labels.load_bboxes()
    assert len(boxes) == 984
    assert {b.label for b in boxes} <= set(labels.CLASSES)
    assert any(b.label == "Infiltration" for b in boxes)

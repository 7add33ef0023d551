"""Tests of the shipped NIH label table and the label parser."""

import csv
import gzip
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


def test_shipped_table_is_shared_and_no_caller_can_change_it():
    table = labels.load_label_table()
    assert labels.load_label_table() is table  # cached: every W-AUC reads its class shares
    with pytest.raises(ValueError, match="read-only"):
        table.labels[0, 0] = 1


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


def test_shipped_boxes_are_the_8_box_classes_with_infiltrate_read_as_infiltration():
    boxes = labels.load_bboxes()
    assert len(boxes) == 984
    names = {labels.CLASSES[c] for c in boxes.labels}
    assert names == set(labels.BOX_CLASSES)  # "Infiltrate" in the file, Infiltration here
    assert (boxes.xywh[:, :2] + boxes.xywh[:, 2:] <= 1024).all()


def test_written_boxes_have_nih_header_and_spelling_and_read_back(tmp_path):
    path = tmp_path / labels.BBOX_LIST_NAME
    boxes = labels.Boxes.create(["a.png", "a.png", "b.png"], ["Infiltration", "Mass", 1],
                                [[0.5, 2, 10, 20], [100, 200, 30.25, 40], [0, 0, 1024, 1024]])
    labels.write_boxes(path, boxes)
    text = path.read_text()
    assert text.splitlines()[:2] == ["Image Index,Finding Label,Bbox [x,y,w,h],,,",
                                     "a.png,Infiltrate,0.5,2.0,10.0,20.0"]
    again = labels.read_boxes(path)
    np.testing.assert_array_equal(again.xywh, boxes.xywh)
    np.testing.assert_array_equal(again.labels, boxes.labels)
    assert list(again.image_ids) == ["a.png", "a.png", "b.png"]


def test_a_bad_box_is_a_one_line_label_error(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Mass,1000,10,30,30\n")
    with pytest.raises(labels.LabelError, match="outside the 1024x1024 image") as e:
        labels.read_boxes(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("encode", [
    lambda t: ("\ufeff" + t).encode(),  # Excel's "CSV UTF-8"
    lambda t: t.encode("utf-16"),  # "Unicode text": UTF-16 with its byte-order mark
    lambda t: b"\xfe\xff" + t.encode("utf-16-be"),
])
def test_a_table_with_a_byte_order_mark_reads_as_its_text(tmp_path, encode):
    text = "Image Index,Note\r\na.png,café\r\n"
    (tmp_path / "t.csv").write_bytes(encode(text))
    with labels.open_text(tmp_path / "t.csv") as f:
        assert list(csv.reader(f)) == [["Image Index", "Note"], ["a.png", "café"]]


@pytest.mark.parametrize("name, data, message", [
    ("latin1.csv", "Image Index\na.png,café\n".encode("latin-1"), "not UTF-8 text .*0xe9"),
    ("cut.csv.gz", gzip.compress(b"Image Index\n" * 50, mtime=0)[:-9], "truncated or corrupt file"),
    ("flipped.csv.gz", gzip.compress(b"Image Index\n", mtime=0)[:-8] + b"\0" * 8, "corrupt file"),
    ("text.csv.gz", b"Image Index\n", "truncated or corrupt file .*BadGzipFile"),
])
def test_undecodable_or_broken_gzip_table_is_a_one_line_error_naming_it(tmp_path, name, data,
                                                                         message):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(labels.LabelError, match=message) as e:
        with labels.open_text(path) as f:
            list(csv.reader(f))
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)

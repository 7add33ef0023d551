"""The TFDS builder ``chest_xray14`` on the real NIH sample, and every kind of bad input."""

import os

import numpy as np
import pytest

from cxrjax.data import builder, labels, nih_layout, prepare


def _rows(n, label="No Finding"):
    return [(f"{i:08d}_000.png", label, i) for i in range(1, n + 1)]


def test_sample_dataset_has_every_image_with_its_labels(prepared_sample, nih_sample_dir):
    b = builder.load(str(prepared_sample), 256)
    src = b.as_data_source(split=builder.SPLIT)
    assert len(src) == 207
    ids = b.info.metadata["image_ids"]
    assert ids == sorted(ids) and len(ids) == 207
    table = labels.load_label_table()
    for i in (0, 100, 206):
        rec = src[i]
        assert rec["image"].shape == (256, 256) and rec["image"].dtype == np.uint8
        name = rec["image_id"].decode()
        assert name == ids[i]
        np.testing.assert_array_equal(rec["labels"], table.labels[table.index[name]])
        assert rec["patient_id"] == table.patient_ids[table.index[name]]
    expected, _ = nih_layout.decode_image(str(nih_sample_dir / "images" / ids[5]), 256)
    np.testing.assert_array_equal(src[5]["image"], expected)
    assert b.info.metadata["converted"] == {"RGBA": 2}
    assert b.info.metadata["skipped"] == []


def test_rgba_16bit_and_palette_images_are_converted_and_counted(tmp_path, nih_folder):
    rows = _rows(4)
    modes = ["L", "RGBA", "I;16", "P"]
    files = {r[0]: (200, m) for r, m in zip(rows, modes, strict=True)}
    manual = nih_folder.make_nih_dir(tmp_path / "nih", rows, files)
    b = builder.build(str(manual), str(tmp_path / "out"), resolution=16, workers=0)
    src = b.as_data_source(split=builder.SPLIT)
    for i in range(4):
        assert np.all(src[i]["image"] == 200), modes[i]
    assert b.info.metadata["converted"] == {"I;16": 1, "P": 1, "RGBA": 1}


def test_nested_archive_layout_is_found(tmp_path, nih_folder):
    rows = _rows(3)
    manual = nih_folder.make_nih_dir(tmp_path / "nih", rows, subdir="images_001/images")
    b = builder.build(str(manual), str(tmp_path / "out"), resolution=16, workers=0)
    assert b.info.metadata["num_images"] == 3


@pytest.mark.parametrize("case, message", [
    ("missing_file", "00000002_000.png: .*image file not found"),
    ("extra_file", "00000099_000.png: image file has no row in the label table"),
    ("unknown_label", "unknown label 'Pneumonitis'"),
    ("duplicate_row", "00000002_000.png: duplicate row: .* line 4 repeats line 3"),
])
def test_bad_table_or_files_fail_before_writing_any_dataset(tmp_path, case, message, nih_folder):
    rows, files = _rows(3), None
    if case == "missing_file":
        files = {rows[0][0]: (1, "L"), rows[2][0]: (1, "L")}
    elif case == "extra_file":
        files = {**{r[0]: (1, "L") for r in rows}, "00000099_000.png": (1, "L")}
    elif case == "unknown_label":
        rows[1] = (rows[1][0], "Mass|Pneumonitis", 2)
    elif case == "duplicate_row":
        rows.insert(2, rows[1])
        files = {r[0]: (1, "L") for r in rows}
    manual = nih_folder.make_nih_dir(tmp_path / "nih", rows, files)
    out = tmp_path / "out"
    with pytest.raises(nih_layout.PrepareError, match=message):
        builder.build(str(manual), str(out), resolution=16, workers=0)
    assert os.listdir(out) == [builder.PROBLEMS_NAME]  # the list of problems, no dataset


def test_building_through_tfds_alone_refuses_a_download_with_problems(tmp_path, nih_folder):
    import tensorflow_datasets as tfds

    rows = _rows(3)
    rows[1] = (rows[1][0], "Flu", 2)
    manual = nih_folder.make_nih_dir(tmp_path / "nih", rows)
    b = builder.ChestXray14(data_dir=str(tmp_path / "out"), config=builder.config_for(16),
                            workers=0)
    with pytest.raises(nih_layout.PrepareError, match="1 problem\\(s\\) .*nothing was written"):
        b.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=str(manual)))
    assert not b.is_prepared()


def test_every_problem_is_listed_and_cli_exits_nonzero(tmp_path, capsys, nih_folder):
    rows = _rows(4)
    rows[0] = (rows[0][0], "Flu", 1)
    files = {r[0]: (1, "L") for r in rows[:3]}
    manual = nih_folder.make_nih_dir(tmp_path / "nih", rows, files)
    rc = prepare.main(["--manual_dir", str(manual), "--data_dir", str(tmp_path / "o"),
                       "--resolution", "16", "--workers", "0"])
    err = capsys.readouterr().err
    assert rc == 1 and "2 problem(s)" in err
    assert "unknown label 'Flu'" in err and "00000004_000.png" in err
    assert f"every problem is listed in {tmp_path / 'o' / builder.PROBLEMS_NAME}" in err


def test_missing_images_print_the_count_the_first_twenty_and_a_file_listing_all(
        tmp_path, capsys, nih_folder):
    rows = _rows(60)
    manual = nih_folder.make_nih_dir(tmp_path / "nih", rows, {rows[0][0]: (1, "L")})
    out = tmp_path / "o"
    rc = prepare.main(["--manual_dir", str(manual), "--data_dir", str(out),
                       "--resolution", "16", "--workers", "0"])
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert rc == 1 and captured.out == ""
    assert err[0].startswith(f"error: 59 problem(s) in {manual} (59 of them images not found: "
                             "are all the archives unpacked into images/")
    listed = [line for line in err if "image file not found" in line]
    assert [line.split(":")[0].strip() for line in listed] == [r[0] for r in rows[1:21]]
    assert "  ... and 39 more" in err
    table = (out / builder.PROBLEMS_NAME).read_text().splitlines()
    assert table[0] == "image\treason" and len(table) == 60
    assert {line.split("\t")[0] for line in table[1:]} == {r[0] for r in rows[1:]}
    assert err[-1] == f"every problem is listed in {out / builder.PROBLEMS_NAME}"
    assert len(err) == 23
    assert not builder.ChestXray14(data_dir=str(out), config=builder.config_for(16)).is_prepared()


def test_a_successful_prepare_leaves_only_the_dataset_not_an_old_list_or_downloads(
        tmp_path, nih_folder):
    rows = _rows(3)
    manual = nih_folder.make_nih_dir(tmp_path / "nih", rows, {rows[0][0]: (1, "L")})
    out = tmp_path / "o"
    with pytest.raises(nih_layout.PrepareError):
        builder.build(str(manual), str(out), resolution=16, workers=0)
    assert (out / builder.PROBLEMS_NAME).exists()
    for name, _, _ in rows[1:]:
        nih_folder.write_png(manual / "images" / name, 9)
    builder.build(str(manual), str(out), resolution=16, workers=0)
    assert os.listdir(out) == ["chest_xray14"]  # no stale problem list, no empty downloads/


def test_cli_help_names_the_program_and_the_resolution_default():
    text = prepare.build_parser().format_help()
    assert text.startswith("usage: python -m cxrjax.data.prepare ")
    assert f"(default: {builder.DEFAULT_RESOLUTION})" in " ".join(text.split())


def test_resolution_outside_the_stored_range_is_a_one_line_error(tmp_path, capsys):
    rc = prepare.main(["--manual_dir", str(tmp_path), "--data_dir", str(tmp_path / "o"),
                       "--resolution", "4"])
    assert rc == 1
    assert capsys.readouterr().err == "error: resolution must be in [8, 1024], got 4\n"


def test_truncated_png_fails_and_leaves_no_dataset(tmp_path, nih_folder):
    rows = _rows(3)
    manual = nih_folder.make_nih_dir(tmp_path / "nih", rows)
    png = manual / "images" / rows[1][0]
    nih_folder.write_png(png, 7, size=300)
    data = png.read_bytes()
    png.write_bytes(data[: len(data) // 2])
    (manual / "images" / rows[2][0]).write_bytes(b"not a png at all")
    with pytest.raises(nih_layout.PrepareError, match="2 image\\(s\\) could not be decoded"):
        builder.build(str(manual), str(tmp_path / "out"), resolution=16, workers=0)
    listed = (tmp_path / "out" / builder.PROBLEMS_NAME).read_text()
    assert rows[1][0] in listed and rows[2][0] in listed and "cannot decode" in listed
    with pytest.raises(FileNotFoundError, match="no complete chest_xray14 dataset"):
        builder.load(str(tmp_path / "out"), 16)


def test_skip_bad_writes_the_rest_and_a_manifest(tmp_path, nih_folder):
    rows = _rows(5)
    rows[0] = (rows[0][0], "Flu", 1)
    files = {r[0]: (50, "L") for r in rows if r[2] != 2}
    files["00000077_000.png"] = (1, "L")
    manual = nih_folder.make_nih_dir(tmp_path / "nih", rows, files)
    (manual / "images" / rows[3][0]).write_bytes(b"\x89PNG broken")
    rc = prepare.main(["--manual_dir", str(manual), "--data_dir", str(tmp_path / "o"),
                       "--resolution", "16", "--workers", "0", "--skip_bad"])
    assert rc == 0
    b = builder.load(str(tmp_path / "o"), 16)
    assert b.info.metadata["image_ids"] == [rows[2][0], rows[4][0]]
    manifest = os.path.join(str(b.data_dir), builder.MANIFEST_NAME)
    assert "16px" in manifest
    lines = open(manifest).read().splitlines()[1:]
    skipped = {line.split("\t")[0]: line.split("\t")[1] for line in lines}
    assert set(skipped) == {rows[0][0], rows[1][0], rows[3][0], "00000077_000.png"}
    assert "unknown label" in skipped[rows[0][0]]
    assert "not found" in skipped[rows[1][0]]
    assert "cannot decode" in skipped[rows[3][0]]
    assert "no row" in skipped["00000077_000.png"]


def test_interrupted_build_does_not_look_complete(tmp_path, monkeypatch, nih_folder):
    manual = nih_folder.make_nih_dir(tmp_path / "nih", _rows(6))
    real = nih_layout.decode_task
    calls = []

    def dying(task):
        calls.append(task)
        if len(calls) == 4:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-build
        return real(task)

    monkeypatch.setattr(nih_layout, "decode_task", dying)
    with pytest.raises(KeyboardInterrupt):
        builder.build(str(manual), str(tmp_path / "out"), resolution=16, workers=0)
    with pytest.raises(FileNotFoundError, match="prepare it with"):
        builder.load(str(tmp_path / "out"), 16)
    monkeypatch.setattr(nih_layout, "decode_task", real)
    b = builder.build(str(manual), str(tmp_path / "out"), resolution=16, workers=0)
    assert len(b.as_data_source(split=builder.SPLIT)) == 6


def test_missing_manual_dir_and_table_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="manual_dir not found"):
        builder.build(str(tmp_path / "nope"), str(tmp_path / "out"), resolution=16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no Data_Entry_2017"):
        builder.build(str(tmp_path / "empty"), str(tmp_path / "out"), resolution=16)


def test_builder_is_registered_with_tfds_by_name(prepared_sample):
    import tensorflow_datasets as tfds

    b = tfds.builder("chest_xray14", data_dir=str(prepared_sample), config="256px")
    assert isinstance(b, builder.ChestXray14) and b.is_prepared()
    assert b.info.features["image"].shape == (256, 256)


def test_every_resolution_is_a_known_config_not_a_custom_one(tmp_path):
    import tensorflow_datasets as tfds

    b = tfds.builder("chest_xray14", data_dir=str(tmp_path), config="48px")
    assert b.builder_config is builder.config_for(48)
    assert builder.ChestXray14.get_builder_config("4px") is None
    assert not b.is_prepared() and not tmp_path.joinpath("chest_xray14").exists()


def test_prepare_into_a_bucket_builds_locally_and_copies_up_verified(
        tmp_path, capsys, monkeypatch, nih_folder, gcs_bucket):
    monkeypatch.setenv("CXRJAX_CACHE_DIR", str(tmp_path / "cache"))
    manual = nih_folder.make_nih_dir(tmp_path / "nih", _rows(3))
    out = f"{gcs_bucket}/tfds"
    argv = ["--manual_dir", str(manual), "--data_dir", out, "--resolution", "16", "--workers", "0"]
    assert prepare.main(argv) == 0, capsys.readouterr().err
    assert "to " + out + ", verified" in capsys.readouterr().out
    b = builder.load(out, 16)  # read straight from the bucket
    assert b.info.metadata["num_images"] == 3 and len(b.as_data_source(split=builder.SPLIT)) == 3
    assert prepare.main(argv) == 0
    assert "copied 0 new file(s)" in capsys.readouterr().out  # a rerun copies nothing again


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_a_table_saved_with_a_bom_or_as_utf16_prepares_every_row(tmp_path, nih_folder,
                                                                   encoding):
    rows = _rows(3)
    manual = nih_folder.make_nih_dir(tmp_path / "nih", rows)
    table = manual / "Data_Entry_2017_v2020.csv"
    table.write_bytes(table.read_text().encode(encoding))
    b = builder.build(str(manual), str(tmp_path / "out"), resolution=16, workers=0)
    assert b.info.metadata["image_ids"] == [r[0] for r in rows]


@pytest.mark.parametrize("name, mangle", [
    ("Data_Entry_2017_v2020.csv", lambda d: d.replace(b",M,", b",\xc9,", 1)),  # Latin-1 'É'
    ("Data_Entry_2017_v2020.csv.gz", lambda d: __import__("gzip").compress(d)[:-20]),
])
def test_an_undecodable_table_is_one_line_naming_it_not_a_traceback(tmp_path, capsys,
                                                                    nih_folder, name, mangle):
    manual = nih_folder.make_nih_dir(tmp_path / "nih", _rows(3))
    plain = manual / "Data_Entry_2017_v2020.csv"
    data = mangle(plain.read_bytes())
    plain.unlink()
    (manual / name).write_bytes(data)
    rc = prepare.main(["--manual_dir", str(manual), "--data_dir", str(tmp_path / "o"),
                       "--resolution", "16", "--workers", "0", "--skip_bad"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith(f"error: {manual / name}: ") and err.count("\n") == 1, err


def test_a_png_claiming_a_huge_size_is_a_listed_problem_not_a_crash(tmp_path, nih_folder):
    import struct
    import zlib

    rows = _rows(3)
    manual = nih_folder.make_nih_dir(tmp_path / "nih", rows)
    png = manual / "images" / rows[1][0]
    data = png.read_bytes()
    body = b"IHDR" + struct.pack(">II", 900_000, 900_000) + data[24:29]
    png.write_bytes(data[:12] + body + struct.pack(">I", zlib.crc32(body)) + data[33:])
    rc = prepare.main(["--manual_dir", str(manual), "--data_dir", str(tmp_path / "o"),
                       "--resolution", "16", "--workers", "0", "--skip_bad"])
    assert rc == 0
    b = builder.load(str(tmp_path / "o"), 16)
    assert b.info.metadata["image_ids"] == [rows[0][0], rows[2][0]]
    (skipped,) = b.info.metadata["skipped"]
    assert skipped["image"] == rows[1][0] and "DecompressionBombError" in skipped["reason"]


def test_an_unclosed_quote_names_the_lines_it_swallows_or_the_table_when_it_never_ends(
        tmp_path, capsys, nih_folder):
    rows = _rows(4)
    manual = nih_folder.make_nih_dir(tmp_path / "nih", rows)
    table = manual / "Data_Entry_2017_v2020.csv"
    lines = table.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace(",", ',"', 1)  # row 2 (line 3) opens a quote it never closes
    table.write_text("".join(lines))
    argv = ["--manual_dir", str(manual), "--data_dir", str(tmp_path / "o"), "--resolution",
            "16", "--workers", "0", "--skip_bad"]
    assert prepare.main(argv) == 0
    b = builder.load(str(tmp_path / "o"), 16)
    assert b.info.metadata["image_ids"] == [rows[0][0]]
    reasons = {p["image"]: p["reason"] for p in b.info.metadata["skipped"]}
    assert len(reasons) == len(b.info.metadata["skipped"]) == 3  # each image once
    assert "lines 3-5: one row over 3 lines (an unclosed quote?)" in reasons[rows[1][0]]
    assert "no row" in reasons[rows[2][0]] and "no row" in reasons[rows[3][0]]
    capsys.readouterr()
    table.write_text("".join(lines) + lines[1] * 3000)  # a real table's size: over csv's limit
    assert prepare.main([*argv[:3], str(tmp_path / "o2"), *argv[4:]]) == 1
    assert capsys.readouterr().err == (f"error: {table} line 3: field larger than field limit "
                                       "(131072) (an unclosed quote?)\n")


def test_a_table_whose_every_row_is_bad_names_each_row_not_just_the_folder(
        tmp_path, capsys, nih_folder):
    rows = _rows(2, label="Flu")
    manual = nih_folder.make_nih_dir(tmp_path / "nih", rows)
    rc = prepare.main(["--manual_dir", str(manual), "--data_dir", str(tmp_path / "o"),
                       "--resolution", "16", "--workers", "0", "--skip_bad"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith(f"error: no usable images in {manual}:\n")
    for name, _, _ in rows:
        assert f"  {name}: Data_Entry_2017_v2020.csv line" in err and "'Flu'" in err
    listed = (tmp_path / "o" / builder.PROBLEMS_NAME).read_text().splitlines()
    assert [line.split("\t")[0] for line in listed[1:]] == [r[0] for r in rows]

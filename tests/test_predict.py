"""cxrjax.predict on a tiny "trained" run: probabilities, Grad-CAM heatmaps and every bad file."""

import csv
import importlib
import io
import json
import os
import struct
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TINY, random_variables
from PIL import Image

from cxrjax import models, predict, train_step
from cxrjax.data import image_inputs, nih_layout
from cxrjax.data.labels import CLASSES
from cxrjax.evaluation import heatmaps, inference, overlay
from cxrjax.evaluation import prediction_files as predictions
from cxrjax.io import checkpoint
from cxrjax.runfolder import loading as runs

RES, CROP = 72, 64  # the tiny trunk (stride 32) sees a 2x2 feature map


def tiny_config(name):
    c = importlib.import_module(f"configs.{name}").get_config()
    c.model.trunk_a = TINY[c.model.trunk_a]
    if c.model.trunk_b is not None:
        c.model.trunk_b = TINY[c.model.trunk_b]
    c.model.bilinear_dim, c.model.init = 16, "scratch"
    c.data.resolution, c.data.crop = RES, CROP
    c.train.batch_size = c.train.eval_batch_size = 4
    return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(workdir, model, variables): an R18 + R18-F-MSML run with one saved checkpoint."""
    workdir = tmp_path_factory.mktemp("run")
    c = tiny_config("r18_msml")
    (workdir / "config.json").write_text(c.to_json_best_effort(indent=2))
    model = models.build_model(c.model)
    variables = random_variables(model, CROP)
    manager = checkpoint.open_manager(runs.stage_dir(str(workdir), 0, c.train.stages[0]), 3)
    state, _ = train_step.create_stage(c, 0, model, variables, 10, inference.create_mesh())
    checkpoint.save(manager, 10, state, {"step": 10}, {"stage": "global"}, None)
    manager.wait_until_finished()
    return str(workdir), model, variables


def xray(size=(90, 70), seed=0):
    """A smooth gray test picture (W x H) with some structure."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size[1], :size[0]]
    img = 128 + 60 * np.sin(x / 9.0) * np.cos(y / 7.0) + rng.normal(0, 10, (size[1], size[0]))
    return np.clip(img, 0, 255).astype(np.uint8)


def save(path, array, mode=None):
    Image.fromarray(array, mode).save(path)
    return str(path)


def png_header_only(path, width, height):
    """Just the PNG signature and an IHDR chunk claiming width x height (no pixel data)."""
    body = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk)
    return str(path)


def test_load_image_is_the_prepared_record_centre_cropped_for_every_mode(tmp_path):
    gray = xray((100, 80))
    cases = {
        "l.png": gray,
        "rgba.png": np.dstack([gray, gray, gray, np.full_like(gray, 255)]),
        "rgb.jpg": np.dstack([gray, gray, gray]),
        "16bit.png": gray.astype(np.uint16) * 257,
    }
    for name, array in cases.items():
        path = save(tmp_path / name, array)
        loaded = image_inputs.load_image(path, RES, CROP)
        image, full = loaded.image, loaded.gray
        assert loaded.tags == dict.fromkeys(image_inputs.TAGS, "") and loaded.warnings == ()
        record, _ = nih_layout.decode_image(path, RES)
        o = (RES - CROP) // 2
        np.testing.assert_array_equal(image[..., 0], record[o:o + CROP, o:o + CROP])
        assert image.shape == (CROP, CROP, 1) and image.dtype == np.uint8
        assert full.shape == (80, 100)
        if name != "rgb.jpg":  # lossless: the gray values themselves come back
            np.testing.assert_array_equal(full, gray)


def test_16_bit_png_is_scaled_by_its_bit_depth_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    path = save(tmp_path / "ramp16.png", ramp)
    full = image_inputs.load_image(path, RES, CROP).gray
    np.testing.assert_array_equal(full, np.round(ramp / 257.0).astype(np.uint8))
    assert full.min() == 0 and full.max() == 255 and len(np.unique(full)) == 64


def test_palette_png_becomes_its_gray_values(tmp_path):
    gray = xray((40, 40))
    img = Image.fromarray(gray).convert("P")
    img.save(tmp_path / "p.png")
    full = image_inputs.load_image(str(tmp_path / "p.png"), RES, CROP).gray
    np.testing.assert_array_equal(full, np.asarray(img.convert("L")))


def test_probabilities_equal_the_model_on_the_same_array_and_heatmap_has_image_size(
        run, tmp_path):
    workdir, model, variables = run
    paths = [save(tmp_path / "a.png", xray((90, 70), 0)), save(tmp_path / "b.png", xray(seed=1)),
             save(tmp_path / "c.png", xray(seed=2))]
    # Batches of 2: a full one and a padded one; padding must not change the real rows.
    rows, errors = predict.predict_files(workdir, paths, str(tmp_path / "out"), batch_size=2)
    assert errors == [] and [r["path"] for r in rows] == paths
    images = np.stack([image_inputs.load_image(p, RES, CROP).image for p in paths])
    want = models.probabilities(model.apply(variables, images, train=False), ("ce", "fce"))
    for i, r in enumerate(rows):
        assert set(r["probs"]) == {"ce", "msml", "fce", "fused"}
        for head, p in r["probs"].items():
            np.testing.assert_allclose(p, want[head][i], rtol=1e-5, atol=1e-6)
        assert r["top"] == CLASSES[int(np.argmax(want["fused"][i]))]
        with Image.open(r["heatmap"]) as heat, Image.open(r["path"]) as original:
            # Under 256 px the picture is enlarged by a whole factor, so the caption fits.
            # The colour bar is a strip at the right of the enlarged image.
            k = -(-overlay.MIN_CAPTIONED_SIDE // min(original.size))
            assert heat.height == k * original.height and heat.mode == "RGB"
            assert k * original.width < heat.width < k * original.width * 1.5
            picture = np.asarray(heat)[:, :k * original.width]
            assert not np.array_equal(picture[..., 0], picture[..., 2])
    assert Image.open(rows[0]["heatmap"]).height == 4 * 70


def test_grad_cam_is_the_top_class_weights_on_stream_a_for_a_gap_dense_head():
    """R18 (one CE head): d sigmoid(z_k)/dA = s(1-s) W[:, k] / HW, so the normalised CAM is
    relu(A . W[:, k]) / max."""
    c = tiny_config("r18")
    model = models.build_model(c.model)
    variables = random_variables(model, CROP, seed=3)
    images = np.stack([xray((CROP, CROP), s) for s in range(4)])[..., None]
    scores = inference.make_predict_fn(model, ("ce", "fce"), inference.create_mesh())
    top = np.argmax(scores(variables, images)["fused"], axis=-1)
    raw = predict.make_heatmap_fn(model, ("ce", "fce"), inference.create_mesh())(
        variables, images, top)
    cam = np.stack([overlay.scaled(m) for m in np.asarray(raw)])
    _, state = model.apply(variables, images, train=False,
                           capture_intermediates=lambda m, name: m.path == ("trunk_a",))
    fmap = state["intermediates"]["trunk_a"]["__call__"][0]
    kernel = variables["params"]["head_a"]["fc"]["kernel"]  # (C, 14)
    want = jax.nn.relu(jnp.einsum("bhwc,cb->bhw", fmap, kernel[:, top]))
    want = want / jnp.maximum(want.max(axis=(1, 2), keepdims=True), 1e-12)
    assert cam.shape == fmap.shape[:3] == (4, 2, 2)
    np.testing.assert_allclose(cam, want, atol=1e-5)


def test_cam_problem_names_an_empty_or_constant_map_and_passes_a_real_one():
    assert overlay.cam_problem(np.zeros((2, 2))) == "empty (zero everywhere on its 2x2 feature map)"
    assert overlay.cam_problem(np.ones((1, 1))) == \
        "constant on its 1x1 feature map: it points nowhere"
    assert overlay.cam_problem(np.array([[0.0, 1.0], [0.2, 0.0]])) is None


def _caption_box(picture: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the caption's black box."""
    rows, cols = np.nonzero((picture == 0).all(axis=-1))
    return rows.min(), rows.max(), cols.min(), cols.max()


def test_a_blank_map_draws_no_heat_and_its_caption_says_why_whole_on_a_64_px_image():
    gray = np.full((64, 64), 128, np.uint8)
    caption = "Grad-CAM: Pleural_Thickening 0.183"
    picture = np.asarray(overlay.overlay(gray, np.zeros((2, 2)), RES, CROP, caption))
    assert picture.shape[0] == 256 and 256 < picture.shape[1] < 320  # enlarged 4x: a caption
    # needs the room
    picture = picture[:, :256]  # the X-ray; a colour bar at its right
    top, bottom, left, right = _caption_box(picture)
    assert right < 256 - 1 and bottom - top > 30  # wrapped on several lines, none cut off
    outside = np.ones(picture.shape[:2], bool)
    outside[top:bottom + 1, left:right + 1] = False
    assert (picture[outside] == 128).all()  # no heat anywhere: the map showed nothing
    # The same image with a real map: heat, and the one-line caption still within the width.
    heated = np.asarray(overlay.overlay(gray, np.array([[0.0, 1.0], [0.3, 0.0]]), RES, CROP,
                                        caption))[:, :256]
    assert (heated[..., 0] != heated[..., 2]).any()
    assert _caption_box(heated)[3] < 256 - 1


def test_predict_warns_on_stderr_when_an_images_grad_cam_is_blank(tmp_path, caplog):
    workdir = tmp_path / "run"
    workdir.mkdir()
    c = tiny_config("r18")
    (workdir / "config.json").write_text(c.to_json_best_effort(indent=2))
    model = models.build_model(c.model)
    variables = random_variables(model, CROP)
    head = variables["params"]["head_a"]["fc"]
    head["kernel"] = jnp.zeros_like(head["kernel"])  # no feature raises any score: empty CAM
    manager = checkpoint.open_manager(runs.stage_dir(str(workdir), 0, c.train.stages[0]), 3)
    state, _ = train_step.create_stage(c, 0, model, variables, 10, inference.create_mesh())
    checkpoint.save(manager, 10, state, {"step": 10}, {"stage": "global"}, None)
    manager.wait_until_finished()
    image = save(tmp_path / "small.png", xray((64, 64)))
    with caplog.at_level("WARNING", logger="cxrjax"):
        rows, _ = predict.predict_files(str(workdir), [image], str(tmp_path / "out"))
    warned = [r.getMessage() for r in caplog.records if "map of" in r.getMessage()]
    assert len(warned) == 1 and "is empty (zero everywhere on its 2x2 feature map)" in warned[0]
    assert image in warned[0] and rows[0]["heatmap"] in warned[0]


def test_cli_scores_good_files_and_reports_each_bad_one_on_one_line(run, tmp_path, capsys):
    workdir = run[0]
    good = save(tmp_path / "good.png", xray())
    text = tmp_path / "notes.png"
    text.write_text("not an image at all\n")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    whole = (tmp_path / "good.png").read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole[:len(whole) // 2])
    bomb = png_header_only(tmp_path / "bomb.png", 50_000, 50_000)
    missing = str(tmp_path / "missing.png")
    out = tmp_path / "out"
    argv = ["--workdir", workdir, "--out", str(out), good, str(text), str(empty),
            str(truncated), bomb, missing]
    assert predict.main(argv) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    reasons = {line.split(": ")[1]: line for line in errors}
    assert set(reasons) == {str(text), str(empty), str(truncated), bomb, missing}
    assert "not a PNG, JPEG or DICOM image" in reasons[str(text)]
    assert "empty file (0 bytes)" in reasons[str(empty)]
    assert "truncated" in reasons[str(truncated)]
    assert "50000x50000" in reasons[bomb] and "refused before decoding" in reasons[bomb]
    assert "no such file" in reasons[missing]
    assert "good.png" in captured.out and "5 input(s) failed, 1 image(s) scored" in captured.err
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["Image Index"] for r in rows] == ["good.png"]
    assert os.path.isfile(rows[0]["heatmap"])


def test_a_file_gone_or_unreadable_when_read_is_an_image_error_not_a_crash(tmp_path,
                                                                           monkeypatch):
    with pytest.raises(image_inputs.ImageError, match="cannot read it: .*No such file"):
        image_inputs.load_image(str(tmp_path / "gone.png"), RES, CROP)  # deleted since listed
    good = save(tmp_path / "good.png", xray())
    real_open = open

    def denied(path, *args, **kwargs):  # root reads a chmod 000 file: refuse it here instead
        if str(path) == good:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", denied)
    with pytest.raises(image_inputs.ImageError, match="cannot read it: .*Permission denied"):
        image_inputs.load_image(good, RES, CROP)


def test_png_bomb_is_refused_without_reading_past_the_header(tmp_path):
    bomb = png_header_only(tmp_path / "bomb.png", 50_000, 50_000)
    assert os.path.getsize(bomb) == 33  # nothing but the header exists to decode
    with pytest.raises(image_inputs.ImageError, match="50000x50000 px, over the 100,000,000"):
        image_inputs.check_header(bomb)
    at_limit = png_header_only(tmp_path / "at_limit.png", 10_000, 10_000)
    with pytest.raises(image_inputs.ImageError, match="truncated or corrupt PNG"):
        image_inputs.check_header(at_limit)  # passes the size check, then has no chunks to read
    small = save(tmp_path / "small.png", xray((30, 20)))
    assert image_inputs.check_header(small) == ("PNG", 30, 20)


def test_jpeg_claiming_60000x60000_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.jpg"
    save(path, xray((16, 16)))
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    data[sof + 5:sof + 9] = struct.pack(">HH", 60_000, 60_000)
    path.write_bytes(bytes(data))
    with pytest.raises(image_inputs.ImageError, match="refused before decoding"):
        image_inputs.check_header(str(path))


def test_directory_of_mixed_files_scores_the_images_and_lists_the_rest(run, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "sub").mkdir()
    gray = xray()
    save(folder / "plain.png", gray)
    save(folder / "rgba.png", np.dstack([gray, gray, gray, np.full_like(gray, 255)]))
    save(folder / "deep.png", gray.astype(np.uint16) * 257)
    (folder / "readme.txt").write_text("hello")
    (folder / "zero.jpg").write_bytes(b"")
    out = tmp_path / "out"
    assert predict.main(["--workdir", run[0], "--out", str(out), str(folder)]) == 1
    err = capsys.readouterr().err
    assert f"error: {folder / 'readme.txt'}: not a PNG, JPEG or DICOM image" in err
    assert f"error: {folder / 'zero.jpg'}: empty file" in err
    assert "1 subfolder(s) not searched" in err
    ids, scores = predictions.load_predictions(out / "predictions.csv")  # the evaluate format
    assert ids == ("deep.png", "plain.png", "rgba.png")
    # The 8-bit, RGBA and 16-bit copies of one picture are the same input: same scores.
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-6)
    np.testing.assert_allclose(scores[2], scores[1], rtol=1e-6)
    assert sorted(os.listdir(out / "heatmaps")) == [
        "deep_gradcam.png", "plain_gradcam.png", "rgba_gradcam.png"]


def test_bad_workdir_and_batch_size_are_one_line_errors_exit_2(run, tmp_path, capsys):
    good = save(tmp_path / "good.png", xray())
    readme = tmp_path / "README.md"
    readme.write_text("# not a run\n")
    for argv, message in (
            (["--workdir", str(tmp_path / "nope"), good], "workdir not found"),
            (["--workdir", str(readme), good], f"{readme} is a file, not a run folder"),
            (["--workdir", str(tmp_path), good], "not a cxrjax workdir"),
            (["--workdir", run[0], "--batch_size", "0", good], "--batch_size must be >= 1")):
        assert predict.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def test_cli_marks_calls_at_the_run_thresholds_and_says_once_when_it_has_none(
        run, tmp_path, capsys):
    from cxrjax.evaluation import operating_points

    workdir = run[0]
    images = [save(tmp_path / "a.png", xray(seed=4)), save(tmp_path / "b.png", xray(seed=5))]
    assert predict.main(["--workdir", workdir, "--out", str(tmp_path / "plain"), *images]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("has no eval/thresholds.json") == 1
    with open(tmp_path / "plain" / "predictions.csv") as f:
        assert not any(h.startswith("call_") for h in next(csv.reader(f)))
    values = np.full(14, 0.5)
    values[0], values[1], values[2] = 0.0, 1.1, np.nan  # always, never, no threshold
    path = os.path.join(workdir, "eval", "thresholds.json")
    operating_points.OperatingPoints(CLASSES, values, "youden").save(path)
    try:
        assert predict.main(["--workdir", workdir, "--out", str(tmp_path / "calls"),
                             *images]) == 0
    finally:
        os.remove(path)  # the module's run stays without thresholds for the other tests
    captured = capsys.readouterr()
    with open(tmp_path / "calls" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        probs = np.array([float(r[f"prob_{c}"]) for c in CLASSES])
        assert (r["call_Atelectasis"], r["call_Cardiomegaly"], r["call_Effusion"]) == (
            "positive", "negative", "")
        for c in CLASSES[3:]:
            assert r[f"call_{c}"] == ("positive" if probs[CLASSES.index(c)] >= 0.5
                                      else "negative")
        assert r["positive_findings"].split("|") == [
            c for c in CLASSES if r[f"call_{c}"] == "positive"]
    lines = captured.out.splitlines()
    assert lines[1].split()[1].endswith("+") and not lines[1].split()[2].endswith("+")
    assert "+ = positive at the run's per-class thresholds (youden" in captured.out
    assert "has no eval/thresholds.json" not in captured.err


def test_the_colour_bar_runs_from_the_top_colour_to_the_bottom_one_beside_the_image():
    from matplotlib import colormaps

    gray = np.full((300, 400), 100, np.uint8)
    picture = np.asarray(overlay.overlay(gray, np.array([[0.0, 1.0], [0.5, 0.2]]), RES, CROP,
                                         "caption", scale=("max", "0")))
    assert picture.shape[0] == 300 and picture.shape[1] > 400
    strip = picture[:, 400:]
    coloured = np.nonzero((strip.max(axis=-1).astype(int) - strip.min(axis=-1) > 60).any(0))[0]
    column = strip[:, coloured[len(coloured) // 2]]  # the middle of the bar
    rows = np.nonzero(column.any(axis=-1))[0]
    jet = (colormaps["jet"](np.array([1.0, 0.0]))[:, :3] * 255).astype(np.uint8)
    np.testing.assert_array_equal(column[rows[0]], jet[0])  # top: the map's maximum
    np.testing.assert_array_equal(column[rows[-1]], jet[1])  # bottom: zero
    labels = strip[:, coloured.max() + 2:]
    assert (labels.min(axis=-1) > 200).sum() > 10  # the scale's two labels, in white
    plain = overlay.overlay(gray, np.array([[0.0, 1.0], [0.5, 0.2]]), RES, CROP, "c", None)
    assert plain.size == (400, 300)


def _recorded_config(workdir, **changes):
    """Rewrites a run's config.json with dotted-key ``changes``; returns the old text."""
    path = os.path.join(workdir, "config.json")
    with open(path) as f:
        old = f.read()
    config = json.loads(old)
    for key, value in changes.items():
        section, field = key.split(".")
        config[section][field] = value
    with open(path, "w") as f:
        json.dump(config, f)
    return old


def test_a_synthetic_data_run_is_flagged_everywhere_and_its_own_heatmap_is_drawn(
        run, tmp_path, capsys, monkeypatch):
    workdir = run[0]
    images = [save(tmp_path / "a.png", xray(seed=6)), save(tmp_path / "b.png", xray(seed=7))]
    captions, maps = [], []

    def spy(gray, cam, resolution, crop, caption="", scale=("max", "0"), warning=""):
        captions.append(f"{caption}. Warning: {warning}" if warning else caption)
        maps.append(np.asarray(cam))
        return overlay.overlay(gray, cam, resolution, crop, caption, scale, warning)

    monkeypatch.setattr(predict, "overlay", spy)
    old = _recorded_config(workdir, **{"data.source": "synthetic",
                                       "eval.localization_heatmap": "gradcam_fine"})
    try:
        out = tmp_path / "out"
        assert predict.main(["--workdir", workdir, "--out", str(out), *images]) == 0
    finally:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(old)
    err = capsys.readouterr().err.splitlines()
    warned = [line for line in err if line.startswith("warning:")]
    assert warned == [f"warning: {workdir}: this model was trained on synthetic images (drawn "
                      "shapes, cxrjax.data.synthetic), not on chest X-rays: its probabilities "
                      "for real X-rays mean nothing"]
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["warning"] for r in rows] == ["trained on synthetic images, not X-rays"] * 2
    assert all(c.endswith(". Warning: trained on synthetic images, not X-rays") for c in captions)
    # The run's own heatmap: the finer Grad-CAM (a 4x4 map of the 64-px crop, not 2x2).
    assert all(c.startswith(heatmaps.TITLES["gradcam_fine"]) for c in captions)
    assert [m.shape for m in maps] == [(4, 4), (4, 4)]
    assert sorted(os.listdir(out / "heatmaps")) == ["a_gradcam_fine.png", "b_gradcam_fine.png"]
    # A run on NIH data carries no warning: the column is there, empty.
    assert predict.main(["--workdir", workdir, "--out", str(tmp_path / "nih"), images[0]]) == 0
    assert "warning:" not in capsys.readouterr().err
    with open(tmp_path / "nih" / "predictions.csv") as f:
        assert next(csv.DictReader(f))["warning"] == ""
    assert not captions[-1].endswith("X-rays")


REAL_DICOM = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                          "shared", "data", "dicom", "siim_pneumothorax_sample.dcm")


def test_a_dicom_and_a_png_of_its_pixels_score_the_same_and_dicom_warnings_reach_the_csv(
        run, tmp_path, capsys):
    pytest.importorskip("pydicom")
    from data.test_dicom import make_dicom

    if not os.path.isfile(REAL_DICOM):
        pytest.skip(f"the real DICOM is absent ({REAL_DICOM})")
    gray = image_inputs.load_image(REAL_DICOM, RES, CROP).gray
    png = save(tmp_path / "real.png", gray)
    child = make_dicom(tmp_path / "child.dcm", xray((90, 70), 3), Modality="CT",
                       ViewPosition="LL", PatientAge="012Y", PatientSex="F")
    multi = make_dicom(tmp_path / "multi.dcm", np.stack([xray(), xray()]), frames=2)
    rgb = make_dicom(tmp_path / "rgb.dcm", np.random.default_rng(0).integers(
        0, 256, (20, 30, 3), dtype=np.uint8), photometric="RGB")
    out = tmp_path / "out"
    argv = ["--workdir", run[0], "--out", str(out), REAL_DICOM, png, multi, child, rgb]
    assert predict.main(argv) == 1  # the two refused files; the three others are scored
    err = capsys.readouterr().err.splitlines()
    assert f"error: {multi}: multi-frame DICOM (2 frames): one image per file is read" in err
    assert f"error: {rgb}: a colour (RGB) DICOM: only grayscale X-rays are read" in err
    assert [line for line in err if line.startswith("warning:")] == [
        f"warning: {child}: modality CT, not a radiograph (CR or DX)",
        f"warning: {child}: lateral view (LL): the model was trained on frontal views",
        f"warning: {child}: patient aged 012Y, under 18: the training data are mostly adults"]
    with open(out / "predictions.csv") as f:
        rows = {r["Image Index"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["siim_pneumothorax_sample.dcm", "real.png", "child.dcm"]
    real, as_png = rows["siim_pneumothorax_sample.dcm"], rows["real.png"]
    for c in CLASSES:  # the same pixels: the same probabilities, to the last float32 digit
        assert real[f"prob_{c}"] == as_png[f"prob_{c}"]
    assert (real["view_position"], real["patient_sex"], real["patient_age"]) == ("PA", "M", "62")
    assert (as_png["view_position"], as_png["warning"]) == ("", "")
    assert rows["child.dcm"]["warning"] == (
        "modality CT, not a radiograph (CR or DX); lateral view (LL): the model was trained on "
        "frontal views; patient aged 012Y, under 18: the training data are mostly adults")
    assert sorted(os.listdir(out / "heatmaps")) == [
        "child_gradcam.png", "real_gradcam.png", "siim_pneumothorax_sample_gradcam.png"]


def test_nothing_scored_leaves_no_folder_and_a_dicom_without_pydicom_is_named(
        run, tmp_path, capsys, monkeypatch):
    pytest.importorskip("pydicom")
    from data.test_dicom import make_dicom

    dcm = make_dicom(tmp_path / "x.dcm", xray())
    multi = make_dicom(tmp_path / "multi.dcm", np.stack([xray(), xray()]), frames=2)
    out = tmp_path / "out"
    assert predict.main(["--workdir", run[0], "--out", str(out), multi]) == 1
    assert "multi-frame" in capsys.readouterr().err and not out.exists()
    monkeypatch.setitem(sys.modules, "pydicom", None)  # as if the dicom extra were absent
    assert predict.main(["--workdir", run[0], "--out", str(out), dcm]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert err == [f"error: {dcm}: a DICOM file; reading it needs pydicom: pip install "
                   "'cxrjax[dicom]'"]
    assert not out.exists()


def test_images_in_a_bucket_score_as_their_local_copies(run, tmp_path, gcs_bucket, capsys):
    from cxrjax.io import fileio

    local = [save(tmp_path / "a.png", xray(seed=8)), save(tmp_path / "b.jpg", xray(seed=9))]
    for path in local:
        fileio.write_bytes(f"{gcs_bucket}/images/{os.path.basename(path)}",
                           open(path, "rb").read())
    fileio.write_bytes(f"{gcs_bucket}/images/sub/c.png", open(local[0], "rb").read())
    pytest.importorskip("pydicom")
    from data.test_dicom import make_dicom

    dcm = make_dicom(tmp_path / "d.dcm", xray(seed=8), PatientAge="061Y")
    fileio.write_bytes(f"{gcs_bucket}/images/d.dcm", open(dcm, "rb").read())
    assert predict.main(["--workdir", run[0], "--out", str(tmp_path / "here"), *local]) == 0
    remote = [f"{gcs_bucket}/images", f"{gcs_bucket}/images/sub/c.png",
              f"{gcs_bucket}/missing.png"]
    out = f"{gcs_bucket}/out"
    assert predict.main(["--workdir", run[0], "--out", out, *remote]) == 1
    err = capsys.readouterr().err
    assert f"error: {gcs_bucket}/missing.png: no such file or directory" in err
    assert f"{gcs_bucket}/images: 1 subfolder(s) not searched" in err
    ids, scores = predictions.load_predictions(tmp_path / "here" / "predictions.csv")
    (tmp_path / "there.csv").write_text(fileio.read_text(f"{out}/predictions.csv"))
    remote_ids, remote_scores = predictions.load_predictions(tmp_path / "there.csv")
    assert remote_ids == ("a.png", "b.jpg", "d.dcm", "c.png")  # the folder's, then the file
    # c.png is a.png, d.dcm its pixels; a batch of 4 (not 2) may move a float32 sum by an ulp
    np.testing.assert_allclose(remote_scores, [*scores, scores[0], scores[0]], rtol=1e-6)
    rows = list(csv.DictReader(io.StringIO(fileio.read_text(f"{out}/predictions.csv"))))
    assert (rows[2]["patient_age"], rows[2]["view_position"]) == ("061Y", "PA")
    assert [fileio.exists(f"{out}/heatmaps/{n}_gradcam.png") for n in "abc"] == [True] * 3

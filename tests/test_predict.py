"""cxrjax.predict on a tiny "trained" run: probabilities, Grad-CAM heatmaps and every bad file."""

import csv
import importlib
import os
import struct
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TINY, random_variables
from PIL import Image

from cxrjax import checkpoint, inference, models, overlay, predict, predictions, runs, train
from cxrjax.data import nih_layout
from cxrjax.data.labels import CLASSES

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
    state, _ = train.create_stage(c, 0, model, variables, 10, inference.create_mesh())
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
        image, full = predict.load_image(path, RES, CROP)
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
    _, full = predict.load_image(path, RES, CROP)
    np.testing.assert_array_equal(full, np.round(ramp / 257.0).astype(np.uint8))
    assert full.min() == 0 and full.max() == 255 and len(np.unique(full)) == 64


def test_palette_png_becomes_its_gray_values(tmp_path):
    gray = xray((40, 40))
    img = Image.fromarray(gray).convert("P")
    img.save(tmp_path / "p.png")
    _, full = predict.load_image(str(tmp_path / "p.png"), RES, CROP)
    np.testing.assert_array_equal(full, np.asarray(img.convert("L")))


def test_probabilities_equal_the_model_on_the_same_array_and_heatmap_has_image_size(
        run, tmp_path):
    workdir, model, variables = run
    paths = [save(tmp_path / "a.png", xray((90, 70), 0)), save(tmp_path / "b.png", xray(seed=1)),
             save(tmp_path / "c.png", xray(seed=2))]
    # Batches of 2: a full one and a padded one; padding must not change the real rows.
    rows, errors = predict.predict_files(workdir, paths, str(tmp_path / "out"), batch_size=2)
    assert errors == [] and [r["path"] for r in rows] == paths
    images = np.stack([predict.load_image(p, RES, CROP)[0] for p in paths])
    want = models.probabilities(model.apply(variables, images, train=False), ("ce", "fce"))
    for i, r in enumerate(rows):
        assert set(r["probs"]) == {"ce", "msml", "fce", "fused"}
        for head, p in r["probs"].items():
            np.testing.assert_allclose(p, want[head][i], rtol=1e-5, atol=1e-6)
        assert r["top"] == CLASSES[int(np.argmax(want["fused"][i]))]
        with Image.open(r["heatmap"]) as heat, Image.open(r["path"]) as original:
            # Under 256 px the picture is enlarged by a whole factor, so the caption fits.
            k = -(-overlay.MIN_CAPTIONED_SIDE // min(original.size))
            assert heat.size == (k * original.width, k * original.height) and heat.mode == "RGB"
            assert not np.array_equal(np.asarray(heat)[..., 0], np.asarray(heat)[..., 2])
    assert Image.open(rows[0]["heatmap"]).size == (4 * 90, 4 * 70)


def test_grad_cam_is_the_top_class_weights_on_stream_a_for_a_gap_dense_head():
    """R18 (one CE head): d sigmoid(z_k)/dA = s(1-s) W[:, k] / HW, so the normalised CAM is
    relu(A . W[:, k]) / max."""
    c = tiny_config("r18")
    model = models.build_model(c.model)
    variables = random_variables(model, CROP, seed=3)
    images = np.stack([xray((CROP, CROP), s) for s in range(4)])[..., None]
    scores = inference.make_predict_fn(model, ("ce", "fce"), inference.create_mesh())
    top = np.argmax(scores(variables, images)["fused"], axis=-1)
    cam = predict.make_gradcam_fn(model, ("ce", "fce"), inference.create_mesh())(
        variables, images, top)
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
    assert picture.shape == (256, 256, 3)  # enlarged 4x: a caption needs the room
    top, bottom, left, right = _caption_box(picture)
    assert right < 256 - 1 and bottom - top > 30  # wrapped on several lines, none cut off
    outside = np.ones(picture.shape[:2], bool)
    outside[top:bottom + 1, left:right + 1] = False
    assert (picture[outside] == 128).all()  # no heat anywhere: the map showed nothing
    # The same image with a real map: heat, and the one-line caption still within the width.
    heated = np.asarray(overlay.overlay(gray, np.array([[0.0, 1.0], [0.3, 0.0]]), RES, CROP,
                                        caption))
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
    state, _ = train.create_stage(c, 0, model, variables, 10, inference.create_mesh())
    checkpoint.save(manager, 10, state, {"step": 10}, {"stage": "global"}, None)
    manager.wait_until_finished()
    image = save(tmp_path / "small.png", xray((64, 64)))
    with caplog.at_level("WARNING", logger="cxrjax"):
        rows, _ = predict.predict_files(str(workdir), [image], str(tmp_path / "out"))
    warned = [r.getMessage() for r in caplog.records if "Grad-CAM map" in r.getMessage()]
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
    assert "not a PNG or JPEG image" in reasons[str(text)]
    assert "empty file (0 bytes)" in reasons[str(empty)]
    assert "truncated" in reasons[str(truncated)]
    assert "50000x50000" in reasons[bomb] and "refused before decoding" in reasons[bomb]
    assert "no such file" in reasons[missing]
    assert "good.png" in captured.out and "5 input(s) failed, 1 image(s) scored" in captured.err
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["Image Index"] for r in rows] == ["good.png"]
    assert os.path.isfile(rows[0]["heatmap"])


def test_png_bomb_is_refused_without_reading_past_the_header(tmp_path):
    bomb = png_header_only(tmp_path / "bomb.png", 50_000, 50_000)
    assert os.path.getsize(bomb) == 33  # nothing but the header exists to decode
    with pytest.raises(predict.ImageError, match="50000x50000 px, over the 100,000,000"):
        predict.check_header(bomb)
    at_limit = png_header_only(tmp_path / "at_limit.png", 10_000, 10_000)
    with pytest.raises(predict.ImageError, match="truncated or corrupt PNG"):
        predict.check_header(at_limit)  # passes the size check, then has no chunks to read
    small = save(tmp_path / "small.png", xray((30, 20)))
    assert predict.check_header(small) == ("PNG", 30, 20)


def test_jpeg_claiming_60000x60000_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.jpg"
    save(path, xray((16, 16)))
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    data[sof + 5:sof + 9] = struct.pack(">HH", 60_000, 60_000)
    path.write_bytes(bytes(data))
    with pytest.raises(predict.ImageError, match="refused before decoding"):
        predict.check_header(str(path))


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
    assert f"error: {folder / 'readme.txt'}: not a PNG or JPEG image" in err
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
    for argv, message in (
            (["--workdir", str(tmp_path / "nope"), good], "workdir not found"),
            (["--workdir", str(tmp_path), good], "not a cxrjax workdir"),
            (["--workdir", run[0], "--batch_size", "0", good], "--batch_size must be >= 1")):
        assert predict.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def test_cli_marks_calls_at_the_run_thresholds_and_says_once_when_it_has_none(
        run, tmp_path, capsys):
    from cxrjax import operating_points

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

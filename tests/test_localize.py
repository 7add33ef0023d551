"""Box localization of trained runs on the 7 real NIH images that have BBox_List boxes: the
prepare -> crop -> heatmap -> box -> 1024² mapping end to end, the heatmaps themselves, the
``cxrjax.localize`` CLI and its outputs, and every bad input as a one-line error."""

import gzip
import json
import os
import pathlib

import jax
import numpy as np
import pytest
from helpers import random_variables, tiny_config
from PIL import Image

from cxrjax import localize, models, train_step
from cxrjax.data import labels as labels_lib
from cxrjax.data import nih_layout, pipeline, prepare
from cxrjax.evaluation import boxes as loc
from cxrjax.evaluation import evaluator, heatmaps, inference
from cxrjax.evaluation import localization as localizer
from cxrjax.io import checkpoint
from cxrjax.runfolder import loading as runs

NIH_IMAGES = pathlib.Path(__file__).resolve().parents[1].parent / "shared/data/nih_sample/images"
RESOLUTION, CROP = 256, 224  # the paper configs' frame: what the mapping must get right
HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"


def _boxed_sample():
    """The NIH boxes on sample images, and 13 more sample images without boxes."""
    if not NIH_IMAGES.is_dir():
        pytest.skip(f"the real NIH sample is absent (looked for {NIH_IMAGES})")
    boxes = labels_lib.load_bboxes()
    names = sorted(os.listdir(NIH_IMAGES))
    real = boxes.select(np.isin(boxes.image_ids, names))
    assert len(real) == 7  # `comm` of the 207 sample names against BBox_List_2017
    others = [n for n in names if n not in set(real.image_ids)][:13]
    return real, sorted(set(real.image_ids)) + others


def _nih_folder(root, names, paint=None):
    """An NIH-layout folder of ``names`` (their rows of the real table); ``paint``: Boxes whose
    rectangles are painted white on their image, the rest of it darkened to a quarter."""
    (root / "images").mkdir(parents=True)
    with gzip.open(labels_lib.resource_path("Data_Entry_2017_v2020.csv.gz"), "rt") as f:
        lines = f.read().splitlines()
    rows = [line for line in lines[1:] if line.split(",")[0] in set(names)]
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    for name in names:
        if paint is None or name not in set(paint.image_ids):
            os.symlink(NIH_IMAGES / name, root / "images" / name)
            continue
        gray, _ = nih_layout.decode_image(str(NIH_IMAGES / name), 1024)
        x, y = np.meshgrid(np.arange(1024) + 0.5, np.arange(1024) + 0.5)
        inside = np.zeros_like(gray, bool)
        for bx, by, bw, bh in paint.xywh[paint.image_ids == name]:
            inside |= (x > bx) & (x < bx + bw) & (y > by) & (y < by + bh)
        Image.fromarray(np.where(inside, 255, gray // 4).astype(np.uint8)).save(
            root / "images" / name)
    return root


def _run_config(root):
    c = tiny_config("r18_msml", crop=CROP, batch=2)
    c.data.update(dict(source="nih", manual_dir=str(root / "nih"), data_dir=str(root / "tfds"),
                       resolution=RESOLUTION, workers=0))
    c.train.eval_batch_size = 4
    return c


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A tiny random-init R18 + R18-F-MSML run (two streams: Grad-CAM and both CAMs) on 20
    real sample images, 7 of them boxed, prepared at 256 px; its one checkpoint saved."""
    real, names = _boxed_sample()
    root = tmp_path_factory.mktemp("real")
    _nih_folder(root / "nih", names)
    assert prepare.main(["--manual_dir", str(root / "nih"), "--data_dir", str(root / "tfds"),
                         "--resolution", str(RESOLUTION), "--workers", "0"]) == 0
    workdir = root / "run"
    workdir.mkdir()
    c = _run_config(root)
    (workdir / "config.json").write_text(c.to_json_best_effort(indent=2))
    model = models.build_model(c.model)
    variables = random_variables(model, CROP, seed=1)
    manager = checkpoint.open_manager(runs.stage_dir(str(workdir), 0, c.train.stages[0]), 3)
    state, _ = train_step.create_stage(c, 0, model, variables, 10, inference.create_mesh())
    checkpoint.save(manager, 10, state, {"step": 10}, {"stage": "global"}, None)
    manager.wait_until_finished()
    return str(workdir), real, model, variables


def _edges(xywh):
    xywh = np.asarray(xywh)
    return np.concatenate([xywh[..., :2], xywh[..., :2] + xywh[..., 2:]], axis=-1)


def test_box_painted_on_each_real_image_comes_back_through_prepare_crop_and_mapping(
        tmp_path):
    """Each real box painted white on its real image, prepared at 256 px like any download; the
    centre crop itself is the heatmap. Every box is found at T(IoU) = 0.75, its predicted box
    within one 256-px pixel (4 original px) of the box cut to the crop's field of view; the
    same boxes at random places score far less."""
    real, names = _boxed_sample()
    _nih_folder(tmp_path / "nih", names, paint=real)
    assert prepare.main(["--manual_dir", str(tmp_path / "nih"), "--data_dir",
                         str(tmp_path / "tfds"), "--resolution", str(RESOLUTION),
                         "--workers", "0"]) == 0
    datasets = pipeline.open_datasets(_run_config(tmp_path), str(tmp_path))

    def oracle(images, classes):
        return {"painted": (images[..., 0] >= 200).astype(np.float32)}

    found = localizer.localize(oracle, 4, datasets, real, "all", crop=CROP, draws=5)
    result = found.result
    assert (result["boxes"], result["images"], result["resolution"]) == (7, 7, RESOLUTION)
    scores = result["methods"]["painted"]["scores"]["overall"]
    assert scores["acc_iou"][:4] == [1.0] * 4 and scores["fp_per_image_iou"][0] == 0.0
    chance = result["methods"]["painted"]["random_baseline"]["overall"]
    assert chance["acc_iou"][2] < 0.5
    view = loc.field_of_view(labels_lib.BOX_FRAME, RESOLUTION, CROP)
    predicted = found.predicted["painted"]
    assert len(predicted) == 7
    for name, label, box in zip(real.image_ids, real.labels, real.xywh, strict=True):
        mine = predicted.xywh[(predicted.image_ids == name) & (predicted.labels == label)]
        error = np.abs(_edges(mine[0]) - _edges(loc.clip_boxes(box, view)))
        assert (error <= 1024 / RESOLUTION + 1e-6).all(), (name, error)


def test_cams_are_the_head_weights_on_each_stream_and_average_to_the_head_logit(real_run):
    """CAM of a GAP head: its spatial mean plus the bias is that head's logit, exactly."""
    _, _, model, variables = real_run
    images = np.random.default_rng(0).integers(0, 255, (4, CROP, CROP, 1), np.uint8)
    classes = np.array([1, 4, 5, 6], np.int32)
    fn = heatmaps.make_heatmap_fn(model, ("ce", "fce"), inference.create_mesh(),
                                  heatmaps.available_methods(model))
    maps = jax.device_get(fn(variables, images, classes))
    assert set(maps) == {"gradcam", "gradcam_fine", "cam_a", "cam_b"}
    assert maps["cam_a"].shape == maps["gradcam"].shape == (4, 7, 7)
    assert maps["gradcam_fine"].shape == (4, 14, 14)  # stream A's stride-16 block
    assert (maps["gradcam_fine"] >= 0).all() and maps["gradcam_fine"].max() > 0
    logits = model.apply(variables, images, train=False)
    for method, head, out in (("cam_a", "head_a", "ce"), ("cam_b", "head_b", "msml")):
        bias = variables["params"][head]["fc"]["bias"][classes]
        np.testing.assert_allclose(maps[method].mean(axis=(1, 2)) + bias,
                                   logits[out][np.arange(4), classes], rtol=1e-4, atol=1e-5)


def test_cli_on_real_boxes_writes_json_table_and_grid_beside_random_boxes(real_run, tmp_path,
                                                                          capsys):
    workdir, real, _, _ = real_run
    out = tmp_path / "loc"
    assert localize.main(["--workdir", workdir, "--split", "all", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "7 boxes on 7 images of the all split" in printed and "| **all boxes** | 7 |" in printed
    result = json.loads((out / "localization.json").read_text())
    assert result["primary"] == "gradcam"
    assert list(result["methods"]) == ["gradcam", "gradcam_fine", "cam_a", "cam_b"]
    assert result["thresholds"] == list(loc.T_LEVELS) and result["frame"] == [1024, 1024]
    assert result["field_of_view"] == [64.0, 64.0, 896.0, 896.0]
    classes = {labels_lib.CLASSES[c] for c in real.labels}
    for block in result["methods"].values():
        assert set(block["scores"]["per_class"]) == classes
        for scores in (block["scores"], block["random_baseline"]):
            assert scores["overall"]["boxes"] == 7
            assert all(0 <= v <= 1 for v in scores["overall"]["acc_iobb"])
    markdown = (out / "localization.md").read_text()
    assert "![Localization examples](localization.png)" in markdown
    assert "*random boxes, same sizes*" in markdown
    with Image.open(out / "localization.png") as grid:
        assert grid.size[0] >= 1000 and grid.size[1] >= 600  # 4 columns, 2 rows (7 pairs)


def test_predicted_boxes_of_a_random_model_lie_in_the_crop_field_of_view(real_run):
    workdir, real, _, _ = real_run
    run = evaluator.open_run(workdir)
    found = run.evaluator.localize(run.variables, real, "all", methods=("cam_a",))
    boxes = found.predicted["cam_a"]  # a CAM is never flat: at least one box per pair
    assert set(boxes.image_ids) == set(real.image_ids) and len(boxes) >= 7
    edges = _edges(boxes.xywh)
    assert (edges[:, :2] >= 64 - 1e-6).all() and (edges[:, 2:] <= 960 + 1e-6).all()
    assert (boxes.xywh[:, 2:] >= 1024 / CROP * 0.99).all()  # at least one crop pixel


@pytest.mark.parametrize("content, args, message", [
    ("Image,Label,x,y,w,h\n00009745_000.png,Mass,1,1,5,5\n", (), "is not BBox_List_2017's"),
    (HEADER + "00009745_000.png,Mass,1000,10,30,30\n", (), "outside the 1024x1024 image"),
    (HEADER + "00009745_000.png,Tumour,1,1,5,5\n", (), "unknown class 'Tumour'"),
    (HEADER + "00000000_000.png,Mass,1,1,5,5\n", ("--split", "all"),
     "none of the 1 boxed images is in the run's all split"),
    (HEADER + "00009745_000.png,Mass,1,1,5,5\n", ("--methods", "cam_c"),
     "heatmap method.*cam_c.*offers gradcam, gradcam_fine, cam_a, cam_b"),
    (None, (), "boxes file not found"),
])
def test_bad_boxes_and_options_are_one_line_errors_exit_2(real_run, tmp_path, capsys, content,
                                                          args, message):
    path = tmp_path / "boxes.csv"
    if content is not None:
        path.write_text(content)
    code = localize.main(["--workdir", real_run[0], "--boxes", str(path), *args])
    lines = [x for x in capsys.readouterr().err.splitlines() if " INFO " not in x]  # log lines
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert __import__("re").search(message, lines[0]), lines


def test_boxes_in_other_splits_only_say_so_and_suggest_all(real_run, capsys):
    run = evaluator.open_run(real_run[0])
    test_ids = set(run.evaluator.datasets.image_ids("test"))
    real = real_run[1]
    elsewhere = real.select(~np.isin(real.image_ids, list(test_ids)))
    with pytest.raises(loc.BoxError, match=r"in the run's test split; the dataset holds \d+ "
                                           r"of them in other splits \(try --split all\)"):
        localizer.boxes_in_split(elsewhere, run.evaluator.datasets, "test")


def test_a_file_given_as_workdir_is_named_a_file_in_one_line(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# not a run\n")
    assert localize.main(["--workdir", str(readme)]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if " INFO " not in x]
    assert len(lines) == 1 and lines[0].startswith(f"error: {readme} is a file, not a run "
                                                   "folder"), lines
    assert "not found" not in lines[0]

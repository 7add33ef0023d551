"""Box localization: the NIH boxes CSV, the crop <-> original mapping on real images, the
heatmap rule, IoU / IoBB scores and the random-box baseline."""

import csv
import gzip
import os
import pathlib

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from scipy import ndimage

from cxrjax.data import labels as labels_lib
from cxrjax.data import nih_layout
from cxrjax.evaluation import boxes as loc

NIH_IMAGES = pathlib.Path(__file__).resolve().parents[2].parent / "shared/data/nih_sample/images"
RESOLUTION, CROP = 256, 224  # the paper configs' decode size and eval centre crop
HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"


@pytest.fixture(scope="module")
def nih_boxes():
    return loc.read_boxes(labels_lib.resource_path("BBox_List_2017.csv.gz"))


# ---------------------------------------------------------------------------------------------
# The boxes CSV.
# ---------------------------------------------------------------------------------------------


def test_shipped_nih_list_reads_984_boxes_on_880_images_with_infiltrate_as_infiltration(
        nih_boxes):
    assert len(nih_boxes) == 984 and len(np.unique(nih_boxes.image_ids)) == 880
    names = [labels_lib.CLASSES[c] for c in nih_boxes.labels]
    assert names.count("Infiltration") == 123 and len(set(names)) == 8
    with gzip.open(labels_lib.resource_path("BBox_List_2017.csv.gz"), "rt") as f:
        reference = list(csv.reader(f))[1:]  # the raw rows, read without the reader under test
    np.testing.assert_allclose(nih_boxes.xywh, [[float(v) for v in r[2:6]] for r in reference])
    assert list(nih_boxes.image_ids) == [r[0] for r in reference]


def test_written_boxes_read_back_identically_with_nih_spelling(tmp_path, nih_boxes):
    path = tmp_path / "boxes.csv"
    some = np.arange(0, 984, 20)  # every class, Infiltrate included
    loc.write_boxes(path, nih_boxes.select(some))
    text = path.read_text()
    assert text.startswith(HEADER) and "Infiltrate," in text and "Infiltration" not in text
    again = loc.read_boxes(path)
    np.testing.assert_array_equal(again.xywh, nih_boxes.xywh[some])
    np.testing.assert_array_equal(again.labels, nih_boxes.labels[some])


@pytest.mark.parametrize("content, sizes, message", [
    ("Image,Label,x,y,w,h\na.png,Mass,1,1,5,5\n", None, "is not BBox_List_2017's"),
    (HEADER + "a.png,Mass,1000,10,30,30\n", None, "outside the 1024x1024 image"),
    (HEADER + "a.png,Mass,-3,10,30,30\n", None, "outside the 1024x1024 image"),
    (HEADER + "a.png,Mass,400,10,30,30\n", {"a.png": (420, 300)}, "outside the 420x300 image"),
    (HEADER + "a.png,Tumour,1,1,5,5\n", None, "unknown class 'Tumour'"),
    (HEADER + "a.png,Mass,1,1,five,5\n", None, "must be numbers"),
    (HEADER + "a.png,Mass,1,1,0,5\n", None, "positive width and height"),
    (HEADER + "a.png,Mass,1,1,5\n", None, "expected 6 fields"),
    (HEADER, None, "no boxes"),
])
def test_bad_boxes_file_is_a_one_line_error(tmp_path, content, sizes, message):
    path = tmp_path / "boxes.csv"
    path.write_text(content)
    with pytest.raises(loc.BoxError, match=message) as e:
        loc.read_boxes(path, image_sizes=sizes)
    assert "\n" not in str(e.value)


def test_box_inside_a_known_larger_image_is_accepted(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text(HEADER + "a.png,Infiltration,1900,10,30,30\n")
    boxes = loc.read_boxes(path, image_sizes={"a.png": (2048, 1536)})
    assert boxes.labels.tolist() == [labels_lib.CLASS_INDEX["Infiltration"]]


# ---------------------------------------------------------------------------------------------
# Frames.
# ---------------------------------------------------------------------------------------------


def test_crop_field_of_view_is_the_centre_seven_eighths_of_the_original():
    np.testing.assert_allclose(loc.field_of_view((1024, 1024), RESOLUTION, CROP),
                               [64, 64, 896, 896])
    np.testing.assert_allclose(loc.field_of_view((2048, 1024), RESOLUTION, CROP),
                               [128, 64, 1792, 896])  # stretched to 256², so x scales by 8
    np.testing.assert_allclose(loc.original_to_crop([64, 64, 896, 896], (1024, 1024),
                                                    RESOLUTION, CROP), [0, 0, 224, 224])


def test_crop_to_original_inverts_original_to_crop_for_mixed_image_sizes():
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 500, (20, 4))
    sizes = rng.uniform(600, 3000, (20, 2))
    there = loc.original_to_crop(boxes, sizes, 320, 288)
    np.testing.assert_allclose(loc.crop_to_original(there, sizes, 320, 288), boxes)


def test_crop_larger_than_resolution_is_a_one_line_error():
    with pytest.raises(loc.BoxError, match="crop=300 must be in"):
        loc.original_to_crop([0, 0, 1, 1], (1024, 1024), 256, 300)


def _real_images_with_boxes(nih_boxes):
    if not NIH_IMAGES.is_dir():
        pytest.skip(f"the real NIH sample is absent (looked for {NIH_IMAGES})")
    keep = np.isin(nih_boxes.image_ids, sorted(os.listdir(NIH_IMAGES)))
    assert keep.sum() == 7  # `comm` of the 207 sample names against BBox_List_2017
    return nih_boxes.select(keep)


def _eval_input(path, resolution=RESOLUTION, crop=CROP):
    """What the model sees at evaluation: the prepare decode, then the pipeline's centre crop."""
    image, _ = nih_layout.decode_image(str(path), resolution)
    o = (resolution - crop) // 2
    return image[o:o + crop, o:o + crop].astype(np.float64)


def _edges(xywh):
    xywh = np.asarray(xywh)
    return np.concatenate([xywh[..., :2], xywh[..., :2] + xywh[..., 2:]], axis=-1)


def test_real_image_pixels_under_a_mapped_box_are_the_original_pixels_under_it(nih_boxes):
    """The crop's pixels inside each real box, mapped to the crop frame, equal the original
    image's pixels inside it resized: exact to a fraction of a grey level, while forgetting
    the crop offset is off by tens."""
    real = _real_images_with_boxes(nih_boxes)
    for name, box in zip(real.image_ids, real.xywh, strict=True):
        original, _ = nih_layout.decode_image(str(NIH_IMAGES / name), 1024)
        seen = _eval_input(NIH_IMAGES / name)
        x0, y0, x1, y1 = np.clip(np.round(_edges(
            loc.original_to_crop(box, (1024, 1024), RESOLUTION, CROP))), 0, CROP).astype(int)
        ox, oy, ow, oh = np.round(loc.crop_to_original(
            [x0, y0, x1 - x0, y1 - y0], (1024, 1024), RESOLUTION, CROP)).astype(int)
        region = Image.fromarray(original[oy:oy + oh, ox:ox + ow])
        expected = np.asarray(region.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR),
                              np.float64)
        assert np.abs(seen[y0:y1, x0:x1] - expected).mean() < 0.5, name
        shift = (RESOLUTION - CROP) // 2  # the same patch, had the crop offset been ignored
        unshifted = seen[max(y0 - shift, 0):y1 - shift, max(x0 - shift, 0):x1 - shift]
        assert np.abs(unshifted - expected[-unshifted.shape[0]:, -unshifted.shape[1]:]
                      ).mean() > 5, name


@pytest.mark.parametrize("size", [(1024, 1024), (1300, 1000)])
def test_box_drawn_on_real_image_comes_back_from_its_heatmap_in_the_original_frame(
        tmp_path, nih_boxes, size):
    """Each real box is painted white on its real image (anatomy kept, darkened, around it);
    the decoded, cropped image is the heatmap. The rule's box, mapped back, matches the
    painted box cut to the field of view within one 256-px pixel (W/256 original px)."""
    real = _real_images_with_boxes(nih_boxes)
    for name, box in zip(real.image_ids, real.xywh, strict=True):
        original, _ = nih_layout.decode_image(str(NIH_IMAGES / name), 1024)
        image = np.asarray(Image.fromarray(original).resize(size, Image.Resampling.BILINEAR))
        box = box * np.array([size[0], size[1]] * 2) / 1024
        x, y = np.meshgrid(np.arange(size[0]) + 0.5, np.arange(size[1]) + 0.5)
        inside = (x > box[0]) & (x < box[0] + box[2]) & (y > box[1]) & (y < box[1] + box[3])
        Image.fromarray(np.where(inside, 255, image // 4).astype(np.uint8)).save(tmp_path / name)
        heat = _eval_input(tmp_path / name)
        found = loc.heatmap_boxes(heat[None], [name], ["Mass"], original_sizes=size,
                                  resolution=RESOLUTION, crop=CROP)
        expected = loc.clip_boxes(box, loc.field_of_view(size, RESOLUTION, CROP))
        assert len(found) == 1, name
        error = np.abs(_edges(found.xywh[0]) - _edges(expected))
        assert (error <= np.array([size[0], size[1]] * 2) / RESOLUTION).all(), (name, error)


# ---------------------------------------------------------------------------------------------
# The heatmap rule.
# ---------------------------------------------------------------------------------------------


def test_each_8_connected_component_above_half_max_becomes_one_box_in_crop_pixels():
    heat = np.zeros((2, 8, 8))
    heat[0, 1:3, 1:4] = 1.0  # a 2x3 block ...
    heat[0, 3, 4] = 0.6  # ... joined diagonally: same component
    heat[0, 6, 6] = 0.8  # a separate speck
    heat[0, 5, 0] = 0.4  # below half the max: ignored
    heat[1] = 0.3  # a constant map: nothing stands out, no box
    index, boxes, peaks = loc.boxes_from_heatmaps(heat, 224)
    assert index.tolist() == [0, 0]
    np.testing.assert_allclose(boxes, [[28, 28, 4 * 28, 3 * 28], [6 * 28, 6 * 28, 28, 28]])
    np.testing.assert_allclose(peaks, [1.0, 0.8])
    _, top, _ = loc.boxes_from_heatmaps(heat, 224, max_boxes=1)
    np.testing.assert_allclose(top, boxes[:1])
    _, strict, _ = loc.boxes_from_heatmaps(heat, 224, threshold=0.9)
    np.testing.assert_allclose(strict, [[28, 28, 84, 56]])


def test_upsampled_map_gives_a_box_around_the_hot_cell_centre():
    heat = np.zeros((1, 7, 7))
    heat[0, 2, 4] = 1.0  # cell (row 2, col 4) covers crop x 128..160, y 64..96
    _, boxes, _ = loc.boxes_from_heatmaps(heat, 224, upsample=224)
    (x, y, w, h), = boxes
    assert x + w / 2 == pytest.approx(144, abs=1) and y + h / 2 == pytest.approx(80, abs=1)
    assert 16 <= w <= 48 and 16 <= h <= 48


def _bilinear_weights(n_in, n_out):
    """(n_out, n_in) half-pixel bilinear weights, edges held (what jax.image.resize does)."""
    c = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    i0 = np.floor(c).astype(int)
    weights = np.zeros((n_out, n_in))
    np.add.at(weights, (np.arange(n_out), i0), 1 - (c - i0))
    np.add.at(weights, (np.arange(n_out), np.minimum(i0 + 1, n_in - 1)), c - i0)
    return weights


def _rule_by_definition(heat, crop, upsample=None, threshold=0.5):
    """The half-maximum rule written out in float64 for one map: resize, keep
    ``heat - min >= threshold * (max - min)``, one box per 8-connected component. With small
    integer maps, a power-of-two zoom and threshold 0.5 or 0.25 every step is exact."""
    heat = np.asarray(heat, np.float64)
    if upsample:
        heat = _bilinear_weights(heat.shape[0], upsample) @ heat @ _bilinear_weights(
            heat.shape[1], upsample).T
    lo, hi = heat.min(), heat.max()
    if hi == lo:
        return np.zeros((0, 4))
    components, _ = ndimage.label(heat - lo >= threshold * (hi - lo), np.ones((3, 3)))
    cell = np.array([crop / heat.shape[1], crop / heat.shape[0]] * 2)
    boxes = [[s[1].start, s[0].start, s[1].stop - s[1].start, s[0].stop - s[0].start]
             for s in ndimage.find_objects(components)]
    return np.array(boxes, np.float64) * cell


def _box_set(boxes):
    return sorted(map(tuple, np.asarray(boxes).tolist()))


@pytest.mark.parametrize("heat, upsample, threshold", [
    ([[2, 1, 1], [0, 0, 0], [0, 0, 0]], 96, 0.5),  # the plateau sits on half the maximum
    ([[2, 1, 1], [0, 0, 0], [0, 0, 0]], None, 0.5),
    ([[0, 1, 1, 0], [0, 1, 2, 0], [1, 1, 0, 0], [0, 0, 0, 2]], 64, 0.5),
    ([[0, 1, 1, 0], [0, 1, 2, 0], [1, 1, 0, 0], [0, 0, 0, 2]], 128, 0.5),
    ([[4, 1, 1, 1], [1, 0, 0, 1], [1, 0, 0, 1], [1, 1, 1, 0]], 32, 0.25),
    ([[1001, 1002, 1002], [1000, 1002, 1000], [1000, 1000, 1004]], 48, 0.5),  # an offset
    ([[3, 3, 0, 0, 5, 0], [0, 3, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [6, 6, 0, 0, 0, 3],
      [0, 0, 0, 0, 3, 3], [0, 0, 0, 0, 0, 0]], 96, 0.5),
])
def test_heatmap_rule_matches_its_definition_on_plateaus_at_the_threshold(heat, upsample,
                                                                         threshold):
    heat = np.asarray(heat, np.float32)
    _, boxes, _ = loc.boxes_from_heatmaps(heat[None], 96, upsample=upsample,
                                          threshold=threshold)
    assert _box_set(boxes) == _box_set(_rule_by_definition(heat, 96, upsample, threshold))


def test_heatmap_rule_matches_its_definition_on_random_integer_maps():
    rng = np.random.default_rng(4)
    maps = rng.integers(0, 5, (40, 4, 4)).astype(np.float32)  # many values on half the max
    index, boxes, _ = loc.boxes_from_heatmaps(maps, 64, upsample=64)
    for i, heat in enumerate(maps):
        assert _box_set(boxes[index == i]) == _box_set(_rule_by_definition(heat, 64, 64)), i


def test_chunked_maps_give_the_boxes_of_maps_taken_one_by_one():
    rng = np.random.default_rng(1)
    heat = rng.random((300, 6, 6)) ** 4  # more maps than one jitted chunk
    index, boxes, _ = loc.boxes_from_heatmaps(heat, 96)
    for i in (0, 137, 299):
        _, alone, _ = loc.boxes_from_heatmaps(heat[i:i + 1], 96)
        np.testing.assert_allclose(boxes[index == i], alone)


def test_heatmap_with_nan_is_a_one_line_error():
    with pytest.raises(loc.BoxError, match="finite"):
        loc.boxes_from_heatmaps(np.full((1, 4, 4), np.nan), 224)


# ---------------------------------------------------------------------------------------------
# Scores.
# ---------------------------------------------------------------------------------------------


def test_iou_matches_torchvision_and_iobb_divides_by_the_predicted_area():
    rng = np.random.default_rng(2)
    a, b = rng.uniform(0, 50, (100, 4)), rng.uniform(0, 50, (100, 4))
    expected = torchvision.ops.box_iou(torch.tensor(_edges(a)), torch.tensor(_edges(b)))
    np.testing.assert_allclose(loc.box_iou(a, b), np.diag(expected.numpy()), rtol=1e-6)
    assert loc.box_iou([0, 0, 10, 10], [5, 0, 10, 10]) == pytest.approx(1 / 3)
    assert loc.box_iobb([0, 0, 10, 10], [5, 5, 2, 2]) == 1.0  # wholly inside the truth
    assert loc.box_iobb([0, 0, 10, 10], [5, 0, 10, 10]) == pytest.approx(0.5)


def test_accuracy_and_false_positives_per_image_follow_wang_et_al():
    truth = loc.Boxes.create(["a", "a", "b"], ["Mass", "Nodule", "Mass"],
                             [[0, 0, 10, 10], [50, 50, 10, 10], [0, 0, 20, 20]])
    predicted = loc.Boxes.create(
        ["a", "a", "a", "b"], ["Mass", "Mass", "Nodule", "Mass"],
        [[0, 0, 10, 20],  # a/Mass: IoU 0.5 exactly (not > 0.5), IoBB 0.5
         [80, 80, 5, 5],  # a/Mass: elsewhere, a false positive at every T
         [0, 0, 5, 5],  # a/Nodule: wrong place
         [5, 5, 5, 5]])  # b/Mass: inside the truth: IoU 1/16, IoBB 1
    scores = loc.localization_scores(truth, predicted)
    assert scores["thresholds"] == [0.1, 0.25, 0.5, 0.75, 0.9]
    mass, nodule = scores["per_class"]["Mass"], scores["per_class"]["Nodule"]
    assert mass["acc_iou"] == [0.5, 0.5, 0.0, 0.0, 0.0]  # a at T<0.5; b (1/16) never
    assert mass["acc_iobb"] == [1.0, 1.0, 0.5, 0.5, 0.5]
    assert mass["fp_per_image_iou"] == [1.0, 1.0, 1.5, 1.5, 1.5]  # over 2 Mass images
    assert mass["fp_per_image_iobb"] == [0.5, 0.5, 1.0, 1.0, 1.0]
    assert nodule["acc_iou"] == [0.0] * 5 and nodule["fp_per_image_iou"] == [1.0] * 5
    overall = scores["overall"]
    assert overall["boxes"] == 3 and overall["images"] == 2
    assert overall["acc_iobb"] == pytest.approx([2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3])
    assert overall["fp_per_image_iou"] == [1.5, 1.5, 2.0, 2.0, 2.0]  # 4 boxes / 2 images
    assert scores["mean_over_classes"]["acc_iobb"] == pytest.approx([0.5, 0.5, 0.25, 0.25,
                                                                     0.25])


def test_per_box_and_per_image_readings_differ_where_an_image_has_two_boxes_of_a_class():
    """Image a has two Mass boxes and one predicted box on the first; image b one Mass box,
    missed. Per box: 1 of 3 boxes found; per image: 1 of 2 (image, class) pairs."""
    truth = loc.Boxes.create(["a", "a", "b", "b"], ["Mass", "Mass", "Mass", "Nodule"],
                             [[0, 0, 10, 10], [50, 50, 10, 10], [0, 0, 10, 10], [0, 0, 8, 8]])
    predicted = loc.Boxes.create(["a", "b", "b"], ["Mass", "Mass", "Nodule"],
                                 [[0, 0, 10, 10], [80, 80, 5, 5], [0, 0, 8, 8]])
    by_box = loc.localization_scores(truth, predicted)
    by_image = loc.localization_scores(truth, predicted, per="image")
    assert (by_box["accuracy_per"], by_image["accuracy_per"]) == ("box", "image")
    assert by_box["per_class"]["Mass"]["acc_iou"] == [1 / 3] * 5
    assert by_image["per_class"]["Mass"]["acc_iou"] == [1 / 2] * 5
    assert by_box["overall"]["acc_iobb"] == [2 / 4] * 5  # a's first Mass box and b's Nodule
    assert by_image["overall"]["acc_iobb"] == [2 / 3] * 5  # a/Mass and b/Nodule of 3 pairs
    for scores in (by_box, by_image):  # the counts and the false positives are the same
        assert scores["overall"]["boxes"] == 4 and scores["overall"]["pairs"] == 3
        assert scores["per_class"]["Mass"]["pairs"] == 2
        assert scores["per_class"]["Mass"]["fp_per_image_iou"] == [0.5] * 5
    chance = loc.random_baseline_scores(truth, predicted, [0, 0, 100, 100], draws=2,
                                        per="image")
    assert chance["accuracy_per"] == "image" and chance["overall"]["pairs"] == 3
    with pytest.raises(loc.BoxError, match="per='boxes': expected one of box, image"):
        loc.localization_scores(truth, predicted, per="boxes")


def _scored_result(truth, predicted, per):
    """A localizer result around one method's scores, as ``localizer.localize`` builds it."""
    return {"split": "test", "boxes_file": "boxes.csv", "boxes": len(truth),
            "images": len(set(truth.image_ids)),
            "pairs": len(set(zip(truth.image_ids, truth.labels, strict=True))),
            "classes": sorted({labels_lib.CLASSES[c] for c in truth.labels}),
            "frame": [1024, 1024],
            "resolution": 256, "crop": 224, "field_of_view": [64, 64, 896, 896],
            "thresholds": list(loc.T_LEVELS), "accuracy_per": per, "random_draws": 2,
            "rule": {"keep": 0.5}, "primary": "gradcam",
            "methods": {"gradcam": {
                "title": "Grad-CAM", "predicted_boxes": len(predicted), "flat_maps": 0,
                "scores": loc.localization_scores(truth, predicted, per=per),
                "random_baseline": loc.random_baseline_scores(
                    truth, predicted, [0, 0, 100, 100], draws=2, per=per)}}}


def test_reading_is_chosen_by_config_and_flag_and_named_in_the_report():
    from cxrjax import config_checks, localize, recipe
    from cxrjax.evaluation import localization as localizer

    config = recipe.base_config()
    assert config.eval.localization_per == "box"
    config.eval.localization_per = "image"
    localizer.SECTION.check(config.eval, config.model)
    config.eval.localization_per = "pair"
    with pytest.raises(config_checks.ConfigError,
                       match="eval.localization_per='pair': expected one of box, image"):
        localizer.SECTION.check(config.eval, config.model)
    parser = localize.build_parser()
    assert parser.parse_args(["--workdir", "w"]).per is None  # the run's field decides
    assert parser.parse_args(["--workdir", "w", "--per", "image"]).per == "image"
    truth = loc.Boxes.create(["a", "a", "b"], ["Mass", "Mass", "Nodule"],
                             [[0, 0, 10, 10], [50, 50, 10, 10], [0, 0, 8, 8]])
    predicted = loc.Boxes.create(["a"], ["Mass"], [[0, 0, 10, 10]])
    by_box = localizer.report_section(_scored_result(truth, predicted, "box"))
    by_image = localizer.report_section(_scored_result(truth, predicted, "image"))
    assert "finds **0.333 / 0.333 / 0.333** of the boxes" in by_box
    assert "| **all boxes** | 3 |" in by_box and "counts twice" in by_box
    assert "finds **0.500 / 0.500 / 0.500** of the (image, class) pairs" in by_image
    assert "| **all pairs** | 2 |" in by_image and "| Mass | 1 |" in by_image


def test_one_box_per_image_and_class_reads_the_same_both_ways(nih_boxes):
    view = loc.field_of_view((1024, 1024), RESOLUTION, CROP)
    moved = loc.random_boxes(nih_boxes, view, seed=1)
    by_box = loc.localization_scores(nih_boxes, moved)
    by_image = loc.localization_scores(nih_boxes, moved, per="image")
    assert by_box["per_class"] == by_image["per_class"]  # NIH: never two boxes of a class


def test_prediction_on_an_image_without_truth_is_a_one_line_error():
    truth = loc.Boxes.create(["a"], ["Mass"], [[0, 0, 10, 10]])
    predicted = loc.Boxes.create(["zz.png"], ["Mass"], [[0, 0, 10, 10]])
    with pytest.raises(loc.BoxError, match="no ground-truth box, e.g. zz.png"):
        loc.localization_scores(truth, predicted)


def test_random_boxes_keep_sizes_stay_in_view_and_lose_to_the_truth_itself(nih_boxes):
    view = loc.field_of_view((1024, 1024), RESOLUTION, CROP)
    moved = loc.random_boxes(nih_boxes, view, seed=3)
    np.testing.assert_allclose(moved.xywh[:, 2:], np.minimum(nih_boxes.xywh[:, 2:], 896))
    edges = _edges(moved.xywh)
    assert (edges[:, :2] >= 64).all() and (edges[:, 2:] <= 960 + 1e-9).all()
    np.testing.assert_array_equal(loc.random_boxes(nih_boxes, view, seed=3).xywh, moved.xywh)
    chance = loc.random_baseline_scores(nih_boxes, nih_boxes, view, draws=3)
    perfect = loc.localization_scores(nih_boxes, nih_boxes)
    assert perfect["overall"]["acc_iou"] == [1.0] * 5
    assert chance["overall"]["acc_iou"][2] < 0.3  # T(IoU) = 0.5
    assert chance["overall"]["boxes"] == 984 and isinstance(chance["overall"]["boxes"], int)

"""Box localization of a trained run: does the heatmap of a finding point at its box?

For every image of a split that has ground-truth boxes (NIH's ``BBox_List_2017.csv`` format,
1024² frame), the heatmap of each boxed class is computed in jitted batches
(``cxrjax.evaluation.heatmaps``), turned into boxes by ``boxes``' rule (map bilinearly resized
to the crop, min-max normalised, pixels >= half way kept, one box per 8-connected component),
mapped back to the 1024² frame through the prepare resize and the centre crop, and scored as
Wang et al. (CVPR 2017): accuracy at T(IoU) and T(IoBB) and false-positive boxes per image,
per class and overall, beside the same boxes placed at random in the field of view (chance,
measured in the same run). Outputs: a JSON-ready dict, markdown tables, a PNG grid.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from cxrjax.data import labels as labels_lib
from cxrjax.data.crop import centre_crop
from cxrjax.evaluation import boxes as loc
from cxrjax.evaluation import heatmaps
from cxrjax.evaluation.section import Section, figure_link, nih_classes, run_classes
from cxrjax.io import fileio, run_layout

SPLITS = ("test", "val", "train", "all")
PICTURE = f"{run_layout.LOCALIZATION}.png"  # the picture grid, beside localization.json
MapFn = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]


def default_boxes_path(config: Any, workdir: str) -> str:
    """The boxes a run is scored on: its data folder's own ``BBox_List_2017.csv`` (the NIH
    download's, or the one the synthetic set draws), else the NIH list shipped in the package."""
    if config.data.source == "synthetic":
        from cxrjax.data import pipeline  # the data stack: only for a run's own set

        manual_dir = pipeline.ensure_prepared(config.data, workdir).manual_dir
    else:
        manual_dir = config.data.get("manual_dir") or ""
    own = fileio.join(fileio.expand(manual_dir), labels_lib.BBOX_LIST_NAME) if manual_dir else ""
    if config.data.source == "synthetic" or (own and fileio.exists(own)):
        return own
    return labels_lib.resource_path("BBox_List_2017.csv.gz")


def boxes_in_split(boxes: loc.Boxes, datasets: Any, split: str
                   ) -> tuple[loc.Boxes, dict[str, int]]:
    """(the boxes on images of ``split`` ("all": the whole dataset), image -> record index);
    a one-line BoxError when none of the boxed images is there."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    names = datasets.records.image_ids
    rows = (np.arange(len(names)) if split == "all" else datasets.split_rows[split])
    where = {names[r]: int(r) for r in rows}
    keep = np.array([n in where for n in boxes.image_ids], bool)
    if not keep.any():
        anywhere = len(set(boxes.image_ids) & set(names))
        hint = (f"; the dataset holds {anywhere} of them in other splits (try --split all)"
                if anywhere else "")
        raise loc.BoxError(f"none of the {len(np.unique(boxes.image_ids))} boxed images is in "
                           f"the run's {split} split{hint}")
    return boxes.select(keep), where


def model_map_fn(model: Any, fusion: Sequence[str], variables: dict, mesh: Any,
                 methods: Sequence[str], batch_size: int) -> tuple[MapFn, int]:
    """(a MapFn over the model's jitted heatmaps, its fixed batch size)."""
    fn = heatmaps.make_heatmap_fn(model, fusion, mesh, methods)
    size = heatmaps.batch_size_for(batch_size, mesh)

    def run(images: np.ndarray, classes: np.ndarray) -> dict[str, np.ndarray]:
        out = fn(variables, heatmaps.global_batch(images, mesh),
                 heatmaps.global_batch(classes.astype(np.int32), mesh))
        return {k: np.asarray(v) for k, v in jax.device_get(out).items()}

    return run, size


def pair_maps(map_fn: MapFn, batch_size: int, records: Any, rows: np.ndarray,
              classes: np.ndarray, crop: int) -> dict[str, np.ndarray]:
    """{method: (P, h, w)} for P (record, class) pairs, in padded batches of one shape."""
    out: dict[str, list[np.ndarray]] = {}
    for lo in range(0, len(rows), batch_size):
        part = slice(lo, lo + batch_size)
        images = np.zeros((batch_size, crop, crop, 1), np.uint8)
        images[:len(rows[part])] = [centre_crop(records[int(r)][0], crop) for r in rows[part]]
        wanted = np.zeros(batch_size, np.int32)
        wanted[:len(rows[part])] = classes[part]
        for method, maps in map_fn(images, wanted).items():
            out.setdefault(method, []).append(maps[:len(rows[part])])
    return {m: np.concatenate(v) for m, v in out.items()}


@dataclasses.dataclass(frozen=True)
class Localized:
    """What a localization pass leaves: the numbers, and what the picture grid needs."""

    result: dict  # JSON-ready (see ``localize``)
    truth: loc.Boxes  # ground truth on the split's images (1024² frame)
    pair_ids: np.ndarray  # (P,) image of each (image, class) pair
    pair_labels: np.ndarray  # (P,) class index
    pair_rows: np.ndarray  # (P,) record index
    maps: dict[str, np.ndarray]  # method -> (P, h, w) raw heatmaps
    predicted: dict[str, loc.Boxes]  # method -> predicted boxes (1024² frame)


def localize(map_fn: MapFn, batch_size: int, datasets: Any, boxes: loc.Boxes, split: str, *,
             crop: int, boxes_file: str = "", seed: int = 0, draws: int = 20,
             threshold: float = 0.5, primary: str | None = None, per: str = "box"
             ) -> Localized:
    """Scores every method ``map_fn`` returns on the boxed images of ``split``.

    ``result`` holds, per method, ``localization_scores`` (per class, overall, mean over
    classes) and ``random_baseline`` (the same boxes at uniform random places in the field of
    view, averaged over ``draws`` seeded draws), plus what was scored and how. ``primary``:
    the method the tables and the picture show first (default: Grad-CAM when present).
    ``per``: accuracy counts ground-truth boxes ("box") or (image, class) pairs ("image").
    """
    if per not in loc.ACCURACY_PER:
        raise loc.BoxError(f"per={per!r}: expected one of {', '.join(loc.ACCURACY_PER)}")
    truth, where = boxes_in_split(boxes, datasets, split)
    keys = np.unique(np.rec.fromarrays([truth.image_ids, truth.labels]))
    pair_ids, pair_labels = np.asarray(keys.f0, str), np.asarray(keys.f1, np.int64)
    pair_rows = np.array([where[n] for n in pair_ids], np.int64)
    resolution = int(datasets.records[int(pair_rows[0])][0].shape[0])
    maps = pair_maps(map_fn, batch_size, datasets.records, pair_rows, pair_labels, crop)
    order = list(heatmaps.STREAMS)  # Grad-CAM first: the primary method when present
    maps = dict(sorted(maps.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order
                                                     else len(order), kv[0])))

    view = loc.field_of_view(labels_lib.BOX_FRAME, resolution, crop)
    methods, predicted = {}, {}
    for method, m in maps.items():
        found = loc.heatmap_boxes(m, pair_ids, pair_labels, original_sizes=labels_lib.BOX_FRAME,
                                  resolution=resolution, crop=crop, threshold=threshold,
                                  upsample=crop)
        predicted[method] = found
        flat = int((m.max(axis=(1, 2)) == m.min(axis=(1, 2))).sum())
        methods[method] = {
            "title": heatmaps.TITLES.get(method, method), "predicted_boxes": len(found),
            "flat_maps": flat,  # pairs whose map is constant (a Grad-CAM all ReLU'd): no box
            "scores": loc.localization_scores(truth, found, per=per),
            "random_baseline": loc.random_baseline_scores(truth, found, view, draws=draws,
                                                          seed=seed, per=per)}
    result = {
        "split": split, "boxes_file": boxes_file, "boxes": len(truth),
        "images": int(len(np.unique(truth.image_ids))), "pairs": int(len(pair_ids)),
        "classes": sorted({labels_lib.CLASSES[c] for c in truth.labels},
                          key=labels_lib.CLASSES.index),
        "frame": list(labels_lib.BOX_FRAME), "resolution": resolution, "crop": crop,
        "field_of_view": view.tolist(), "thresholds": list(loc.T_LEVELS), "accuracy_per": per,
        "rule": {"map": f"bilinear to {crop}x{crop}, min-max normalised", "keep": threshold,
                 "components": "8-connected, one box each"},
        "random_draws": draws, "primary": primary if primary in maps else next(iter(maps)),
        "methods": methods}
    return Localized(result, truth, pair_ids, pair_labels, pair_rows, maps, predicted)


# ---------------------------------------------------------------------------------------------
# Tables (markdown: the report and the CLI print the same).
# ---------------------------------------------------------------------------------------------


def _cells(values: Sequence[float]) -> list[str]:
    return [f"{v:.3f}" if v is not None and np.isfinite(v) else "n/a" for v in values]


def markdown_tables(result: Mapping, method: str | None = None) -> str:
    """Accuracy at T(IoBB) and T(IoU) and FP boxes per image, per class and overall, for one
    method (default: the primary), with the random-box rows; then all methods overall."""
    method = method or result["primary"]
    block = result["methods"][method]
    scores, chance = block["scores"], block["random_baseline"]
    levels = [f"{t:g}" for t in result["thresholds"]]
    per_image = result.get("accuracy_per", "box") == "image"
    unit = "pairs" if per_image else "boxes"
    head = (f"| Finding | {unit} | " + " | ".join(f"IoBB {t}" for t in levels) + " | "
            + " | ".join(f"IoU {t}" for t in levels) + " |")
    rule = "|---|---:|" + "---:|" * (2 * len(levels))
    acc, fp = [head, rule], [head.replace(f"| {unit} |", "| images |"), rule]
    rows = [(name, s, None) for name, s in scores["per_class"].items()]
    rows += [(f"**all {unit}**", scores["overall"], None),
             ("*random boxes, same sizes*", chance["overall"], True)]
    for name, s, _ in rows:
        acc.append(f"| {name} | {s[unit]} | " + " | ".join(_cells(s["acc_iobb"])) + " | "
                   + " | ".join(_cells(s["acc_iou"])) + " |")
        fp.append(f"| {name} | {s['images']} | " + " | ".join(_cells(s["fp_per_image_iobb"]))
                  + " | " + " | ".join(_cells(s["fp_per_image_iou"])) + " |")
    compare = ["| Heatmap | predicted boxes | flat maps | "
               + " | ".join(f"IoBB {t}" for t in levels) + " | "
               + " | ".join(f"IoU {t}" for t in levels) + " |",
               "|---|---:|---:|" + "---:|" * (2 * len(levels))]
    for b in result["methods"].values():
        counts = f"{b['predicted_boxes']} | {b.get('flat_maps', 'n/a')} of {result['pairs']}"
        for title, s in ((b["title"], b["scores"]["overall"]),
                         ("  random, same sizes", b["random_baseline"]["overall"])):
            compare.append(f"| {title} | {counts if 'random' not in title else ' | '} | "
                           + " | ".join(_cells(s["acc_iobb"])) + " | "
                           + " | ".join(_cells(s["acc_iou"])) + " |")
    counted = ("(image, class) pairs with a ground-truth box hit" if per_image
               else "ground-truth boxes hit")
    return "\n".join([f"Accuracy (share of {counted}), {block['title']}:", "",
                      *acc, "", "False-positive boxes per image (a predicted box that reaches "
                      "no ground-truth box of its image and class beyond T):", "", *fp, "",
                      f"Every heatmap, all {unit} (a flat map, e.g. a Grad-CAM that the ReLU "
                      "zeroes, gives no box):", "", *compare])


def _at(scores: Mapping, shown: Sequence[int]) -> str:
    return " / ".join(f"{scores['acc_iobb'][i]:.3f}" for i in shown)


def report_section(result: Mapping | None, picture: str | None = None,
                   heading: str = "##") -> str:
    """The report's localization section (markdown); says why when there is no result."""
    lines = [f"{heading} Localization: do the heatmaps point at the boxes?", ""]
    if not result or "methods" not in result:
        why = (result or {}).get("skipped", "not run")
        return "\n".join(lines + [f"Not scored: {why}.", ""])
    primary = result["methods"][result["primary"]]
    overall, chance = primary["scores"]["overall"], primary["random_baseline"]["overall"]
    shown = [i for i, t in enumerate(result["thresholds"]) if t <= 0.5] or [0]
    levels = " / ".join(f"{result['thresholds'][i]:g}" for i in shown)
    if result.get("accuracy_per", "box") == "image":
        counted, reading = "(image, class) pairs", (
            "Accuracy counts each (image, class) pair once, found when any of its boxes is "
            "(`eval.localization_per = \"image\"`).")
    else:
        counted, reading = "boxes", (
            "Accuracy counts ground-truth boxes: an image with two boxes of one class counts "
            "twice (`eval.localization_per = \"image\"` counts it once).")
    lines += [
        f"{result['boxes']} ground-truth boxes on {result['images']} images of the "
        f"{result['split']} split ({', '.join(result['classes'])}), from "
        f"`{os.path.basename(result['boxes_file']) or 'boxes'}`. Per (image, class) pair the "
        f"class's heatmap is resized to the {result['crop']}² crop, min-max normalised and "
        f"kept where >= {result['rule']['keep']:g}; each 8-connected component is one box, "
        f"mapped back to the {result['frame'][0]}² frame through the resize to "
        f"{result['resolution']}² and the centre crop (the crop sees "
        f"{result['field_of_view'][2]:.0f}² of it). Scored as Wang et al. (CVPR 2017): a box "
        "is found at T when a predicted box of its image and class has IoU (or IoBB = "
        f"|truth ∩ predicted| / |predicted|) > T. {reading} Chance: the same predicted boxes "
        f"placed uniformly at random in the field of view ({result['random_draws']} draws).",
        "", f"At T(IoBB) = {levels}, {primary['title']} finds **{_at(overall, shown)}** of the "
        f"{counted}; the same boxes at random places {_at(chance, shown)}.", "",
        markdown_tables(result), ""]
    if picture:
        lines += [f"![Localization examples]({picture})", "",
                  "Green: ground-truth box; red: predicted boxes; the heatmap over the region "
                  "the centre crop shows (dotted).", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The picture grid.
# ---------------------------------------------------------------------------------------------


def write_outputs(localized: Localized, datasets: Any, out_dir: str,
                  json_path: str | None = None, count: int = 8, figure: bool = True
                  ) -> dict[str, str]:
    """``out_dir``/localization.json (or ``json_path``), localization.md and (``figure``)
    localization.png; returns their paths."""
    from cxrjax.evaluation.prediction_files import write_json  # NaN -> null, parent folders made

    fileio.makedirs(out_dir)
    stem = fileio.join(out_dir, run_layout.LOCALIZATION)
    paths = {"json": json_path or f"{stem}.json", "md": f"{stem}.md",
             **({"png": f"{stem}.png"} if figure else {})}
    if figure:
        from cxrjax.evaluation import localization_plot  # matplotlib: only when drawn

        localization_plot.draw(paths["png"], localized, datasets, count=count)
    write_json(localized.result, paths["json"])
    fileio.write_text(paths["md"], report_section(localized.result, PICTURE if figure else None,
                                                  "#"))
    return paths


# ---------------------------------------------------------------------------------------------
# The evaluation section: eval.localization, eval.localization_heatmap -> eval/localization.*
# ---------------------------------------------------------------------------------------------


def _check_fields(e: Any, model: Any) -> None:
    from cxrjax.config_checks import ConfigError

    heatmap = e.localization_heatmap
    if heatmap not in heatmaps.STREAMS:
        raise ConfigError(f"eval.localization_heatmap={heatmap!r}: expected one of "
                          f"{', '.join(heatmaps.STREAMS)}")
    if heatmap in ("cam_a", "cam_b") and model.get(f"head_{heatmap[-1]}") is None:
        raise ConfigError(f"eval.localization_heatmap={heatmap!r} needs model.head_"
                          f"{heatmap[-1]}, which this model does not have")
    if e.localization_per not in loc.ACCURACY_PER:
        raise ConfigError(f"eval.localization_per={e.localization_per!r}: expected one of "
                          f"{', '.join(loc.ACCURACY_PER)}")


def _compute(inputs: Any) -> dict:
    """The test split's boxes scored with every heatmap the model offers (files on process
    0), or why not: the run's data has no boxes file, or none of its boxes is in the split."""
    if not nih_classes(inputs.config):
        return {"skipped": "the boxes are NIH's, scored on NIH's 14 classes in the paper's "
                           f"order; this run's classes are {', '.join(run_classes(inputs.config))}"}
    path = default_boxes_path(inputs.config, inputs.workdir)
    if not fileio.exists(path):
        return {"skipped": f"the run's data has no boxes file ({path})"}
    try:
        localized = inputs.evaluator.localize(
            inputs.variables, loc.read_boxes(path), "test", boxes_file=path,
            primary=inputs.config.eval.localization_heatmap,
            per=inputs.config.eval.localization_per)
    except loc.BoxError as e:
        logging.getLogger("cxrjax").warning("localization not scored: %s", e)
        return {"skipped": str(e)}
    drawn = inputs.draws_figures
    localized.result["figure"] = run_layout.eval_link(PICTURE) if drawn else None
    if inputs.write_files:
        write_outputs(localized, inputs.evaluator.datasets, inputs.eval_dir, figure=drawn)
    return localized.result


def _summary(result: Mapping) -> Mapping:
    """test_metrics.json's short form (all of it: eval/localization.json)."""
    if "methods" not in result:
        return result
    best = result["methods"][result["primary"]]
    return {"json": run_layout.eval_link(f"{run_layout.LOCALIZATION}.json"),
            "primary": result["primary"], "thresholds": result["thresholds"],
            "boxes": result["boxes"], "overall": best["scores"]["overall"],
            "random_baseline_overall": best["random_baseline"]["overall"]}


SECTION = Section("localization", ("localization", "localization_heatmap", "localization_per",
                                   "figures"),
                  check=_check_fields, compute=_compute, summary=_summary, switch="localization",
                  report=lambda result: report_section(
                      result, figure_link(result, run_layout.eval_link(PICTURE))))

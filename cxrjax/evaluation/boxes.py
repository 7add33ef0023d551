"""Does the heatmap point at the finding? Box localization scored as Wang et al. (CVPR 2017).

Four pieces, each usable alone:

* **Boxes CSV** (``read_boxes`` / ``write_boxes``, from ``cxrjax.data.labels``): NIH
  ``BBox_List_2017.csv`` format, header ``Image Index,Finding Label,Bbox [x,y,w,h]`` and rows
  ``name,label,x,y,w,h`` in the original image's pixels (x, y = top-left corner). NIH spells
  Infiltration ``Infiltrate``; both are read, and the NIH spelling is written. Every bad
  header, row, class or out-of-image box is a one-line ``BoxError``.
* **Frames** (``original_to_crop`` / ``crop_to_original`` / ``field_of_view``): the model saw
  each image decoded, stretched from (W, H) to ``resolution``² (``prepare.decode_image``), then
  centre-cropped to ``crop``² at offset ``o = (resolution - crop) // 2`` (the eval pipeline).
  In continuous pixel-edge coordinates that is ``x_crop = x * resolution / W - o`` (and
  ``y * resolution / H - o``), exactly invertible. Parts of the image outside the crop were
  never seen; ``field_of_view`` is that seen region in the original frame.
* **The heatmap rule** (``boxes_from_heatmaps``): each map (covering the crop) is optionally
  resized (bilinear) to ``upsample``², min-max normalised to [0, 1]; pixels ``>= threshold``
  (0.5 by default: half way from the map's minimum to its maximum) are kept; each 8-connected
  component is one box (its bounding rectangle, in crop pixels), scored by its peak
  normalised heat. A constant map yields no box. The comparison allows ``TOLERANCE`` of the
  map's range: float32 rounding in the resize puts a plateau that sits exactly on the
  threshold a few ulps either side of it, which would cut it into stripes. The normalisation and
  threshold are jitted over fixed-size chunks; the components are ``scipy.ndimage.label`` over
  a whole chunk at once (a structure that never links two maps), so there is no per-image
  Python loop.
* **Scores** (``localization_scores``): IoU and IoBB = |GT ∩ pred| / |pred|. A ground-truth box
  is localized at T when a predicted box of the same image and class has IoU (or IoBB) > T,
  as Wang et al. define it. Accuracy counts ground-truth boxes by default (``per="box"``: an
  image with two boxes of one class counts twice); Wang et al. leave it open, and NIH's list
  never has two boxes of one class on an image, but the synthetic set does. ``per="image"``
  counts each (image, class) pair once, localized when any of its boxes is. A predicted box
  that reaches no ground-truth box of its image and class beyond T is a false positive; FP
  per image divides by the images holding a ground-truth box (of that class, per class).
  ``random_baseline_scores`` scores boxes of the predicted sizes placed uniformly at random in
  the field of view: the chance level.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from cxrjax.data.crop import centre_crop_offset

# The boxes-file format lives on the data floor; re-exported here as part of this API.
from cxrjax.data.labels import (  # noqa: F401
    CLASSES,
    BoxError,
    Boxes,
    read_boxes,
    write_boxes,
)

T_LEVELS: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
ACCURACY_PER = ("box", "image")  # what accuracy at T counts: ground-truth boxes, or pairs
# A pixel within this share of its map's range below the threshold counts as reaching it. The
# map is scaled to [0, 1] before the float32 resize, whose rounding then stays within ~10 ulps
# (1e-6); 2**-16 (1.5e-5) is well above that and far below any heat difference that matters
# (an 8-bit heatmap's step is 1/255).
TOLERANCE = 2.0 ** -16
_CHUNK = 256  # heatmaps per jitted call (padded, so one compilation per map shape)


# ---------------------------------------------------------------------------------------------
# Frames: original image <-> the model's centre crop.
# ---------------------------------------------------------------------------------------------


def _scales(original_size, resolution: int, crop: int) -> tuple[np.ndarray, float]:
    if not 0 < crop <= resolution:
        raise BoxError(f"crop={crop} must be in [1, resolution={resolution}]")
    size = np.asarray(original_size, np.float64)
    if size.shape[-1:] != (2,) or not (size > 0).all():
        raise BoxError(f"original_size must be positive (width, height) pairs, got {size}")
    scale = np.concatenate([resolution / size, resolution / size], axis=-1)  # x, y, w, h
    return scale, float(centre_crop_offset(resolution, crop))


def original_to_crop(xywh, original_size, resolution: int, crop: int) -> np.ndarray:
    """(K, 4) boxes from the original frame (``original_size`` = (W, H) or (K, 2)) into the
    model's ``crop``² frame; parts outside the crop get coordinates outside [0, crop]."""
    scale, offset = _scales(original_size, resolution, crop)
    out = np.asarray(xywh, np.float64) * scale
    out[..., :2] -= offset
    return out


def crop_to_original(xywh, original_size, resolution: int, crop: int) -> np.ndarray:
    """Inverse of ``original_to_crop``: (K, 4) crop-frame boxes into the original frame."""
    scale, offset = _scales(original_size, resolution, crop)
    out = np.array(xywh, np.float64)
    out[..., :2] += offset
    return out / scale


def field_of_view(original_size, resolution: int, crop: int) -> np.ndarray:
    """The region of the original image that the centre crop shows, as xywh (or (K, 4))."""
    whole = np.broadcast_to(np.array([0.0, 0.0, crop, crop]),
                            np.shape(original_size)[:-1] + (4,))
    return crop_to_original(whole, original_size, resolution, crop)


def clip_boxes(xywh, bounds) -> np.ndarray:
    """Boxes cut to ``bounds`` (xywh, broadcast); a box wholly outside gets zero size."""
    xywh, bounds = np.asarray(xywh, np.float64), np.asarray(bounds, np.float64)
    lo = np.maximum(xywh[..., :2], bounds[..., :2])
    hi = np.minimum(xywh[..., :2] + xywh[..., 2:], bounds[..., :2] + bounds[..., 2:])
    return np.concatenate([lo, np.maximum(hi - lo, 0.0)], axis=-1)


# ---------------------------------------------------------------------------------------------
# The heatmap rule: normalise, threshold, connected components, one box each.
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("size",))
def _normalise_and_threshold(maps: jax.Array, threshold: jax.Array, size: tuple[int, int] | None
                             ) -> tuple[jax.Array, jax.Array]:
    def normalise(m):  # min-max to [0, 1]; a constant map to zeros
        lo = m.min(axis=(1, 2), keepdims=True)
        span = m.max(axis=(1, 2), keepdims=True) - lo
        return jnp.where(span > 0, (m - lo) / jnp.where(span > 0, span, 1.0), 0.0), span > 0

    # Scaled to [0, 1] first: the resize's rounding is then small against the range, whatever
    # the map's offset (bilinear weights sum to 1, so this changes nothing in exact arithmetic).
    norm, varied = normalise(maps.astype(jnp.float32))
    if size is not None and size != maps.shape[1:]:
        norm, varied = normalise(jax.image.resize(norm, (maps.shape[0], *size), "bilinear"))
    return norm, (norm >= threshold - TOLERANCE) & varied


def boxes_from_heatmaps(heatmaps, crop: int, *, threshold: float = 0.5,
                        upsample: int | None = None, max_boxes: int | None = None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(map index (K,), xywh (K, 4) in crop pixels, peak heat (K,)) for (N, h, w) heatmaps
    that each cover the model's ``crop``² input (see the module docstring for the rule).

    ``upsample`` resizes each map to ``upsample``² first (smoother boxes than whole cells);
    ``max_boxes`` keeps each map's hottest components. Boxes come ordered by map, then heat.
    """
    heatmaps = np.asarray(heatmaps)
    if heatmaps.ndim != 3 or 0 in heatmaps.shape or not np.isfinite(heatmaps).all():
        raise BoxError(f"heatmaps must be a finite (N, h, w) array, got shape {heatmaps.shape}")
    if not 0.0 < threshold <= 1.0:
        raise BoxError(f"threshold must be in (0, 1], got {threshold}")
    for name, value in (("upsample", upsample), ("max_boxes", max_boxes)):
        if value is not None and value < 1:
            raise BoxError(f"{name} must be >= 1 (or None), got {value}")
    size = None if upsample is None else (int(upsample), int(upsample))
    h, w = size or heatmaps.shape[1:]
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True  # 8-connected within a map, never across maps
    index, boxes, peaks = [], [], []
    step = min(_CHUNK, 1 << (len(heatmaps) - 1).bit_length())  # few distinct compiled shapes
    for lo in range(0, len(heatmaps), step):
        chunk = heatmaps[lo:lo + step]
        padded = np.zeros((step, *chunk.shape[1:]), np.float32)
        padded[:len(chunk)] = chunk
        norm, mask = jax.device_get(_normalise_and_threshold(padded, np.float32(threshold), size))
        components, count = ndimage.label(mask, structure)
        if count == 0:
            continue
        slices = ndimage.find_objects(components)
        spans = np.array([(s[0].start, s[1].start, s[1].stop, s[2].start, s[2].stop)
                          for s in slices], np.float64)
        index.append(spans[:, 0].astype(np.int64) + lo)
        cells = np.stack([spans[:, 3], spans[:, 1], spans[:, 4] - spans[:, 3],
                          spans[:, 2] - spans[:, 1]], axis=1)  # x, y, w, h in map cells
        boxes.append(cells * np.array([crop / w, crop / h] * 2))
        peak = np.zeros(count + 1, np.float64)
        np.maximum.at(peak, components[mask], norm[mask])  # far faster than ndimage.maximum
        peaks.append(peak[1:])
    if not index:
        return np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0)
    index, boxes, peaks = np.concatenate(index), np.concatenate(boxes), np.concatenate(peaks)
    order = np.lexsort((-peaks, index))
    index, boxes, peaks = index[order], boxes[order], peaks[order]
    if max_boxes is not None:
        first = np.searchsorted(index, index)  # position of each map's first box
        keep = np.arange(len(index)) - first < max_boxes
        index, boxes, peaks = index[keep], boxes[keep], peaks[keep]
    return index, boxes, peaks


def heatmap_boxes(heatmaps, image_ids: Sequence[str], labels: Sequence[int | str], *,
                  original_sizes, resolution: int, crop: int, threshold: float = 0.5,
                  upsample: int | None = None, max_boxes: int | None = None) -> Boxes:
    """Predicted boxes in the original frame from one heatmap per (image, class) pair.

    ``original_sizes`` is one (W, H) for all or (N, 2); the rest as ``boxes_from_heatmaps``.
    """
    heatmaps = np.asarray(heatmaps)
    if not len(image_ids) == len(labels) == len(heatmaps):
        raise BoxError(f"{len(heatmaps)} heatmaps need as many image ids and labels, got "
                       f"{len(image_ids)} and {len(labels)}")
    index, crop_xywh, peaks = boxes_from_heatmaps(heatmaps, crop, threshold=threshold,
                                                  upsample=upsample, max_boxes=max_boxes)
    sizes = np.broadcast_to(np.asarray(original_sizes, np.float64), (len(heatmaps), 2))
    pairs = Boxes.create(image_ids, labels, np.zeros((len(heatmaps), 4)))
    xywh = crop_to_original(crop_xywh, sizes[index], resolution, crop)
    return Boxes(pairs.image_ids[index], pairs.labels[index], xywh, peaks)


# ---------------------------------------------------------------------------------------------
# Scores: IoU, IoBB, accuracy at T, false positives per image; the random-box baseline.
# ---------------------------------------------------------------------------------------------


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.prod(clip_boxes(a, b)[..., 2:], axis=-1)


def box_iou(a, b) -> np.ndarray:
    """Intersection over union of boxes ``a`` and ``b`` (xywh, broadcast) -> (K,)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    inter = _intersection(a, b)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def box_iobb(truth, predicted) -> np.ndarray:
    """|truth ∩ predicted| / |predicted| (Wang et al.'s IoBB) -> (K,); 0 for an empty box."""
    truth, predicted = np.asarray(truth, np.float64), np.asarray(predicted, np.float64)
    area = predicted[..., 2] * predicted[..., 3]
    return np.where(area > 0, _intersection(truth, predicted) / np.where(area > 0, area, 1.0), 0.0)


def _pairs(truth: Boxes, predicted: Boxes) -> tuple[np.ndarray, np.ndarray]:
    """Every (truth box, predicted box) of the same image and class, as two index arrays."""
    names = np.unique(np.concatenate([truth.image_ids, predicted.image_ids]))
    t_key = np.searchsorted(names, truth.image_ids) * len(CLASSES) + truth.labels
    p_key = np.searchsorted(names, predicted.image_ids) * len(CLASSES) + predicted.labels
    order = np.argsort(p_key, kind="stable")
    lo = np.searchsorted(p_key[order], t_key, "left")
    count = np.searchsorted(p_key[order], t_key, "right") - lo
    t_idx = np.repeat(np.arange(len(truth)), count)
    within = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    return t_idx, order[np.repeat(lo, count) + within]


def _block(hit: dict, fp_p: dict, n_images: int, n_boxes: int, n_pairs: int) -> dict:
    """One row of scores: ``hit`` holds a (K, T) bool per measure, K boxes or pairs."""
    return {"boxes": n_boxes, "pairs": n_pairs, "images": n_images,
            **{f"acc_{m}": hit[m].mean(axis=0).tolist() for m in ("iou", "iobb")},
            **{f"fp_per_image_{m}": (fp_p[m].sum(axis=0) / max(n_images, 1)).tolist()
               for m in ("iou", "iobb")}}


def _per_pair(truth: Boxes, hit: dict) -> tuple[np.ndarray, dict]:
    """(class of each (image, class) pair in ``truth``, {measure: (pairs, T) bool}: any of
    the pair's boxes hit)."""
    keys, pair = np.unique(np.rec.fromarrays([truth.image_ids, truth.labels]),
                           return_inverse=True)
    out = {}
    for m, h in hit.items():
        out[m] = np.zeros((len(keys), h.shape[1]), bool)
        np.logical_or.at(out[m], pair.ravel(), h)
    return np.asarray(keys.f1, np.int64), out


def localization_scores(truth: Boxes, predicted: Boxes,
                        thresholds: Sequence[float] = T_LEVELS, *, per: str = "box") -> dict:
    """Accuracy at T(IoU) and T(IoBB) and false-positive boxes per image, per class present in
    ``truth``, over all of it (``overall``) and as the mean of the classes.

    ``per``: what accuracy counts, ground-truth boxes ("box") or (image, class) pairs, each
    localized when any of its boxes is ("image"). Lists follow ``thresholds``. Predictions
    must lie on images that hold a ground-truth box.
    """
    if per not in ACCURACY_PER:
        raise BoxError(f"per={per!r}: expected one of {', '.join(ACCURACY_PER)}")
    stray = np.setdiff1d(predicted.image_ids, truth.image_ids)
    if len(stray):
        raise BoxError(f"{len(stray)} predicted image(s) have no ground-truth box, e.g. "
                       f"{', '.join(stray[:3])}")
    levels = np.asarray(thresholds, np.float64)
    t_idx, p_idx = _pairs(truth, predicted)
    t_box, p_box = truth.xywh[t_idx], predicted.xywh[p_idx]
    hit, fp = {}, {}
    for name, overlap in (("iou", box_iou(t_box, p_box)), ("iobb", box_iobb(t_box, p_box))):
        best_t, best_p = np.zeros(len(truth)), np.zeros(len(predicted))
        np.maximum.at(best_t, t_idx, overlap)
        np.maximum.at(best_p, p_idx, overlap)
        hit[name] = best_t[:, None] > levels
        fp[name] = best_p[:, None] <= levels
    pair_class, pair_hit = _per_pair(truth, hit)
    unit_class, unit_hit = (truth.labels, hit) if per == "box" else (pair_class, pair_hit)
    per_class = {}
    for c in np.unique(truth.labels):
        t_c, p_c = truth.labels == c, predicted.labels == c
        images = len(np.unique(truth.image_ids[t_c]))
        per_class[CLASSES[c]] = _block({m: v[unit_class == c] for m, v in unit_hit.items()},
                                       {m: v[p_c] for m, v in fp.items()}, images,
                                       int(t_c.sum()), int((pair_class == c).sum()))
    mean = {key: np.mean([b[key] for b in per_class.values()], axis=0).tolist()
            for key in ("acc_iou", "acc_iobb", "fp_per_image_iou", "fp_per_image_iobb")}
    return {"thresholds": levels.tolist(), "accuracy_per": per, "per_class": per_class,
            "overall": _block(unit_hit, fp, len(np.unique(truth.image_ids)), len(truth),
                              len(pair_class)),
            "mean_over_classes": mean}


def random_boxes(predicted: Boxes, bounds, *, seed: int = 0) -> Boxes:
    """``predicted``'s boxes, same sizes, moved to uniform random places inside ``bounds``
    (xywh, one for all or (K, 4): e.g. ``field_of_view`` in the original frame)."""
    bounds = np.broadcast_to(np.asarray(bounds, np.float64), predicted.xywh.shape)
    size = np.minimum(predicted.xywh[:, 2:], bounds[:, 2:])
    room = bounds[:, 2:] - size
    corner = bounds[:, :2] + np.random.default_rng(seed).uniform(size=room.shape) * room
    return dataclasses.replace(predicted, xywh=np.concatenate([corner, size], axis=1))


def random_baseline_scores(truth: Boxes, predicted: Boxes, bounds, *, draws: int = 20,
                           seed: int = 0, thresholds: Sequence[float] = T_LEVELS,
                           per: str = "box") -> dict:
    """``localization_scores`` of ``random_boxes``, averaged over ``draws`` seeded draws."""
    if draws < 1:
        raise BoxError(f"draws must be >= 1, got {draws}")
    runs = [localization_scores(truth, random_boxes(predicted, bounds, seed=seed + k),
                                thresholds, per=per) for k in range(draws)]
    return jax.tree.map(lambda *v: v[0] if isinstance(v[0], str) else type(v[0])(np.mean(v)),
                        *runs)

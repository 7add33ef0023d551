"""MedMNIST's ChestMNIST (``chestmnist.npz`` / ``chestmnist_224.npz``) as a data source.

ChestMNIST is ChestX-ray14 resized, on the CheXNet split (78,468 / 11,219 / 22,433), labels in
NIH order. The npz has no image names, so images are named ``chestmnist_{split}_{i:06d}``.
"""

from __future__ import annotations

import os

import numpy as np

from cxrjax.data import labels as labels_lib
from cxrjax.data import pipeline

SPLITS = ("train", "val", "test")


def read_npz(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (images (N, S, S) uint8, labels (N, 14) uint8)}``, every key checked."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ChestMNIST npz not found: {path}")
    try:
        npz = np.load(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable npz: {e}") from None
    out = {}
    with npz:
        for split in SPLITS:
            keys = (f"{split}_images", f"{split}_labels")
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise ValueError(f"{path}: missing {missing}; a MedMNIST npz has "
                                 f"{{train,val,test}}_{{images,labels}}, found {npz.files}")
            images, labels = npz[keys[0]], npz[keys[1]]
            if images.ndim != 3 or images.shape[1] != images.shape[2]:
                raise ValueError(f"{path}: {keys[0]} must be (N, S, S) grayscale, got "
                                 f"{images.shape}")
            if images.dtype != np.uint8:
                raise ValueError(f"{path}: {keys[0]} must be uint8, got {images.dtype}")
            if labels.shape != (len(images), labels_lib.NUM_CLASSES):
                raise ValueError(f"{path}: {keys[1]} must be ({len(images)}, "
                                 f"{labels_lib.NUM_CLASSES}), got {labels.shape}")
            if not np.isin(labels, (0, 1)).all():
                raise ValueError(f"{path}: {keys[1]} must hold only 0/1")
            out[split] = (images, labels.astype(np.uint8))
    sizes = {s: out[s][0].shape[1] for s in SPLITS}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{path}: image sizes differ between splits: {sizes}")
    return out


def load(path: str) -> tuple[pipeline.ArrayRecords, dict[str, list[str]]]:
    """(records over all three splits, split -> image names) for ``create_datasets``."""
    parts = read_npz(path)
    names = {s: [f"chestmnist_{s}_{i:06d}" for i in range(len(parts[s][0]))] for s in SPLITS}
    records = pipeline.ArrayRecords(
        np.concatenate([parts[s][0] for s in SPLITS]),
        np.concatenate([parts[s][1] for s in SPLITS]),
        [n for s in SPLITS for n in names[s]])
    return records, names

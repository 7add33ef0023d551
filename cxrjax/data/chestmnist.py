"""MedMNIST's ChestMNIST (``chestmnist.npz`` / ``chestmnist_224.npz``) as a data source.

ChestMNIST is ChestX-ray14 resized, on the CheXNet split (78,468 / 11,219 / 22,433), labels in
NIH order. The npz has no image names, so images are named ``chestmnist_{split}_{i:06d}``.
"""

from __future__ import annotations

import os
import shutil
import zipfile

import numpy as np

from cxrjax.data import labels as labels_lib

SPLITS = ("train", "val", "test")


def read_npz(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (images (N, S, S) uint8, labels (N, 14) uint8)}``, every key checked."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ChestMNIST npz not found: {path}")
    try:
        npz = np.load(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable npz: {e}") from None
    with npz:
        keys = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]
        missing = [k for k in keys if k not in npz.files]
        if missing:
            raise ValueError(f"{path}: missing {missing}; a MedMNIST npz has "
                             f"{{train,val,test}}_{{images,labels}}, found {npz.files}")
        parts = {s: (npz[f"{s}_images"], npz[f"{s}_labels"]) for s in SPLITS}
    return _checked(parts, path)


def _checked(parts: dict[str, tuple[np.ndarray, np.ndarray]], path: str
             ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    for split, (images, labels) in parts.items():
        if images.ndim != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(f"{path}: {split}_images must be (N, S, S) grayscale, got "
                             f"{images.shape}")
        if images.dtype != np.uint8:
            raise ValueError(f"{path}: {split}_images must be uint8, got {images.dtype}")
        if labels.shape != (len(images), labels_lib.NUM_CLASSES):
            raise ValueError(f"{path}: {split}_labels must be ({len(images)}, "
                             f"{labels_lib.NUM_CLASSES}), got {labels.shape}")
        if not np.isin(np.asarray(labels), (0, 1)).all():
            raise ValueError(f"{path}: {split}_labels must hold only 0/1")
    sizes = {s: parts[s][0].shape[1] for s in SPLITS}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{path}: image sizes differ between splits: {sizes}")
    return parts


class NpzRecords:
    """Record index -> (image, labels) over the three splits, in train, val, test order.

    With ``cache_dir`` the npz members are extracted once to ``.npy`` files and memory-mapped,
    so grain workers share the page cache instead of each receiving a pickled copy (the
    224-px file is 5.6 GB).
    """

    def __init__(self, path: str, cache_dir: str | None = None):
        self.path, self.cache_dir = path, cache_dir
        if cache_dir is None:
            parts = read_npz(path)
        else:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"ChestMNIST npz not found: {path}")
            parts = _checked(_extract(path, cache_dir), path)
        self.image_ids = [f"chestmnist_{s}_{i:06d}" for s in SPLITS
                          for i in range(len(parts[s][0]))]
        self.sizes = {s: len(parts[s][0]) for s in SPLITS}
        self.resolution = parts["train"][0].shape[1]
        self._open(parts)

    def _open(self, parts=None) -> None:
        if parts is None and self.cache_dir is not None:
            parts = _extract(self.path, self.cache_dir)
        elif parts is None:
            parts = read_npz(self.path)
        self._parts = [parts[s] for s in SPLITS]
        self._starts = np.cumsum([0] + [len(p[0]) for p in self._parts])

    def __getstate__(self):
        state = dict(self.__dict__)
        if self.cache_dir is not None:
            del state["_parts"], state["_starts"]  # reopened (memory-mapped) in the worker
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if "_parts" not in state:
            self._open()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        k = int(np.searchsorted(self._starts, int(i), side="right")) - 1
        images, labels = self._parts[k]
        j = int(i) - int(self._starts[k])
        return np.asarray(images[j]), np.asarray(labels[j], np.uint8)


def _extract(path: str, cache_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The npz members as memory-mapped ``.npy`` files under ``cache_dir`` (extracted once)."""
    os.makedirs(cache_dir, exist_ok=True)
    stamp = os.path.join(cache_dir, "source.txt")
    key = f"{os.path.abspath(path)} {os.path.getsize(path)} {os.path.getmtime(path)}"
    if not os.path.exists(stamp) or open(stamp).read() != key:
        try:
            z = zipfile.ZipFile(path)
        except zipfile.BadZipFile as e:
            raise ValueError(f"{path} is not a readable npz: {e}") from None
        names = set(z.namelist())
        missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")
                   if f"{s}_{k}.npy" not in names]
        if missing:
            raise ValueError(f"{path}: missing {missing}; a MedMNIST npz has "
                             f"{{train,val,test}}_{{images,labels}}")
        with z:
            for s in SPLITS:
                for kind in ("images", "labels"):
                    tmp = os.path.join(cache_dir, f"{s}_{kind}.npy.tmp")
                    with z.open(f"{s}_{kind}.npy") as src, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 24)
                    os.replace(tmp, os.path.join(cache_dir, f"{s}_{kind}.npy"))
        with open(stamp, "w") as f:
            f.write(key)
    return {s: tuple(np.load(os.path.join(cache_dir, f"{s}_{kind}.npy"), mmap_mode="r")
                     for kind in ("images", "labels")) for s in SPLITS}


def load(path: str, cache_dir: str | None = None) -> tuple[NpzRecords, dict[str, list[str]]]:
    """(records over all three splits, split -> image names) for ``create_datasets``."""
    records = NpzRecords(path, cache_dir)
    names, start = {}, 0
    for s in SPLITS:
        names[s] = records.image_ids[start:start + records.sizes[s]]
        start += records.sizes[s]
    return records, names

"""Train/val/test of a prepared release, chosen at load time, and a hash of each split's images.

* ``mimic_cxr``: the release's own patient-disjoint split file (``validate`` -> val).
* ``chexpert``: the public ``valid.csv`` images are the test set (the release's test set is
  held out by Stanford); ``train.csv`` is cut by patient into train and val.
* ``padchest``: a seeded patient-level 70/10/20 split of everything.
Seeded cuts use ``splits.patient_split`` (patients ordered by SHA-256 of seed and id, cut by
image count), so a split is identical on every machine. ``split_hash`` names a split's image
list in one string, for a run to record and ``evaluate`` to check.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from cxrjax.data import splits as splits_lib

SPLITS = splits_lib.SPLITS  # ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
CHEXPERT_VAL_SHARE = 0.1  # of train.csv's images, by patient
_MIMIC = {"train": "train", "validate": "val", "test": "test"}


def _int_ids(patient_ids: Sequence[str]) -> np.ndarray:
    """A stable 63-bit integer per patient id (any string), for the seeded patient cut."""
    return np.array([int.from_bytes(hashlib.sha256(str(p).encode()).digest()[:8], "big") >> 1
                     for p in patient_ids], np.int64)


def split_release(release: str, patient_ids: Sequence[str], release_splits: Sequence[str],
                  seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS
                  ) -> dict[str, np.ndarray]:
    """Record indices of train, val and test for a prepared release (its metadata's lists)."""
    n = len(patient_ids)
    if len(release_splits) != n:
        raise ValueError(f"{n} patient ids but {len(release_splits)} split names")
    part = np.full(n, -1, np.int64)
    own = np.asarray(release_splits, dtype=str)
    if release == "mimic_cxr":
        unknown = sorted(set(own.tolist()) - set(_MIMIC))
        if unknown:
            raise ValueError(f"MIMIC split names {unknown}; expected {', '.join(_MIMIC)}")
        for name, ours in _MIMIC.items():
            part[own == name] = SPLITS.index(ours)
    elif release == "chexpert":
        part[own == "valid"] = SPLITS.index("test")
        train = np.flatnonzero(own == "train")
        cut = splits_lib.patient_split(_int_ids([patient_ids[i] for i in train]),
                                       (1 - CHEXPERT_VAL_SHARE, CHEXPERT_VAL_SHARE), seed)
        part[train] = cut  # 0 -> train, 1 -> val
    elif release == "padchest":
        part[:] = splits_lib.patient_split(_int_ids(patient_ids), fractions, seed)
    else:
        raise ValueError(f"unknown release {release!r}; expected chexpert, mimic_cxr, padchest")
    if (part < 0).any():
        raise ValueError(f"{int((part < 0).sum())} record(s) of {release} have a split name "
                         f"other than the release's: {sorted(set(own[part < 0].tolist()))}")
    return {name: np.flatnonzero(part == k) for k, name in enumerate(SPLITS)}


def split_hash(image_ids: Sequence[str]) -> str:
    """SHA-256 (hex) of a split's image ids, sorted and newline-joined: order-free."""
    return hashlib.sha256("\n".join(sorted(image_ids)).encode()).hexdigest()

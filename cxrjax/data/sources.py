"""The prepared releases (CheXpert, MIMIC-CXR-JPG, PadChest and their synthetic sets) as a
pipeline source: records that give a model's labels with a mask, and the release's splits.

A record's label states (canonical space) become the model's ``data.classes`` under the
``data.uncertain`` policy (``label_space.labels_and_mask``): uint8 labels and a uint8 mask,
0 where the label is missing. ``synthetic_<release>`` is the synthetic chests written in that
release's layout (``synthetic.generate_format``), made and prepared once in the workdir, acquired at
``data.synthetic_site``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from cxrjax.data import label_space, release_splits

RELEASES = ("chexpert", "mimic_cxr", "padchest")
SYNTHETIC = tuple(f"synthetic_{r}" for r in RELEASES)
UNCERTAIN_POLICIES = label_space.POLICIES


def release_of(source: str) -> str | None:
    """The release a source reads (``synthetic_chexpert`` -> ``chexpert``); None for others."""
    name = source.removeprefix("synthetic_")
    return name if name in RELEASES else None


class ReleaseRecords:
    """Record index -> (image (R, R) uint8, labels (C,) uint8, mask (C,) uint8) of a prepared
    release, for the classes ``classes`` under the uncertainty ``policy``."""

    masked = True

    def __init__(self, builder: Any, classes: Sequence[str], policy: str, resolution: int):
        from cxrjax.data import builder as nih_builder

        self._source = builder.as_data_source(split=nih_builder.SPLIT)
        meta = builder.info.metadata
        self.image_ids: list[str] = list(meta["image_ids"])
        self.patient_ids: list[str] = list(meta["patient_ids"])
        self.release_splits: list[str] = list(meta["release_splits"])
        self.classes, self.policy = tuple(classes), label_space.check_policy(policy)
        self._picked = label_space.class_indices(self.classes)
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rec = self._source[int(i)]
        labels, mask = label_space.labels_and_mask(rec["label_states"], self.classes, self.policy)
        return rec["image"], labels, mask


def load(release: str, data_cfg: Any, data_dir: str) -> tuple[ReleaseRecords, dict[str, list]]:
    """(records, split -> image ids) of a prepared release as ``data_cfg`` reads it."""
    from cxrjax.data import release_builder

    b = release_builder.load(release, data_dir, int(data_cfg.resolution), tuple(data_cfg.views),
                             data_cfg.labeler)
    records = ReleaseRecords(b, data_cfg.classes, data_cfg.uncertain, int(data_cfg.resolution))
    parts = release_splits.split_release(release, records.patient_ids, records.release_splits,
                                         seed=int(data_cfg.split_seed))
    return records, {s: [records.image_ids[i] for i in rows] for s, rows in parts.items()}


def synthetic_root(data_cfg: Any, base: str) -> str:
    """Where ``synthetic_<release>`` of ``data_cfg`` is made under ``base``."""
    from cxrjax.data import synthetic

    release = release_of(data_cfg.source)
    return os.path.join(base, "synthetic", f"{release}_n{int(data_cfg.synthetic_n)}_s"
                        f"{int(data_cfg.synthetic_size)}_seed{int(data_cfg.synthetic_seed)}_"
                        f"{data_cfg.synthetic_site}_v{synthetic.VERSION}")


def prepare_synthetic(data_cfg: Any, root: str) -> str:
    """Writes (or reuses) the synthetic set in its release's layout and prepares it through
    the real builder; returns the TFDS data_dir."""
    from cxrjax.data import release_builder, synthetic

    release = release_of(data_cfg.source)
    manual, data_dir = os.path.join(root, release), os.path.join(root, "tfds")
    synthetic.generate_format(manual, release, int(data_cfg.synthetic_n),
                              int(data_cfg.synthetic_size), int(data_cfg.synthetic_seed),
                              workers=int(data_cfg.prepare_workers) or None,
                              site=data_cfg.synthetic_site)
    release_builder.build(release, manual, data_dir, resolution=int(data_cfg.resolution),
                          views=tuple(data_cfg.views), labeler=data_cfg.labeler,
                          workers=int(data_cfg.prepare_workers) or None)
    return data_dir


def ensure_prepared(data_cfg: Any, workdir: str) -> str:
    """The TFDS data_dir of the configured release: ``data.data_dir``, checked (a one-line
    FileNotFoundError with the prepare command if absent); for ``synthetic_<release>``, the set
    made and prepared once under the workdir (as ``pipeline.ensure_prepared`` makes
    ``synthetic``: on process 0, or per host in the cache when the workdir is a bucket)."""
    import jax

    from cxrjax.io import fileio, mirror

    if not data_cfg.source.startswith("synthetic_"):
        data_dir = fileio.expand(data_cfg.data_dir)
        check_prepared(data_cfg, data_dir)
        return data_dir
    remote = fileio.is_remote(workdir)
    root = synthetic_root(data_cfg, mirror.cache_root() if remote else workdir)
    if remote or jax.process_index() == 0:
        with mirror.host_lock(root):
            prepare_synthetic(data_cfg, root)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("cxrjax: synthetic release prepared")
    return os.path.join(root, "tfds")


def check_prepared(data_cfg: Any, data_dir: str) -> None:
    """A one-line FileNotFoundError (with the prepare command) unless the release is ready."""
    from cxrjax.data import release_builder

    release_builder.load(data_cfg.source, data_dir, int(data_cfg.resolution),
                         tuple(data_cfg.views), data_cfg.labeler)


def split_hashes(image_ids_of: Any, splits: Sequence[str]) -> dict[str, str]:
    """{split: ``split_hash`` of its image ids}; ``image_ids_of(split)`` lists them."""
    return {s: release_splits.split_hash(image_ids_of(s)) for s in splits}

"""Several sources in one run: ``data.source = "nih+chexpert"``, drawn by grain's mixing.

Each source is read as a run on it alone would read it (its builder, splits and labels in the
model's ``data.classes``; NIH's labels get a mask of ones), and the records are put end to end
(``MixedRecords``). Training draws from the sources' train splits in the proportions of
``data.source_weights`` (``grain.MapDataset.mix``), each source reshuffled on every pass
through it; so global position g of the train stream is a pure function of (seed, g), and the
iterator's state stays ``{"step": k, ...}`` as for one source. An epoch is as many images as
the sources' train splits hold together. Validation and test are the first source's: a mixed
run's numbers mean what they mean for a run on that source, and ``evaluate --dataset`` scores
the others.

Each source reads its prepared data from ``data.data_dirs.<release>`` ("" = ``data.data_dir``;
so does a run on one source); NIH's label table and lists come from ``data.manual_dir``; the
synthetic sources are made in the workdir as for a run on one of them.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np

# What a mixed train iterator adds to its checkpointed state (``Mix.identity``).
STATE_KEYS = ("sources", "source_weights")
# Sources that may be mixed: every source but chestmnist (which has no builder of ours).
MIXABLE = ("nih", "synthetic", "chexpert", "mimic_cxr", "padchest", "synthetic_chexpert",
           "synthetic_mimic_cxr", "synthetic_padchest")


def is_mixed(source: str) -> bool:
    """Whether ``data.source`` names several sources (``a+b``)."""
    return "+" in source


def source_names(source: str) -> tuple[str, ...]:
    """The sources of ``a+b+c``, in order."""
    return tuple(source.split("+"))


def check(source: str, weights: Sequence[float]) -> str | None:
    """Why ``data.source`` / ``data.source_weights`` are not a valid mix (None if they are).

    One source reads no weights (a mixed run's config, pointed at one of its sources by
    ``evaluate --dataset``, keeps them).
    """
    if not is_mixed(source):
        return None
    names = source_names(source)
    bad = [n for n in names if n not in MIXABLE]
    if bad:
        return f"data.source={source!r}: {bad} cannot be mixed; expected names of {MIXABLE}"
    if len(set(names)) != len(names):
        return f"data.source={source!r} names a source twice"
    families = [release_family(n) for n in names]
    same = sorted({f for f in families if families.count(f) > 1})
    if same:
        return (f"data.source={source!r} mixes two sets in {same[0]}'s layout (a synthetic set "
                "takes its release's naming, so their image names can collide); mix sources of "
                "different releases")
    if len(weights) and len(weights) != len(names):
        return (f"data.source_weights={list(weights)} has {len(weights)} weights for the "
                f"{len(names)} sources of {source!r}")
    if not all(isinstance(w, int | float) and math.isfinite(w) and w > 0 for w in weights):
        return f"data.source_weights={list(weights)}: every weight must be a positive number"
    return None


def release_family(source: str) -> str:
    """The release whose layout and image names a source has: ``synthetic`` is NIH's,
    ``synthetic_chexpert`` CheXpert's."""
    return "nih" if source == "synthetic" else source.removeprefix("synthetic_")


def weights_of(data_cfg: Any) -> tuple[float, ...]:
    """The sources' weights, normalised to sum 1 (equal when ``data.source_weights`` is empty)."""
    names = source_names(data_cfg.source)
    weights = tuple(float(w) for w in (data_cfg.get("source_weights") or ())) or \
        (1.0,) * len(names)
    problem = check(data_cfg.source, weights)
    if problem:
        raise ValueError(problem)
    return tuple(w / sum(weights) for w in weights)


def data_dir_of(data_cfg: Any, name: str) -> str:
    """Where source ``name`` is prepared: ``data.data_dirs.<its release>``, else ``data_dir``."""
    from cxrjax.data import sources

    key = sources.release_of(name) or "nih"
    return (data_cfg.get("data_dirs") or {}).get(key) or data_cfg.data_dir


def source_config(data_cfg: Any, name: str) -> Any:
    """``data_cfg`` as a run on source ``name`` alone reads it: its own data_dir."""
    sub = data_cfg.copy_and_resolve_references()
    sub.source, sub.source_weights = name, ()
    sub.data_dir = data_dir_of(data_cfg, name)
    return sub


def ensure_prepared(data_cfg: Any, workdir: str, prepare_one: Callable) -> tuple:
    """((source, prepared), ...): ``prepare_one(source_cfg, workdir)`` of each source."""
    return tuple((n, prepare_one(source_config(data_cfg, n), workdir))
                 for n in source_names(data_cfg.source))


class MixedRecords:
    """The sources' records end to end: index -> (image, labels, mask), mask of ones where a
    source has no missing labels. ``parts[i]`` holds records ``[offsets[i], offsets[i+1])``.

    ``masked`` (labels may be missing: how the evaluator scores) is the first source's, whose
    validation and test splits are the run's: a mix led by NIH is scored as an NIH run is.
    """

    def __init__(self, names: Sequence[str], parts: Sequence[Any], classes: Sequence[str]):
        self.names, self.parts, self.classes = tuple(names), list(parts), tuple(classes)
        self.masked = bool(getattr(parts[0], "masked", False))
        self.offsets = np.cumsum([0, *(len(p) for p in parts)])
        self.image_ids: list[str] = [i for p in parts for i in p.image_ids]
        if len(set(self.image_ids)) != len(self.image_ids):
            raise ValueError(f"the sources {'+'.join(names)} share image names; mix sources of "
                             "different releases")
        self.resolution = parts[0].resolution

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def part_of(self, rows: np.ndarray) -> np.ndarray:
        """The source index of each record index in ``rows``."""
        return np.searchsorted(self.offsets, rows, side="right") - 1

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        part = int(self.part_of(np.asarray([int(i)]))[0])
        image, labels, *mask = self.parts[part][int(i) - int(self.offsets[part])]
        return image, labels, mask[0] if mask else np.ones_like(labels)


def load(data_cfg: Any, prepared: tuple, load_one: Callable
         ) -> tuple[MixedRecords, dict[str, list[str]]]:
    """(records, split -> image ids): train is every source's, val and test the first's.

    ``load_one(source_cfg, prepared)`` reads one source as ``pipeline`` does.
    """
    names, parts, splits = [], [], []
    for name, one in prepared:
        records, split_names = load_one(source_config(data_cfg, name), one)
        names.append(name)
        parts.append(records)
        splits.append(split_names)
    records = MixedRecords(names, parts, data_cfg.classes)
    out = {s: list(ids) for s, ids in splits[0].items()}
    out["train"] = [i for s in splits for i in s["train"]]
    return records, out


@dataclasses.dataclass(frozen=True)
class Mix:
    """The train mixture: each source's train rows (record indices) and its weight."""

    names: tuple[str, ...]
    weights: tuple[float, ...]
    rows: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, records: MixedRecords, train_rows: np.ndarray, weights: Sequence[float]) -> Mix:
        part = records.part_of(train_rows)
        rows = tuple(train_rows[part == i] for i in range(len(records.names)))
        empty = [n for n, r in zip(records.names, rows, strict=True) if not len(r)]
        if empty:
            raise ValueError(f"data.source: {', '.join(empty)} has no train images to mix")
        return cls(records.names, tuple(weights), rows)

    def identity(self) -> dict[str, Any]:
        """What fixes the mixture, for the train iterator's state."""
        return dict(zip(STATE_KEYS, ("+".join(self.names), list(self.weights)), strict=True))

    def order(self, seed: int) -> MixedOrder:
        return MixedOrder(self.rows, self.weights, seed)


class _SourceStream:
    """Key k of a source's endless stream -> its record index: grain's index shuffle of the
    source's rows, reseeded on every pass (epoch) through them."""

    def __init__(self, rows: np.ndarray, seed: int):
        self.rows = rows
        self.shuffled = grain.MapDataset.range(len(rows)).shuffle(seed=seed)

    def __call__(self, k: int) -> int:
        return int(self.rows[self.shuffled[int(k)]])


class MixedOrder:
    """Global train position -> record index, by ``grain.MapDataset.mix`` of the sources'
    endless streams in proportion to their weights; picklable for grain's workers."""

    def __init__(self, rows: Sequence[np.ndarray], weights: Sequence[float], seed: int):
        streams = []
        for i, r in enumerate(rows):
            source_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
            streams.append(grain.MapDataset.range(sys.maxsize).map(_SourceStream(r, source_seed)))
        self.mixed = grain.MapDataset.mix(streams, list(weights))

    def __call__(self, position: int) -> int:
        return self.mixed[int(position)]

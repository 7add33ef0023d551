"""The grain input pipeline: per-host shards, seeded epochs, crops, padded + masked eval batches.

Train: the whole split, reshuffled every epoch (grain's index shuffle, seeded by
``seed + epoch``), cut to whole global batches so epochs stay aligned, random ``crop`` from
``resolution`` (plus an optional horizontal flip), batched with ``drop_remainder``; each host
reads only its slice of every global batch. Global batch k is a pure function of (seed, k),
whatever the number of hosts or grain workers, so the iterator's ``get_state()`` is
``{"step": k, ...}`` (JSON) and ``set_state()`` resumes the exact sequence, also on another
number of hosts. Every host gets the same number of steps.

Eval: centre crop; each host's strided shard is padded to the same number of batches, and
``mask``/``index`` say which rows are real and where they go in ``image_ids(split)``. A release
source (``sources``: CheXpert, MIMIC-CXR, PadChest) adds ``label_mask`` to train and eval
batches (0 = label missing); the NIH sources add none. Several sources (``nih+chexpert``):
``mixing`` puts their records end to end and mixes their train splits by weight.

Batches are made by ``data.workers`` grain worker processes (-1, the default: one per core but
one, at most 8; 0: in this process); ``grain_workers`` hands them over as plain arrays and
releases grain's shared memory, also at exit. Call ``close()`` on an iterator no longer needed.

Horizontal flips are off by default: a mirrored chest X-ray is anatomically implausible (the
heart moves to the other side, and Cardiomegaly is read from its outline). CheXNet did flip
at random, so ``data.flip = True`` reproduces that recipe.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import grain
import jax
import numpy as np
from absl import flags

from cxrjax.data import grain_workers, mixing, nih_layout, sources
from cxrjax.data import labels as labels_lib
from cxrjax.data import splits as splits_lib
from cxrjax.data.crop import centre_crop

# Where the data lies, made sure of (re-exported: the evaluators and tests call them here).
from cxrjax.data.source_data import SOURCES, PreparedData, ensure_prepared  # noqa: F401

# ---------------------------------------------------------------------- sources ---

class TfdsRecords:
    """Record index -> (image (R, R) uint8, labels (14,) uint8) from the prepared dataset."""

    def __init__(self, data_dir: str, resolution: int):
        from cxrjax.data import builder  # TFDS only where the NIH-layout data is used

        b = builder.load(data_dir, resolution)
        self._source = b.as_data_source(split=builder.SPLIT)
        self.image_ids: list[str] = list(b.info.metadata["image_ids"])
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rec = self._source[int(i)]
        return rec["image"], rec["labels"]


# ------------------------------------------------------------------- transforms ---

class _EpochOrder:
    """Global train position -> record index: the train rows reshuffled every epoch (grain's
    index shuffle seeded by seed + epoch), each epoch cut to whole global batches."""

    def __init__(self, rows: np.ndarray, epoch_len: int, seed: int):
        self.rows, self.epoch_len = rows, epoch_len
        self.shuffled = grain.MapDataset.range(len(rows)).shuffle(seed=seed)

    def __call__(self, g: int) -> int:
        epoch, j = divmod(g, self.epoch_len)
        return self.rows[self.shuffled[epoch * len(self.rows) + j]]


class _TrainExample:
    """Local position -> cropped example; picklable so grain workers can run it.

    Global batch k is positions [k*G, (k+1)*G) of the train order (``_EpochOrder``, or
    ``mixing.MixedOrder`` for several sources); host i reads only rows [i*b, (i+1)*b) of it.
    So the global batches, crops and flips are the same for any number of hosts, and each host
    reads only its share of them.
    """

    def __init__(self, records: Any, order: Any, local_batch: int, process_index: int,
                 process_count: int, seed: int, crop: int, flip: bool):
        self.records, self.order = records, order
        self.local_batch, self.process_index = local_batch, process_index
        self.global_batch = local_batch * process_count
        self.seed, self.crop, self.flip = seed, crop, flip

    def __call__(self, position: int, _: Any) -> dict[str, np.ndarray]:
        k, offset = divmod(int(position), self.local_batch)
        g = k * self.global_batch + self.process_index * self.local_batch + offset
        image, labels, *label_mask = self.records[self.order(g)]
        rng = np.random.default_rng([self.seed, g])
        r = image.shape[0]
        y, x = rng.integers(0, r - self.crop + 1, size=2)
        image = image[y:y + self.crop, x:x + self.crop]
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
        out = {"image": np.ascontiguousarray(image)[..., None], "labels": labels}
        if label_mask:  # a release with missing labels: which of them the losses count
            out["label_mask"] = label_mask[0]
        return out


@dataclasses.dataclass(frozen=True)
class _EvalExample:
    """Padded position -> centre-cropped example with ``mask`` and ``index``."""

    records: Any
    rows: np.ndarray  # record index of each image of this host's shard
    positions: np.ndarray  # position of each of them in image_ids(split)
    crop: int

    def __call__(self, k: int) -> dict[str, np.ndarray]:
        k = int(k)
        # Its rows carry a mask: a release's, or a mix's (whose eval split may have none missing).
        masked = getattr(self.records, "masked", False) or isinstance(self.records,
                                                                      mixing.MixedRecords)
        if k >= len(self.rows):
            num_classes = len(getattr(self.records, "classes", labels_lib.CLASSES))
            pad = {"image": np.zeros((self.crop, self.crop, 1), np.uint8),
                   "labels": np.zeros(num_classes, np.uint8),
                   "mask": np.bool_(False), "index": np.int32(-1)}
            return {**pad, "label_mask": pad["labels"]} if masked else pad
        image, labels, *label_mask = self.records[self.rows[k]]
        image = centre_crop(image, self.crop)
        out = {"image": image, "labels": labels, "mask": np.bool_(True),
               "index": np.int32(self.positions[k])}
        if label_mask:
            out["label_mask"] = label_mask[0]
        return out


# ---------------------------------------------------------------------- datasets ---

@dataclasses.dataclass
class Datasets:
    """What the training loop uses: a resumable train iterator and exact eval batches."""

    records: Any
    split_rows: dict[str, np.ndarray]  # record indices per split, in image_ids order
    local_batch_size: int
    eval_batch_size: int  # per host
    steps_per_epoch: int
    crop: int
    flip: bool
    seed: int
    workers: int
    prefetch: int
    process_index: int
    process_count: int
    mix: mixing.Mix | None = None  # several sources: how training draws from them

    def image_ids(self, split: str) -> list[str]:
        return [self.records.image_ids[i] for i in self._rows(split)]

    def split_hashes(self) -> dict[str, str]:
        """{split: ``release_splits.split_hash`` of its image ids}, for a run to record."""
        return sources.split_hashes(self.image_ids, list(self.split_rows))

    def num_examples(self, split: str) -> int:
        return len(self._rows(split))

    def _rows(self, split: str) -> np.ndarray:
        if split not in self.split_rows:
            raise ValueError(f"unknown split {split!r}; expected one of {list(self.split_rows)}")
        return self.split_rows[split]

    def _iter(self, ds: grain.MapDataset) -> grain_workers.Batches:
        threads = 2 if self.workers else 4  # each element is a whole batch
        it = ds.to_iter_dataset(grain.ReadOptions(
            num_threads=threads, prefetch_buffer_size=max(self.prefetch, threads)))
        if self.workers > 0:
            if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (defaults here)
                flags.FLAGS.mark_as_parsed()
            it = it.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=self.workers, per_worker_buffer_size=max(self.prefetch, 1)))
        return grain_workers.Batches(iter(it))

    def train_iter(self, state: dict | None = None) -> TrainIterator:
        """Endless per-host batches {"image": (b, crop, crop, 1) uint8, "labels": (b, 14)}.

        ``state`` (from ``get_state()`` of an earlier iterator) resumes the same sequence.
        """
        it = TrainIterator(self)
        if state is not None:
            it.set_state(state)
        return it

    def train_batches(self, start_step: int = 0) -> grain.MapDataset:
        """Batch ``k`` of this host's endless train sequence is element ``k - start_step``."""
        local_epoch = self.steps_per_epoch * self.local_batch_size
        order = (self.mix.order(self.seed) if self.mix is not None else
                 _EpochOrder(self._rows("train"), local_epoch * self.process_count, self.seed))
        fn = _TrainExample(self.records, order, self.local_batch_size, self.process_index,
                           self.process_count, self.seed, self.crop, self.flip)
        ds = (grain.MapDataset.range(local_epoch).repeat(None).map_with_index(fn)
              .batch(self.local_batch_size, drop_remainder=True))
        return ds[start_step:]

    def eval_batches(self, split: str) -> Iterator[dict[str, np.ndarray]]:
        """This host's batches of ``split``; together the hosts score every image once."""
        rows = self._rows(split)
        mine = np.arange(self.process_index, len(rows), self.process_count)
        per_host = math.ceil(len(rows) / self.process_count)
        n_batches = max(math.ceil(per_host / self.eval_batch_size), 1)
        fn = _EvalExample(self.records, rows[mine], mine, self.crop)
        ds = (grain.MapDataset.range(n_batches * self.eval_batch_size).map(fn)
              .batch(self.eval_batch_size, drop_remainder=True))
        return self._iter(ds)


class TrainIterator:
    """The train batches with a checkpointable state: the number of batches consumed.

    The sequence is a pure function of (seed, step), so the state is a small JSON dict and
    resuming works with any number of grain worker processes.
    """

    def __init__(self, datasets: Datasets):
        self._ds = datasets
        self._step = 0
        self._it = datasets._iter(datasets.train_batches(0))

    def close(self) -> None:
        """Stops the worker processes; call it when the run needs no more batches."""
        self._it.close()

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._it)
        self._step += 1
        return batch

    def _identity(self) -> dict[str, Any]:
        """What fixes the global sequence (not the host count: a run may resume on more)."""
        d = self._ds
        mix = d.mix.identity() if d.mix is not None else {}
        return {"seed": d.seed, "global_batch_size": d.local_batch_size * d.process_count,
                "steps_per_epoch": d.steps_per_epoch, **mix}

    def get_state(self) -> dict[str, Any]:
        return {"step": self._step, **self._identity()}

    def set_state(self, state: dict) -> None:
        """Continues after ``state["step"]`` batches; a state of another run is an error."""
        ours = self._identity()
        # A mix's keys count also where only the state has them (a mix resumed on one source).
        keys = [*ours, *(k for k in mixing.STATE_KEYS if k in state and k not in ours)]
        other = {k: state.get(k) for k in keys}
        if other != {k: ours.get(k) for k in keys}:
            raise ValueError(f"train iterator state {other} is from a different input pipeline "
                             f"than this one {ours}; resume with the same seed, global batch "
                             "size and dataset")
        self._step = int(state["step"])
        self._it.close()
        self._it = self._ds._iter(self._ds.train_batches(self._step))


def _per_host(total: int, process_count: int, what: str) -> int:
    if total <= 0 or total % process_count:
        raise ValueError(f"{what}={total} must be a positive multiple of the process count "
                         f"{process_count}")
    return total // process_count


def create_datasets(data_cfg: Any, prepared: PreparedData, *, global_batch_size: int,
                    eval_batch_size: int, seed: int, process_index: int | None = None,
                    process_count: int | None = None) -> Datasets:
    """The train iterator factory and eval batches for ``data_cfg`` (see module docstring).

    ``prepared`` (from ``ensure_prepared``) says where the data lies; ``data_cfg`` the rest.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    records, split_names = _load(data_cfg, prepared)
    index = {name: i for i, name in enumerate(records.image_ids)}
    split_rows = {}
    for split, names in split_names.items():
        rows = [index[n] for n in names if n in index]
        if len(rows) < len(names):
            logging.getLogger("cxrjax").warning(
                "split %s: %d of its %d images are not in the prepared dataset (skipped when "
                "preparing?)", split, len(names) - len(rows), len(names))
        split_rows[split] = np.asarray(rows, np.int64)
    crop = int(data_cfg.crop)
    if not 0 < crop <= records.resolution:
        raise ValueError(f"data.crop={crop} must be in [1, {records.resolution}] (the stored "
                         "resolution)")
    local = _per_host(global_batch_size, process_count, "global_batch_size")
    mix = (mixing.Mix.of(records, split_rows["train"], mixing.weights_of(data_cfg))
           if isinstance(records, mixing.MixedRecords) else None)
    steps = len(split_rows["train"]) // global_batch_size
    if steps == 0:
        raise ValueError(f"the train split has {len(split_rows['train'])} images: fewer than "
                         f"one global batch of {global_batch_size}")
    return Datasets(
        records=records, split_rows=split_rows, local_batch_size=local,
        eval_batch_size=_per_host(eval_batch_size, process_count, "eval_batch_size"),
        steps_per_epoch=steps, crop=crop, flip=bool(data_cfg.flip), seed=int(seed) % 2**32,
        workers=grain_workers.resolve_count(int(data_cfg.workers)),
        prefetch=int(data_cfg.prefetch),
        process_index=process_index, process_count=process_count, mix=mix)


def _load(data_cfg: Any, prepared: PreparedData) -> tuple[Any, dict[str, list[str]]]:
    """(records, split -> image names) for the configured source."""
    source = data_cfg.source
    if mixing.is_mixed(source):
        return mixing.load(data_cfg, prepared.mixed, _load)
    if source == "chestmnist":
        from cxrjax.data import chestmnist

        return chestmnist.load(prepared.chestmnist_path, prepared.chestmnist_cache or None)
    if source not in SOURCES:
        raise ValueError(f"unknown data.source {source!r}; expected one of {SOURCES}")
    if sources.release_of(source):
        return sources.load(sources.release_of(source), data_cfg, prepared.data_dir)
    records = TfdsRecords(prepared.data_dir, int(data_cfg.resolution))
    manual_dir = prepared.manual_dir
    csv = _data_entry_in(manual_dir)
    lists_dir = manual_dir if data_cfg.split_scheme == "official" and manual_dir else None
    names = splits_lib.split_images(csv, data_cfg.split_scheme, seed=int(data_cfg.split_seed),
                                    lists_dir=lists_dir)
    return records, names


def _data_entry_in(manual_dir: str) -> str | None:
    """The download's own label table if there is one, else None (the shipped table)."""
    if not manual_dir or not os.path.isdir(manual_dir):
        return None
    try:
        return nih_layout.find_data_entry(manual_dir)
    except FileNotFoundError:
        return None


def open_datasets(config: Any, workdir: str) -> Datasets:
    """THE way to the data of a run: ``ensure_prepared``, then ``create_datasets`` with the
    run's batch sizes (``config.train``) and seed."""
    prepared = ensure_prepared(config.data, workdir)
    return create_datasets(config.data, prepared, global_batch_size=config.train.batch_size,
                           eval_batch_size=config.train.eval_batch_size, seed=config.seed)

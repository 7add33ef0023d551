"""The TFDS builder ``chest_xray14``: NIH PNGs -> ArrayRecord shards of uint8 grayscale records.

One split, ``images``, holds every image; train/val/test are chosen at load time
(``cxrjax.data.splits``), so changing scheme never re-decodes. Records are written in sorted
image-name order (``disable_shuffling``) and ``metadata.json`` lists that order, so an image
name maps to its record index without reading the records.

Images are stored raw (``Tensor`` uint8, 64 KiB at 256²), not PNG: X-rays compress poorly
(``scripts/bench_data.py`` measures the size ratio and decode cost), and raw records cost the
input pipeline a copy instead of a decode, which is what keeps an accelerator fed.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from cxrjax.data import labels as labels_lib
from cxrjax.data import nih_layout
from cxrjax.io import fileio

SPLIT = "images"
DEFAULT_RESOLUTION = 256
MANIFEST_NAME = "skipped_manifest.tsv"  # written next to the records when images were skipped
# Written in data_dir (beside the dataset folder, not in it, so no unfinished build can look
# complete) when a download cannot be prepared: every problem, where the message shows a few.
PROBLEMS_NAME = "prepare_problems.tsv"
log = logging.getLogger("cxrjax")
MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download ChestX-ray14 from https://nihcc.app.box.com/v/ChestXray-NIHCC (12 image archives,
~42 GB, and Data_Entry_2017_v2020.csv; optionally train_val_list.txt and test_list.txt).
Unpack the archives into one folder (images_001/images/... or images/) next to the CSV,
then run: python -m cxrjax.data.prepare --manual_dir THAT_FOLDER --data_dir OUT
"""


@dataclasses.dataclass
class ChestXray14Config(tfds.core.BuilderConfig):
    """One stored resolution; the config name is e.g. ``256px`` (any side in [8, 1024])."""

    resolution: int = DEFAULT_RESOLUTION


_CONFIGS: dict[int, ChestXray14Config] = {}


def config_for(resolution: int) -> ChestXray14Config:
    """The (one, shared) config object for a resolution; TFDS compares configs by identity."""
    if not 8 <= resolution <= 1024:
        raise ValueError(f"resolution must be in [8, 1024], got {resolution}")
    if resolution not in _CONFIGS:
        _CONFIGS[resolution] = ChestXray14Config(
            name=f"{resolution}px", resolution=resolution,
            description=f"grayscale uint8 {resolution}x{resolution}")
    return _CONFIGS[resolution]


class PreparedLocally:
    """What every builder of ours shares: data that is a manual download, prepared here.

    Put before ``GeneratorBasedBuilder`` in the bases; it replaces TFDS's download logging and
    its checksum lookup, neither of which applies.
    """

    def __init__(self, *, workers: int | None = None, skip_bad: bool = False, **kwargs):
        """``workers``: decoding processes (default: every core this process may use);
        ``skip_bad``: write the rest of the images when some cannot be decoded."""
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)
        self._workers = len(os.sched_getaffinity(0)) if workers is None else workers
        self._skip_bad = skip_bad

    @property
    def resolution(self) -> int:
        return self.builder_config.resolution

    def is_prepared(self) -> bool:
        """TFDS's check, without its warning about a dataset folder that does not exist yet."""
        return (self.data_path / "dataset_info.json").exists() and super().is_prepared()

    def _log_download_bytes(self) -> None:
        """Replaces TFDS's "Downloading and preparing dataset Unknown size": nothing is
        downloaded (the images are a manual download), and the size is known only after."""
        log.info("preparing %s at %dpx in %s", self.name, self.resolution, self.data_dir)

    def _log_download_done(self) -> None:
        """Replaces TFDS's "downloaded and prepared" line: the caller says what was made."""

    @tfds.core.utils.classproperty
    @classmethod
    def _checksums_path(cls):
        """No download checksums: the data is a manual download. (TFDS's default would look
        next to this module through ``importlib_resources``, which is not installed.)"""
        return None


class ChestXray14(PreparedLocally, tfds.core.GeneratorBasedBuilder):
    """NIH ChestX-ray14: 112,120 frontal chest X-rays, 14 findings (multi-label)."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "uint8 grayscale, one split; splits chosen at load time.",
                     "1.1.0": "The image stored as raw bytes (16x faster to write and read)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [config_for(256), config_for(512), config_for(128)]

    @classmethod
    def get_builder_config(cls, name: str, version=None) -> ChestXray14Config | None:
        """Every ``<side>px`` is a config of ours, not only the three listed above.

        TFDS looks a config up by name here; one it does not find it calls "custom" and warns
        about on every load (in every grain worker too).
        """
        match = re.fullmatch(r"(\d+)px", name)
        if match and 8 <= int(match.group(1)) <= 1024:
            return config_for(int(match.group(1)))
        return super().get_builder_config(name, version)

    def __init__(self, **kwargs):
        if isinstance(kwargs.get("config"), ChestXray14Config):  # e.g. unpickled in a worker
            kwargs["config"] = config_for(kwargs["config"].resolution)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        r = self.builder_config.resolution
        return tfds.core.DatasetInfo(
            builder=self,
            description="NIH ChestX-ray14, decoded once and resized with an antialiasing filter.",
            features=tfds.features.FeaturesDict({
                # BYTES: the raw 64 KiB buffer. The default (NONE) would store an int64 list,
                # 10 ms/record to serialise and 0.4 ms to parse; BYTES is a memcpy.
                "image": tfds.features.Tensor(shape=(r, r), dtype=np.uint8,
                                              encoding=tfds.features.Encoding.BYTES),
                "labels": tfds.features.Tensor(shape=(labels_lib.NUM_CLASSES,), dtype=np.uint8),
                "image_id": tfds.features.Text(),
                "patient_id": tfds.features.Scalar(dtype=np.int64),
                "follow_up": tfds.features.Scalar(dtype=np.int64),
                "age": tfds.features.Scalar(dtype=np.int32),
                "sex": tfds.features.Text(),
                "view": tfds.features.Text(),
            }),
            homepage="https://nihcc.app.box.com/v/ChestXray-NIHCC",
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        rows, problems = nih_layout.usable_rows(os.fspath(dl_manager.manual_dir), self._skip_bad)
        return {SPLIT: self._generate_examples(rows, problems)}

    def _generate_examples(self, rows: list[nih_layout.Row],
                           skipped: list[nih_layout.Problem]):
        """Decodes on all cores (in row order) and records what was converted or skipped."""
        tally = DecodeTally()
        written: list[str] = []
        # nih_layout.decode_task is looked up here, at run time, so that tests can replace it.
        for i, row, image in decode_rows(rows, self.resolution, nih_layout.decode_task,
                                         self._workers, self._skip_bad, tally, "decoding PNGs"):
            written.append(row.image_id)
            yield i, {"image": image, "labels": row.labels, "image_id": row.image_id,
                      "patient_id": row.patient_id, "follow_up": row.follow_up,
                      "age": row.age, "sex": row.sex, "view": row.view}
        meta = self.info.metadata
        meta["image_ids"] = written
        meta["num_images"] = len(written)
        meta["resolution"] = self.resolution
        meta["converted"] = dict(sorted(tally.converted.items()))
        meta["skipped"] = [dataclasses.asdict(p) for p in [*skipped, *tally.bad]]


@dataclasses.dataclass
class DecodeTally:
    """What a decoding pass saw: source modes converted to gray, and the images that failed."""

    converted: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    bad: list[nih_layout.Problem] = dataclasses.field(default_factory=list)


def decode_rows(rows: Sequence, resolution: int, decode: Callable, workers: int,
                skip_bad: bool, tally: DecodeTally, desc: str = "decoding",
                ) -> Iterator[tuple[int, Any, np.ndarray]]:
    """``(i, row, image)`` for each row to write, decoded by ``decode`` on ``workers`` processes.

    Rows have ``path`` and ``image_id``. Once an image fails and ``skip_bad`` is off, the rest
    are decoded only to list every problem, and a ``PrepareError`` ends the pass.
    """
    tasks = [(i, row.path, resolution) for i, row in enumerate(rows)]
    results = nih_layout.ordered_map(decode, tasks, workers)
    for i, image, note in tqdm.tqdm(results, total=len(tasks), desc=desc, unit="img",
                                    smoothing=0.05):
        row = rows[i]
        if image is None:
            tally.bad.append(nih_layout.Problem(row.image_id, note))
            continue
        if note != "L":
            tally.converted[note] += 1
        if tally.bad and not skip_bad:
            continue  # keep decoding only to list every problem; nothing is kept
        yield i, row, image
    if tally.bad and not skip_bad:
        raise nih_layout.PrepareError(
            f"{len(tally.bad):,} image(s) could not be decoded; no dataset was written (pass "
            "--skip_bad to write the rest)", tally.bad)


def load(data_dir: str, resolution: int = DEFAULT_RESOLUTION) -> ChestXray14:
    """The prepared builder; a missing or unfinished build is a FileNotFoundError."""
    b = ChestXray14(data_dir=data_dir, config=config_for(resolution))
    if not b.is_prepared() or "image_ids" not in b.info.metadata:
        raise FileNotFoundError(
            f"no complete chest_xray14 dataset at {resolution}px in {data_dir} (looked for "
            f"{b.data_dir}); prepare it with: python -m cxrjax.data.prepare --manual_dir NIH_DIR "
            f"--data_dir {data_dir} --resolution {resolution}")
    return b


def build(manual_dir: str, data_dir: str, resolution: int = DEFAULT_RESOLUTION,
          workers: int | None = None, skip_bad: bool = False) -> ChestXray14:
    """Prepares the dataset unless a complete one exists; writes the skip manifest if any.

    A download with problems raises ``PrepareError`` naming the first few and
    ``data_dir/PROBLEMS_NAME``, where all of them are written; no dataset is written.
    """
    manual_dir = os.fspath(manual_dir)
    b = ChestXray14(data_dir=data_dir, config=config_for(resolution), workers=workers,
                    skip_bad=skip_bad)
    prepare_once(b, manual_dir, data_dir, lambda: nih_layout.usable_rows(manual_dir, skip_bad))
    return b


def prepare_once(b: tfds.core.GeneratorBasedBuilder, manual_dir: str, data_dir: str,
                 check: Callable[[], Any]) -> None:
    """Prepares ``b`` unless a complete build exists, then writes its skip manifest if any.

    ``check`` reads the download first, so that bad input fails before TFDS makes folders. A
    ``PrepareError`` with problems writes all of them to ``data_dir/PROBLEMS_NAME`` and names
    that file; a list left by an earlier try is removed once a build succeeds.
    """
    if not b.is_prepared():
        problems_path = os.path.join(os.fspath(data_dir), PROBLEMS_NAME)
        try:
            check()
            tfds.disable_progress_bar()  # TFDS's bars count its own steps; ours counts images
            # Nothing is downloaded: TFDS's empty downloads/extracted goes to a temporary folder.
            with tempfile.TemporaryDirectory(prefix="cxrjax-tfds-") as no_downloads:
                b.download_and_prepare(download_dir=no_downloads, download_config=(
                    tfds.download.DownloadConfig(manual_dir=manual_dir)))
        except nih_layout.PrepareError as e:
            if not e.problems:
                raise
            fileio.makedirs(data_dir)
            nih_layout.write_problems(problems_path, e.problems)
            raise e.listed(problems_path) from None
        fileio.remove(problems_path, missing_ok=True)  # a list from an earlier try is stale
    skipped = b.info.metadata.get("skipped", [])
    if skipped:
        write_manifest(os.path.join(os.fspath(b.data_dir), MANIFEST_NAME),
                       [nih_layout.Problem(**p) for p in skipped])


def write_manifest(path: str, skipped: list[nih_layout.Problem]) -> None:
    """A TSV of every skipped image and why (``--skip_bad``), as the list of problems."""
    nih_layout.write_problems(path, skipped)

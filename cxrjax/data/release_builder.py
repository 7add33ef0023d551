"""TFDS builders ``chexpert``, ``mimic_cxr`` and ``padchest``: a release's images -> ArrayRecord
shards of uint8 grayscale records with label states in the canonical space and metadata.

Like ``chest_xray14`` (``builder``): one split ``images`` in sorted image-id order, raw uint8
images, no TensorFlow, and the same bad-input contract (the count of problems, the first 20,
the full TSV in ``data_dir``, ``--skip_bad`` with a manifest). Records carry ``label_states``
(int8 per class of ``label_space.CLASSES``: positive, negative, uncertain or missing) so the
uncertainty policy is chosen when reading, plus ids, sex, age, view and the release's split.
The views (and MIMIC's labeler) are chosen at prepare time and name the config, e.g.
``256px`` (PA and AP), ``256px_pa_ap_lateral``, ``256px_negbio``. Every image left out is
counted by reason in ``metadata.json`` and listed in ``excluded_images.tsv`` beside the records.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow_datasets as tfds

from cxrjax.data import builder as nih_builder
from cxrjax.data import chexpert_layout, label_space, mimic_layout, nih_layout, padchest_layout
from cxrjax.data import release_rows as rr
from cxrjax.io import fileio

EXCLUDED_NAME = "excluded_images.tsv"
HOMEPAGES = {"chexpert": "https://stanfordmlgroup.github.io/competitions/chexpert/",
             "mimic_cxr": "https://physionet.org/content/mimic-cxr-jpg/",
             "padchest": "https://bimcv.cipf.es/bimcv-projects/padchest/"}


@dataclasses.dataclass
class ReleaseConfig(tfds.core.BuilderConfig):
    """One stored resolution, view selection and (MIMIC) labeler."""

    resolution: int = nih_builder.DEFAULT_RESOLUTION
    views: tuple[str, ...] = rr.DEFAULT_VIEWS
    labeler: str = "chexpert"


_CONFIGS: dict[tuple, ReleaseConfig] = {}


def config_for(resolution: int, views: Sequence[str] = rr.DEFAULT_VIEWS,
               labeler: str = "chexpert") -> ReleaseConfig:
    """The (one, shared) config; its name says what differs from the defaults."""
    if not 8 <= resolution <= 1024:
        raise ValueError(f"resolution must be in [8, 1024], got {resolution}")
    views = rr.check_views(views)
    if labeler not in mimic_layout.LABELERS:
        raise ValueError(f"unknown labeler {labeler!r}; expected one of "
                         f"{', '.join(mimic_layout.LABELERS)}")
    key = (resolution, views, labeler)
    if key not in _CONFIGS:
        name = f"{resolution}px"
        if views != rr.DEFAULT_VIEWS:
            name += "_" + "_".join(re.sub(r"[^a-z0-9]+", "-", v.lower()) for v in views)
        if labeler != "chexpert":
            name += f"_{labeler}"
        _CONFIGS[key] = ReleaseConfig(name=name, resolution=resolution, views=views,
                                      labeler=labeler,
                                      description=f"grayscale uint8 {resolution}x{resolution}, "
                                                  f"views {', '.join(views)}")
    return _CONFIGS[key]


class _ReleaseBuilder(nih_builder.PreparedLocally, tfds.core.GeneratorBasedBuilder,
                      skip_registration=True):
    """What the three release builders share; each names its release and reader."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "uint8 grayscale, canonical label states, one split."}
    BUILDER_CONFIGS = [config_for(256)]
    RELEASE = ""

    @classmethod
    def get_builder_config(cls, name: str, version=None) -> ReleaseConfig | None:
        """Every config name of ours, e.g. ``128px_pa_ap_lateral``, not only the default."""
        for config in _CONFIGS.values():
            if config.name == name:
                return config
        return super().get_builder_config(name, version)

    def __init__(self, **kwargs):
        config = kwargs.get("config")
        if isinstance(config, ReleaseConfig):  # e.g. unpickled in a worker
            kwargs["config"] = config_for(config.resolution, config.views, config.labeler)
        super().__init__(**kwargs)

    def scan(self, manual_dir: str) -> rr.Scan:
        """The download read by this release's layout module (UNCERTAIN kept)."""
        c = self.builder_config
        if self.RELEASE == "mimic_cxr":
            return mimic_layout.scan(manual_dir, views=c.views, labeler=c.labeler)
        return {"chexpert": chexpert_layout.scan,
                "padchest": padchest_layout.scan}[self.RELEASE](manual_dir, views=c.views)

    def decode(self) -> Callable:
        """The worker function that decodes one image of this release."""
        return padchest_layout.decode_task if self.RELEASE == "padchest" else (
            nih_layout.decode_task)

    def _info(self) -> tfds.core.DatasetInfo:
        r = self.resolution
        text, scalar, tensor = tfds.features.Text, tfds.features.Scalar, tfds.features.Tensor
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.RELEASE}, decoded once and resized with an antialiasing filter.",
            features=tfds.features.FeaturesDict({
                "image": tensor(shape=(r, r), dtype=np.uint8,
                                encoding=tfds.features.Encoding.BYTES),
                "label_states": tensor(shape=(len(label_space.CLASSES),), dtype=np.int8),
                "image_id": text(), "patient_id": text(), "study_id": text(),
                "age": scalar(dtype=np.int32), "sex": text(), "view": text(), "split": text(),
            }),
            homepage=HOMEPAGES[self.RELEASE],
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        found = rr.fail_on_problems(self.scan(manual_dir), manual_dir, self._skip_bad)
        return {nih_builder.SPLIT: self._generate_examples(found)}

    def _generate_examples(self, found: rr.Scan):
        """Decodes on all cores (in row order) and records what was written or left out."""
        tally = nih_builder.DecodeTally()
        written: list[rr.ImageRow] = []
        for i, row, image in nih_builder.decode_rows(found.rows, self.resolution, self.decode(),
                                                     self._workers, self._skip_bad, tally):
            written.append(row)
            yield i, {"image": image, "label_states": row.states, "image_id": row.image_id,
                      "patient_id": row.patient_id, "study_id": row.study_id, "age": row.age,
                      "sex": row.sex, "view": row.view, "split": row.split}
        excluded = [*found.excluded, *(rr.Exclusion(p.image, rr.BAD_FILE, p.reason)
                                       for p in [*found.problems, *tally.bad])]
        meta = self.info.metadata
        meta.update(image_ids=[r.image_id for r in written], num_images=len(written),
                    patient_ids=[r.patient_id for r in written],
                    release_splits=[r.split for r in written], resolution=self.resolution,
                    classes=list(label_space.CLASSES), views=list(self.builder_config.views),
                    converted=dict(sorted(tally.converted.items())),
                    skipped=[dataclasses.asdict(p) for p in [*found.problems, *tally.bad]],
                    excluded=dict(sorted(collections.Counter(e.kind for e in excluded).items())),
                    excluded_list=[dataclasses.asdict(e) for e in excluded],
                    unmapped_terms=found.unmapped_terms)
        if self.RELEASE == "mimic_cxr":
            meta["labeler"] = self.builder_config.labeler


class Chexpert(_ReleaseBuilder, skip_registration=True):
    """CheXpert v1.0 (Stanford): 224,316 chest X-rays, 14 observations with uncertainty."""

    name = "chexpert"
    RELEASE = "chexpert"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download CheXpert-v1.0(-small) from the Stanford AIMI site and point --manual_dir at "
        "the folder holding train.csv, valid.csv and train/, valid/.")


class MimicCxr(_ReleaseBuilder, skip_registration=True):
    """MIMIC-CXR-JPG 2.0.0/2.1.0 (PhysioNet): 377,110 images of 227,827 studies."""

    name = "mimic_cxr"
    RELEASE = "mimic_cxr"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download MIMIC-CXR-JPG from PhysioNet (credentialed) and point --manual_dir at the "
        "folder holding mimic-cxr-2.0.0-*.csv.gz and files/; add MIMIC-IV's patients.csv.gz "
        "there for sex and age.")


class Padchest(_ReleaseBuilder, skip_registration=True):
    """PadChest (BIMCV): about 160,000 images, 16-bit PNGs, report-derived labels."""

    name = "padchest"
    RELEASE = "padchest"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download PadChest from BIMCV and point --manual_dir at the folder holding "
        "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv(.gz) and the image folders 0..54.")


# Not in TFDS's registry (``skip_registration``): TFDS ships a builder of its own named
# ``chexpert``, and two of one name cannot both be imported. Ours are used as classes, never
# looked up by name.
BUILDERS: dict[str, type[_ReleaseBuilder]] = {"chexpert": Chexpert, "mimic_cxr": MimicCxr,
                                              "padchest": Padchest}


def _make(release: str, data_dir: str, resolution: int, views: Sequence[str], labeler: str,
          **kwargs) -> _ReleaseBuilder:
    if release not in BUILDERS:
        raise ValueError(f"unknown dataset {release!r}; expected one of {', '.join(BUILDERS)}")
    return BUILDERS[release](data_dir=data_dir, config=config_for(resolution, views, labeler),
                             **kwargs)


def load(release: str, data_dir: str, resolution: int = nih_builder.DEFAULT_RESOLUTION,
         views: Sequence[str] = rr.DEFAULT_VIEWS, labeler: str = "chexpert") -> _ReleaseBuilder:
    """The prepared builder; a missing or unfinished build is a FileNotFoundError."""
    b = _make(release, data_dir, resolution, views, labeler)
    if not b.is_prepared() or "image_ids" not in b.info.metadata:
        raise FileNotFoundError(
            f"no complete {release} dataset ({b.builder_config.name}) in {data_dir} (looked "
            f"for {b.data_dir}); prepare it with: python -m cxrjax.data.prepare --dataset "
            f"{release} --manual_dir DIR --data_dir {data_dir} --resolution {resolution}")
    return b


def build(release: str, manual_dir: str, data_dir: str,
          resolution: int = nih_builder.DEFAULT_RESOLUTION,
          views: Sequence[str] = rr.DEFAULT_VIEWS, labeler: str = "chexpert",
          workers: int | None = None, skip_bad: bool = False) -> _ReleaseBuilder:
    """Prepares the release unless a complete build exists; writes the manifest and the list
    of excluded images. Bad input raises ``PrepareError`` (all problems in PROBLEMS_NAME)."""
    manual_dir = os.fspath(manual_dir)
    b = _make(release, data_dir, resolution, views, labeler, workers=workers, skip_bad=skip_bad)
    nih_builder.prepare_once(b, manual_dir, data_dir, lambda: rr.fail_on_problems(
        b.scan(manual_dir), manual_dir, skip_bad))
    meta = b.info.metadata
    if meta.get("excluded_list"):
        fileio.write_text(os.path.join(os.fspath(b.data_dir), EXCLUDED_NAME),
                          "image\tkind\treason\n" + "".join(
                              f"{e['image']}\t{e['kind']}\t{e['reason']}\n"
                              for e in meta["excluded_list"]))
    return b

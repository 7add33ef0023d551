"""The paper's recipe as a config, the pieces its rows are built from, and the table of rows.

``ROWS`` is the one table of the paper's Tables 1-2: per row its name, how it is built (the
transforms below, applied in order to ``base_config()``), its label in the tables and the
paper's mean AUC. The config files, the recipe comparison (``paper_recipe``), the report,
``scripts/reproduce_tables.py`` and ``scripts/model_table.py`` all read it: adding a row is one
entry here. ``row(name)`` builds a row's config and records its name in ``config.row``.

Config files under ``configs/`` import only this module (no ``configs.*`` imports), so a copy
of one runs from any directory: ``python -m cxrjax.main --config /tmp/my_config.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import ml_collections as mlc
from ml_collections.config_dict import placeholder

from cxrjax.data.labels import CLASSES as NIH_CLASSES


def stage(name: str, epochs: int, trainable: str = ".*", **loss_weights: float) -> mlc.ConfigDict:
    """One training stage: its epochs, loss weights per head, and a regex of trainable params."""
    return mlc.ConfigDict(dict(name=name, epochs=epochs, trainable=trainable,
                               loss_weights=dict(loss_weights)))


def base_config() -> mlc.ConfigDict:
    """Row R18 and every field the code reads: one ImageNet ResNet18, CE head, Adam 1e-4 with
    x0.1 every 3 epochs, 224 crops of 256-px images."""
    c = mlc.ConfigDict()
    # The paper row this config is (a name in ROWS; ``row()`` sets it): the report and the
    # tables compare a run with that row's recipe and number. None: no paper row.
    c.row = placeholder(str)
    c.seed = 0
    # "auto": bfloat16 compute (float32 params and losses) on GPU/TPU, float32 on CPU.
    c.dtype = "auto"
    # Persistent compilation cache (cxrjax.io.compilation_cache): "" = off; the environment
    # variable CXRJAX_COMPILE_CACHE (a folder or "off") wins over this field.
    c.compile_cache_dir = "~/.cache/cxrjax/jax_cache"

    # --- model: which trunks, which heads (cxrjax.models.build_model) ---
    c.model = mlc.ConfigDict()
    c.model.trunk_a = "resnet18"
    c.model.trunk_b = placeholder(str)  # None: one stream
    c.model.head_a = "ce"  # GAP + dense on stream A ("ce" or None)
    c.model.head_b = placeholder(str)  # GAP + dense on stream B: "ce", "msml" or None
    c.model.bilinear = False  # bilinear FCE head (self-bilinear when there is one stream)
    c.model.bilinear_dim = 512  # the paper's "further 1x1 convolution" after pooling
    c.model.bilinear_reduce = placeholder(int)  # optional 1x1 reduction of each stream first
    c.model.num_classes = 14
    # DenseNet trunks only: run each dense block as lax.scan over chunks of this many layers, so
    # the layers of a chunk compile (and autotune) once; 0 unrolls them. Same parameters and
    # results, so a resumed run may change it (cxrjax.models.densenet). Not for CPUs: XLA:CPU
    # runs a convolution's gradient inside a loop many times slower (jax-ml/jax#12868).
    c.model.dense_scan_chunk = 0
    # Reported prediction: mean of these heads' probabilities ("fusion with the baseline").
    c.model.fusion = ("ce", "fce")
    # "imagenet" (ported torchvision weights), "scratch", or a cxrjax workdir/checkpoint path.
    c.model.init = "imagenet"
    # Ported weights: <weights_dir>/<arch>_imagenet.npz, made by scripts/port_torchvision.py.
    c.model.weights_dir = "~/.cache/cxrjax/weights"

    # --- data (cxrjax.data.pipeline.open_datasets) ---
    c.data = mlc.ConfigDict()
    # "nih" | "synthetic" | "chestmnist" | "chexpert" | "mimic_cxr" | "padchest", or
    # "synthetic_chexpert" | "synthetic_mimic_cxr" | "synthetic_padchest" (made in the workdir).
    c.data.source = "nih"
    # Several sources joined by + ("nih+chexpert"; not chestmnist) train on their mix
    # (cxrjax.data.mixing): drawn in proportion to these weights, one per source in the same
    # order (() = equal; one source reads none); validation and test are the first source's.
    c.data.source_weights = ()
    # The model's classes, in its output order (names of cxrjax.data.label_space.CLASSES); the
    # NIH sources give exactly the paper's 14, in its order. model.num_classes must match.
    c.data.classes = NIH_CLASSES
    # CheXpert, MIMIC-CXR and PadChest only: the views kept when preparing (a prepared build is
    # named by them), the uncertainty policy ("ignore": the label is missing and adds nothing
    # to the loss; "zeros"; "ones") and MIMIC-CXR's labeler ("chexpert" or "negbio").
    c.data.views = ("PA", "AP")
    c.data.uncertain = "ignore"
    c.data.labeler = "chexpert"
    c.data.data_dir = "~/tensorflow_datasets"  # prepared ArrayRecord dataset (cxrjax.data.prepare)
    c.data.manual_dir = "~/data/ChestX-ray14"  # the NIH download, only needed to prepare
    # Each release's prepared data, for a mix or one source ("" = data_dir; one TFDS data_dir
    # can hold them all).
    c.data.data_dirs = mlc.ConfigDict({"nih": "", "chexpert": "", "mimic_cxr": "",
                                       "padchest": ""})
    c.data.split_scheme = "paper"  # "paper" (patient-level 70/10/20) | "official" | "chexnet"
    c.data.split_seed = 0
    c.data.resolution = 256  # stored image side; training crops `crop` from it
    c.data.crop = 224
    c.data.flip = False  # chest X-rays are not mirror-symmetric (heart on the left)
    # grain worker processes: -1 = one per core but one (for the training loop), at most 8;
    # 0 = none (batches made in the training process); N = N.
    c.data.workers = -1
    c.data.prefetch = 2
    c.data.chestmnist_path = placeholder(str)
    # source="synthetic": a set in the NIH layout, made and prepared in the workdir.
    c.data.synthetic_n = 3000  # images
    c.data.synthetic_size = 128  # their side in pixels
    c.data.synthetic_seed = 0
    # source="synthetic_<release>": "same" acquires the chests as the NIH-layout set is; "other"
    # as another hospital would (cxrjax.data.synthetic_formats.SITES).
    c.data.synthetic_site = "same"
    c.data.prepare_workers = 0  # processes preparing the synthetic set; 0 = all cores

    # --- training: Adam, lr 1e-4, betas (0.9, 0.999), lr x0.1 every 3 epochs (the paper) ---
    c.train = mlc.ConfigDict()
    # Batch 64 and 9 epochs are our choice (three lr steps of the paper's schedule; 64 fits
    # two 224-px ResNet18 or DenseNet121 streams in 16 GB at bf16). Scale lr with care.
    c.train.batch_size = 64
    c.train.eval_batch_size = 128
    c.train.lr = 1e-4
    c.train.b1 = 0.9
    c.train.b2 = 0.999
    c.train.lr_decay_factor = 0.1
    c.train.lr_decay_epochs = 3
    c.train.weight_decay = 0.0
    c.train.log_every_steps = 50
    c.train.checkpoint_every_steps = 1000  # and at every epoch end
    # The latest N (2: a corrupt newest one still leaves one to resume from), plus the best by
    # validation mean AUC. An R18 bilinear checkpoint is ~1.9 GB (params + Adam, float32).
    c.train.keep_checkpoints = 2
    c.train.stages = [stage("global", 9, ce=1.0)]

    c.eval = mlc.ConfigDict()
    c.eval.n_boot = 1000  # bootstrap resamples for the 95% CI of the test mean AUC
    # Per-class operating points, chosen on validation (W/eval/thresholds.json) and measured on
    # test: "youden" (max sensitivity + specificity), "max_f1", or "sensitivity" (the most
    # specific threshold reaching target_sensitivity).
    c.eval.threshold_rule = "youden"
    c.eval.target_sensitivity = 0.9  # read by threshold_rule="sensitivity" only
    # "none" | "temperature" | "platt": rescale the fused probabilities per class, fitted on
    # validation, and report the test ECE before and after (ECE is reported in any case).
    c.eval.calibration = "none"
    c.eval.calibration_bins = 15
    # Box localization of the test split at the end of a run, when its images have boxes
    # (NIH's BBox_List_2017, or the synthetic set's own); `python -m cxrjax.localize` anytime.
    c.eval.localization = True
    # The heatmap its tables and picture lead with (all are scored): "gradcam" (stream A's last
    # map), "gradcam_fine" (stream A's block at 2x that resolution), "cam_a" or "cam_b".
    c.eval.localization_heatmap = "gradcam"
    # What accuracy at T(IoU) / T(IoBB) counts: "box" (each ground-truth box) or "image" (each
    # (image, class) pair once, found when any of its boxes is). Wang et al. leave it open; they
    # differ only where an image has two boxes of one class (the synthetic set, not NIH's list).
    c.eval.localization_per = "box"
    # The test split by sex, age band and view position, where the data carry them
    # (eval/subgroups.{json,md,png}): AUCs, calls at the thresholds, ECE, underdiagnosis, gaps.
    c.eval.subgroups = True
    # A logistic regression per class on the metadata alone, fitted on train, beside the model.
    c.eval.metadata_baseline = True
    # The PNG figures: ROC and training curves, reliability diagrams, the localization grid and
    # the subgroup forest plot. False keeps every number, table and file but those pictures
    # (the report says so), a few seconds sooner a run: quick checks, sweeps.
    c.eval.figures = True
    return c


def self_bilinear(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """Row R18-BL: stream A's self-bilinear pooling and its FCE head only (no CE head)."""
    c.model.head_a = None
    c.model.bilinear = True
    c.model.fusion = ("fce",)
    c.train.stages = [stage("global", 9, fce=1.0)]
    return c


def two_stream_bilinear(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """Row R18 + R18-BL: a second stream like stream A, CE on each, bilinear FCE (Global)."""
    c.model.trunk_b = c.model.trunk_a
    c.model.head_b = "ce"
    c.model.bilinear = True
    c.train.stages = [stage("global", 9, ce=0.2, ce_b=0.2, fce=0.6)]
    return c


def f_msml(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """Row R18 + R18-F-MSML: a second stream like stream A with the MSML head, bilinear FCE,
    Global strategy: loss 0.2 * (E_MSML + E_CE) + 0.6 * E_FCE (paper section 2.3)."""
    c.model.trunk_b = c.model.trunk_a
    c.model.head_b = "msml"
    c.model.bilinear = True
    c.train.stages = [stage("global", 9, ce=0.2, msml=0.2, fce=0.6)]
    return c


def local_strategy(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """Table 2's Local strategy for an F-MSML row: 6 epochs of the streams with CE + MSML, then
    3 of FCE fine-tuning from the first stage's best checkpoint; everything trains in both."""
    c.train.stages = [
        stage("streams", 6, ce=0.2, msml=0.2, fce=0.0),
        stage("bilinear", 3, ce=0.0, msml=0.0, fce=1.0),
    ]
    return c


def densenet121_streams(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """An R18 row with DenseNet121 trunks (apply it last). DenseNet121 gives 1024 channels: each
    stream is reduced to 256 by a 1x1 conv before the bilinear product (1024 x 1024 features
    would make the projection 0.5 G parameters)."""
    c.model.trunk_a = "densenet121"
    if c.model.trunk_b is not None:
        c.model.trunk_b = "densenet121"
    c.model.bilinear_reduce = 256 if c.model.bilinear else None
    return c


def local_fixed(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """Table 2's Local-Fixed (after ``local_strategy``): stage 2 trains all but the trunks."""
    c.train.stages[1] = stage("bilinear", 3, trainable="^(?!trunk_).*", fce=1.0)
    return c


def vgg16_stream_b(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """An F-MSML row with a VGG16 stream B (average-pooled to stream A's map size)."""
    c.model.trunk_b = "vgg16"
    return c


def densenet121_vgg16(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """An F-MSML row with DenseNet121 on stream A and VGG16 on stream B, each reduced to 256
    channels before the bilinear product."""
    c.model.trunk_a, c.model.trunk_b, c.model.bilinear_reduce = "densenet121", "vgg16", 256
    return c


# ---------------------------------------------------------------------------------------------
# The table of the paper's rows (Ge et al. 2018, arXiv 1807.07247, Tables 1-2).
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the paper's tables.

    ``build``: the transforms that make its config from ``base_config()``, in order (empty: the
    base recipe; None: not one config, e.g. an ensemble of two runs). ``label``: its name in
    the paper's Table 1 (a Table 2 row: the network and strategy). ``table2``: its label in
    Table 2 (None: not there); ``in_table1``: whether Table 1 lists it. ``paper_mean_auc``: the
    mean AUC over the 14 classes as printed, where it is one we could check, else None."""

    name: str
    label: str
    build: tuple[Callable[[mlc.ConfigDict], mlc.ConfigDict], ...] | None
    paper_mean_auc: float | None = None
    in_table1: bool = True
    table2: str | None = None


_D121 = densenet121_streams  # applied last: it swaps every trunk of an R18 row
# In the paper's order (Table 1, then the Table 2 rows that Table 1 does not list).
ROWS: dict[str, Row] = {r.name: r for r in (
    Row("r18", "R18", (), 0.8239),
    Row("r18_bl", "R18-BL", (self_bilinear,)),
    Row("r18_r18_bl", "R18 + R18-BL", (two_stream_bilinear,)),
    Row("r18_msml", "R18 + R18-F-MSML", (f_msml,), 0.8388, table2="Global"),
    Row("r18_vgg_msml", "R18 + VGG-F-MSML", (f_msml, vgg16_stream_b)),
    Row("d121", "D121", (_D121,), 0.8354),
    Row("d121_bl", "D121-BL", (self_bilinear, _D121)),
    Row("d121_d121_bl", "D121 + D121-BL", (two_stream_bilinear, _D121)),
    Row("d121_msml", "D121 + D121-F-MSML", (f_msml, _D121)),
    Row("d121_vgg_msml", "D121 + VGG-F-MSML", (f_msml, densenet121_vgg16), 0.8537),
    Row("r18_d121_ensemble", "R18 + D121 (ensemble)", None),
    Row("r18_msml_local", "R18 + R18-F-MSML, Local", (f_msml, local_strategy), in_table1=False,
        table2="Local"),
    Row("r18_msml_local_fixed", "R18 + R18-F-MSML, Local-Fixed",
        (f_msml, local_strategy, local_fixed), in_table1=False, table2="Local-Fixed"),
)}
# The reference line the paper compares against: CheXNet (DenseNet121), on its own split.
REFERENCE = ("CheXNet (reference quoted by the paper)", 0.8413)


def row_names() -> list[str]:
    """The rows of ROWS that are one config (not an ensemble of runs), in table order."""
    return [name for name, r in ROWS.items() if r.build is not None]


def row(name: str) -> mlc.ConfigDict:
    """The config of the paper row ``name`` (one of ``row_names()``), ``config.row`` set to it."""
    if name not in row_names():
        raise ValueError(f"row {name!r}: not a config row of the paper's table "
                         f"({', '.join(row_names())})")
    c = base_config()
    for transform in ROWS[name].build:
        c = transform(c)
    c.row = name
    return c

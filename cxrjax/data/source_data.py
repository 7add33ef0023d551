"""Making sure the configured data exists (``ensure_prepared``, every source and mix). For the
NIH-family sources: a synthetic NIH-layout set made and prepared once, a prepared NIH download
checked, a ChestMNIST npz extracted once. (The releases: ``sources``; mixes: ``mixing``.)

gs://: a bucket workdir gets no data (ArrayRecord cannot be written there): each host makes it
in ``mirror.cache_root()``. A data_dir is read in place; of a manual_dir only the label table
and split lists, of a chestmnist_path the file, are fetched into that cache.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

from cxrjax.data import mixing, sources
from cxrjax.io import fileio, mirror, storage_checks

SOURCES = ("nih", "synthetic", "chestmnist", *sources.RELEASES, *sources.SYNTHETIC)


def prepare_synthetic_nih(data_cfg: Any, workdir: str) -> tuple[str, str]:
    """(data_dir, manual_dir) of the synthetic NIH-layout set under
    ``workdir/synthetic/n*_s*_seed*_v*``: generated if absent and prepared if not complete, on
    process 0 while the others wait (the workdir must be shared, as for checkpoints)."""
    from cxrjax.data import builder, synthetic

    remote_workdir = fileio.is_remote(workdir)
    n, size = int(data_cfg.synthetic_n), int(data_cfg.synthetic_size)
    seed = int(data_cfg.synthetic_seed)
    root = os.path.join(mirror.cache_root() if remote_workdir else workdir, "synthetic",
                        f"n{n}_s{size}_seed{seed}_v{synthetic.VERSION}")
    manual, data_dir = os.path.join(root, "nih"), os.path.join(root, "tfds")
    # One writer for a shared workdir; one per host for a host's own cache.
    if remote_workdir or jax.process_index() == 0:
        with mirror.host_lock(root):
            synthetic.generate(manual, n, size, seed)  # reuses a complete set
            builder.build(manual, data_dir, resolution=int(data_cfg.resolution),
                          workers=int(data_cfg.prepare_workers) or None)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("cxrjax: synthetic data prepared")
    return data_dir, manual


def check_nih(data_cfg: Any) -> tuple[str, str]:
    """(data_dir, manual_dir) of a prepared NIH download; fails fast, saying how to prepare."""
    from cxrjax.data import builder

    data_dir = fileio.expand(data_cfg.data_dir)
    storage_checks.check_bucket(data_dir)  # a wrong bucket: one line, not minutes of retries
    try:
        builder.load(data_dir, int(data_cfg.resolution))
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"data.source='nih': {e}.\n1) download ChestX-ray14 into MANUAL_DIR from "
            "https://nihcc.app.box.com/v/ChestXray-NIHCC (images_001..012.tar.gz and "
            "Data_Entry_2017_v2020.csv; NIH's batch_download_zips.py fetches them), then:\n"
            "  cd MANUAL_DIR && for f in images_*.tar.gz; do tar xzf $f; done\n"
            "2) prepare it once:\n  python -m cxrjax.data.prepare --manual_dir MANUAL_DIR "
            f"--data_dir {data_dir} --resolution {data_cfg.resolution}") from None
    manual_dir = data_cfg.manual_dir or ""
    if fileio.is_remote(manual_dir):
        manual_dir = mirror.local_files(manual_dir, ("Data_Entry_2017*.csv*", "*_list.txt*"))
    return data_dir, os.path.expanduser(manual_dir)


def prepare_chestmnist(data_cfg: Any, workdir: str) -> tuple[str, str]:
    """(npz path, extraction cache): the MedMNIST file checked and extracted once under
    ``workdir/chestmnist_cache``."""
    path = data_cfg.chestmnist_path or ""
    if fileio.is_remote(path) and fileio.exists(path):
        path = mirror.local_file(path)
    path = os.path.expanduser(path)
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(
            f"data.chestmnist_path={data_cfg.chestmnist_path!r} is not a file; get "
            "chestmnist.npz or chestmnist_224.npz from MedMNIST (https://medmnist.com)")
    from cxrjax.data import chestmnist

    cache = os.path.join(mirror.cache_root() if fileio.is_remote(workdir) else workdir,
                         "chestmnist_cache")
    with mirror.host_lock(cache):
        chestmnist.NpzRecords(path, cache)  # extract once; fail fast if wrong
    return path, cache


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """Where the configured data lies, resolved: what ``create_datasets`` reads.

    Paths are absolute or ``~``-expanded; a field a source does not use is "".
    """

    data_dir: str = ""  # the prepared chest_xray14 TFDS dataset (nih, synthetic)
    manual_dir: str = ""  # the NIH-layout download: its label table and lists choose the splits
    chestmnist_path: str = ""  # the MedMNIST npz (chestmnist)
    chestmnist_cache: str = ""  # where its members are extracted once ("" = read the npz)
    mixed: tuple = ()  # several sources: ((source, PreparedData), ...), in data.source's order


def ensure_prepared(data_cfg: Any, workdir: str) -> PreparedData:
    """Makes sure the configured data exists; returns where it lies.

    ``synthetic``: generates the NIH-layout set under ``workdir/synthetic/n*_s*_seed*_v*`` (if
    absent) and prepares it through the real builder (if not complete), on process 0 while
    the other processes wait (the workdir must be shared, as for checkpoints). ``nih``: fails
    fast if the dataset is not prepared. ``chestmnist``: checks the npz and extracts it once
    under ``workdir/chestmnist_cache``. ``a+b``: each source as above (``mixing``). A
    release's (or NIH's) ``data.data_dirs`` entry, when set, is its data_dir.

    gs://: a bucket workdir gets no data: each host makes it in ``mirror.cache_root()``
    (``source_data``).
    """
    source = data_cfg.source
    if mixing.is_mixed(source):
        return PreparedData(mixed=mixing.ensure_prepared(data_cfg, workdir, ensure_prepared))
    if mixing.data_dir_of(data_cfg, source) != data_cfg.data_dir:  # data.data_dirs names it
        data_cfg = mixing.source_config(data_cfg, source)
    if sources.release_of(source):
        return PreparedData(data_dir=sources.ensure_prepared(data_cfg, workdir))
    if source == "synthetic":
        data_dir, manual = prepare_synthetic_nih(data_cfg, workdir)
        return PreparedData(data_dir=data_dir, manual_dir=manual)
    if source == "nih":
        data_dir, manual = check_nih(data_cfg)
        return PreparedData(data_dir=data_dir, manual_dir=manual)
    if source == "chestmnist":
        path, cache = prepare_chestmnist(data_cfg, workdir)
        return PreparedData(chestmnist_path=path, chestmnist_cache=cache)
    raise ValueError(f"unknown data.source {source!r}; expected one of {SOURCES}")

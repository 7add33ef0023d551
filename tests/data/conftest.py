"""Fixtures for the data tests: the real NIH sample and small NIH-layout folders made here."""

import gzip
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
NIH_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "nih_sample"


@pytest.fixture(scope="session")
def nih_sample_dir(tmp_path_factory) -> pathlib.Path:
    """An NIH-layout folder: the 207 real sample images plus their rows of the real table."""
    images = NIH_SAMPLE / "images"
    if not images.is_dir():
        pytest.skip(f"the real NIH sample is absent (looked for {images})")
    out = tmp_path_factory.mktemp("nih_sample")
    os.symlink(images, out / "images")
    names = set(os.listdir(images))
    src = REPO_ROOT / "cxrjax" / "data" / "resources" / "Data_Entry_2017_v2020.csv.gz"
    with gzip.open(src, "rt") as f:
        lines = f.read().splitlines()
    rows = [line for line in lines[1:] if line.split(",")[0] in names]
    assert len(rows) == len(names) == 207
    (out / "Data_Entry_2017_v2020.csv").write_text(lines[0] + "\n" + "\n".join(rows) + "\n")
    return out


@pytest.fixture(scope="session")
def prepared_sample(nih_sample_dir, tmp_path_factory):
    """The 207 real images prepared once at 256 px through the real CLI path (2 workers)."""
    from cxrjax.data import prepare

    data_dir = tmp_path_factory.mktemp("prepared")
    assert prepare.main(["--manual_dir", str(nih_sample_dir), "--data_dir", str(data_dir),
                         "--workers", "2"]) == 0
    return data_dir


HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
          "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n")


def write_png(path: pathlib.Path, value: int, size: int = 40, mode: str = "L") -> None:
    """A flat image whose luminance is ``value`` (in the given PIL mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(np.full((size, size), value * 257, np.uint16)).save(path)
    elif mode == "P":
        img = Image.new("P", (size, size), 0)
        img.putpalette([value, value, value] * 256)
        img.save(path)
    elif mode == "RGBA":
        Image.new("RGBA", (size, size), (value, value, value, 255)).save(path)
    else:
        Image.fromarray(np.full((size, size), value, np.uint8)).save(path)


def make_nih_dir(root: pathlib.Path, rows, files=None, subdir="images") -> pathlib.Path:
    """rows: (name, labels, patient); files: name -> (value, mode), default: a row's own file."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [f"{n},{lab},0,{p},40,M,PA,1024,1024,0.14,0.14\n" for n, lab, p in rows]
    (root / "Data_Entry_2017_v2020.csv").write_text(HEADER + "".join(lines))
    if files is None:
        files = {n: (10 * i % 250, "L") for i, (n, _, _) in enumerate(rows)}
    for name, (value, mode) in files.items():
        write_png(root / subdir / name, value, mode=mode)
    return root


@pytest.fixture
def nih_folder():
    """The folder-writing helpers, as ``nih_folder.make_nih_dir`` / ``nih_folder.write_png``."""
    import types
    return types.SimpleNamespace(make_nih_dir=make_nih_dir, write_png=write_png, header=HEADER)

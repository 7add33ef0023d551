"""cxrjax.serving: the contract's decoding, an export run where the model code cannot be
imported, predict --model, and verify."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from export_helpers import CROP, RES, exported_run
from PIL import Image

from cxrjax import predict
from cxrjax.data import image_inputs
from cxrjax.data.labels import CLASSES
from cxrjax.serving import decode, files, verify

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_DICOM = os.path.join(ROOT, "..", "shared", "data", "dicom", "siim_pneumothorax_sample.dcm")


def picture(width, height, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    img = 0.5 + 0.3 * np.sin(x / 7.0) * np.cos(y / 5.0) + rng.normal(0, 0.05, (height, width))
    return np.clip(img, 0, 1)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """PNG and JPEG files of every mode the contract names, larger, smaller and at its size."""
    d = tmp_path_factory.mktemp("images")
    gray = (picture(90, 70) * 255).astype(np.uint8)
    made = {
        "gray.png": Image.fromarray(gray),
        "small.png": Image.fromarray(gray[:20, :30]),
        "exact.png": Image.fromarray(gray[:RES, :RES]),
        "rgb.png": Image.fromarray(np.stack([gray, gray // 2, 255 - gray], -1), "RGB"),
        "rgba.png": Image.fromarray(np.stack([gray, gray, gray, gray], -1), "RGBA"),
        "palette.png": Image.fromarray(gray).convert("P"),
        "deep.png": Image.fromarray((picture(60, 80, 1) * 65535).astype(np.uint16)),
        "photo.jpg": Image.fromarray(gray),
    }
    for name, img in made.items():
        img.save(d / name)
    return {name: str(d / name) for name in made}


def test_serving_decodes_every_mode_exactly_as_predict_does(images):
    for name, path in images.items():
        expected = image_inputs.load_image(path, RES, CROP).image
        np.testing.assert_array_equal(decode.decode_file(path, RES, CROP), expected, name)
    arr = (picture(50, 45, 2) * 65535).astype(np.uint16)
    Image.fromarray(arr).save(os.path.join(os.path.dirname(images["gray.png"]), "a16.png"))
    from_file = image_inputs.load_image(os.path.join(os.path.dirname(images["gray.png"]),
                                                     "a16.png"), RES, CROP).image
    np.testing.assert_array_equal(decode.decode_array(arr, RES, CROP), from_file)
    with pytest.raises(decode.DecodeError, match="uint8 or uint16, got float32"):
        decode.decode_array(arr.astype(np.float32), RES, CROP)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_run(tmp_path_factory)


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def workdir_csv(exported, images, tmp_path_factory):
    """predict --workdir's rows on the images (and a real DICOM when pydicom is there)."""
    workdir, _ = exported
    inputs = list(images.values()) + ([REAL_DICOM] if _has_pydicom() else [])
    out = tmp_path_factory.mktemp("predict_workdir")
    assert predict.main(["--workdir", workdir, "--out", str(out), *inputs]) == 0
    return inputs, {r["path"]: r for r in _csv(out / "predictions.csv")}


def _has_pydicom():
    try:
        import pydicom  # noqa: F401
    except ImportError:
        return False
    return os.path.exists(REAL_DICOM)


BLOCKED_RUN = r"""
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.split(".")[0]
        inside = name.startswith("cxrjax.") and not name.startswith("cxrjax.serving")
        if top == "flax" or inside:
            raise ImportError(f"blocked: {name}")
        return None

sys.meta_path.insert(0, Block())
from cxrjax import serving
model = serving.load(sys.argv[1])
scores = model.predict(sys.argv[2:])
loaded = sorted(m for m in sys.modules if m == "flax" or m.startswith(("flax.", "cxrjax.")))
print(json.dumps({"probs": {h: p.tolist() for h, p in scores.probs.items()},
                  "calls": scores.calls, "calibrated": scores.calibrated.tolist(),
                  "modules": loaded}))
"""


def test_an_export_reproduces_predict_workdir_where_the_model_code_cannot_be_imported(
        exported, workdir_csv):
    _, out = exported
    inputs, rows = workdir_csv
    pictures = [p for p in inputs if not p.endswith(".dcm")]
    done = subprocess.run([sys.executable, "-c", BLOCKED_RUN, out, *pictures],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert all(m.startswith("cxrjax.serving") or m == "cxrjax" for m in result["modules"])
    assert "trained on synthetic images" in done.stderr  # the run's limitation, as predict
    for i, path in enumerate(pictures):
        row = rows[path]
        fused = [float(row[f"prob_{c}"]) for c in CLASSES]
        np.testing.assert_allclose(result["probs"]["fused"][i], fused, atol=1e-5, rtol=0)
        for head in ("ce", "fce", "msml"):
            np.testing.assert_allclose(result["probs"][head][i],
                                       [float(row[f"{head}_{c}"]) for c in CLASSES],
                                       atol=1e-5, rtol=0)
        assert result["calls"][i] == [None if row[f"call_{c}"] == "" else
                                      row[f"call_{c}"] == "positive" for c in CLASSES]
    slope = 0.5 + 0.1 * np.arange(14)  # export_helpers' temperature rescaling
    p = np.array(result["probs"]["fused"])
    np.testing.assert_allclose(result["calibrated"],
                               1 / (1 + np.exp(-slope * np.log(p / (1 - p)))), rtol=1e-9)


def test_predict_model_gives_predict_workdirs_rows_dicom_included(exported, workdir_csv,
                                                                   tmp_path, capsys):
    _, out = exported
    inputs, rows = workdir_csv
    assert predict.main(["--model", out, "--out", str(tmp_path / "new" / "out"), *inputs]) == 0
    printed = capsys.readouterr()
    assert "no heatmaps" in printed.out and "trained on synthetic images" in printed.err
    got = _csv(tmp_path / "new" / "out" / "predictions.csv")
    assert [r["path"] for r in got] == inputs
    numeric = [f"prob_{c}" for c in CLASSES] + [f"{h}_{c}" for h in ("ce", "fce", "msml")
                                                for c in CLASSES]
    for r in got:
        want = rows[r["path"]]
        np.testing.assert_allclose([float(r[k]) for k in numeric],
                                   [float(want[k]) for k in numeric], atol=1e-5, rtol=0)
        for key in ("warning", "positive_findings", "view_position", "patient_age",
                    *(f"call_{c}" for c in CLASSES)):
            assert r[key] == want[key], key
        assert r["heatmap"] == ""
    with pytest.raises(SystemExit) as exit_code:
        predict.main(["--model", out, "--workdir", out, *inputs])
    assert exit_code.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_verify_passes_then_fails_one_line_each_when_an_output_or_a_file_changes(
        exported, tmp_path, capsys):
    _, out = exported
    assert verify.main([out]) == 0
    assert capsys.readouterr().out.startswith("ok: 3 reference images")
    altered = str(tmp_path / "altered")
    shutil.copytree(out, altered)
    path = os.path.join(altered, files.EXPECTED)
    with np.load(path) as saved:
        expected = {k: saved[k] for k in saved.files}
    expected["fused"][1, 2] += 2e-5
    np.savez(path, **expected)
    assert verify.main([altered]) == 1
    err = capsys.readouterr().err.splitlines()
    name = json.load(open(os.path.join(altered, files.MANIFEST)))["reference"]["inputs"][1]
    assert err[0].startswith(f"FAIL {name}: fused Effusion ") and "> 1e-05" in err[0]
    assert len(err) == 2 and err[1].startswith("1 check(s) failed")
    with open(os.path.join(altered, files.PREPROCESSING), "a") as f:
        f.write(" ")
    assert verify.main([altered]) == 1
    assert f"FAIL {files.PREPROCESSING}: sha256 differs" in capsys.readouterr().err
    assert verify.main([str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.startswith("error: export folder not found")

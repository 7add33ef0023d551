"""External validation and the adjudicated NIH labels: numbers checked against scikit-learn."""

import ast
import csv
import gzip
import json
import os
import pathlib

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from test_evaluate import tiny_run

from cxrjax import evaluate
from cxrjax.data.labels import CLASSES
from cxrjax.evaluation import external, google2019, masked_metrics

GOOGLE = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data" / "nih" / \
    "google2019_nih-chest-xray-labels.csv.gz"


def _random_set(seed: int, n: int = 300, known: float = 0.8) -> external.Scored:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 14)) < 0.25).astype(np.uint8)
    mask = (rng.random((n, 14)) < known).astype(np.uint8)
    probs = np.clip(rng.random((n, 14)) * 0.7 + labels * rng.random((n, 14)) * 0.5, 0, 1)
    return external.Scored([f"i{k}" for k in range(n)], probs.astype(np.float32), labels, mask)


def _sklearn_mean(s: external.Scored, classes) -> tuple[dict, float]:
    per = {}
    for c in classes:
        k = CLASSES.index(c)
        known = s.mask[:, k] == 1
        per[c] = roc_auc_score(s.labels[known, k], s.probs[known, k])
    return per, float(np.mean(list(per.values())))


def test_masked_aucs_are_sklearns_over_the_known_labels():
    s = _random_set(0)
    aucs = masked_metrics.class_aucs(s.probs, s.labels, s.mask)
    expected, _ = _sklearn_mean(s, CLASSES)
    np.testing.assert_allclose(aucs, list(expected.values()), rtol=0, atol=1e-12)


def test_compare_gives_the_shared_classes_means_and_difference_of_sklearn():
    ext, own = _random_set(1, 250), _random_set(2, 400, known=1.0)
    out = external.compare(ext, own, CLASSES, "synthetic_chexpert", n_boot=200, seed=0)
    shared = ["Atelectasis", "Cardiomegaly", "Effusion", "Pneumonia", "Pneumothorax",
              "Consolidation", "Edema"]  # the NIH classes CheXpert labels
    assert out["classes_shared"] == out["classes_compared"] == shared
    per, mean = _sklearn_mean(ext, shared)
    _, own_mean = _sklearn_mean(own, shared)
    for c in shared:
        assert out["external"]["per_class"][c] == pytest.approx(per[c], abs=1e-12)
        lo, hi = out["external"]["per_class_ci95"][c]
        assert lo < per[c] < hi
    assert out["external"]["mean_auc"] == pytest.approx(mean, abs=1e-12)
    assert out["own_test"]["mean_auc"] == pytest.approx(own_mean, abs=1e-12)
    assert out["mean_auc_difference"] == pytest.approx(mean - own_mean, abs=1e-12)
    lo, hi = out["mean_auc_difference_ci95"]
    assert lo < mean - own_mean < hi and hi - lo < 0.2
    assert out["external"]["n_known"]["Edema"] == int(ext.mask[:, CLASSES.index("Edema")].sum())


def test_a_class_without_known_positives_in_one_set_is_shared_but_not_compared():
    ext, own = _random_set(3), _random_set(4)
    ext.labels[:, CLASSES.index("Edema")] = 0
    out = external.compare(ext, own, CLASSES, "chexpert", n_boot=50)
    assert "Edema" in out["classes_shared"] and out["classes_not_compared"] == ["Edema"]
    assert "Edema" not in out["external"]["per_class"]


def test_dataset_config_types_overrides_and_refuses_unknown_fields():
    from cxrjax import recipe

    config = recipe.row("r18")
    cfg = external.dataset_config(config, "synthetic_padchest",
                                  ["synthetic_seed=4", "synthetic_site=other", "views=PA"])
    assert (cfg.data.synthetic_seed, cfg.data.synthetic_site) == (4, "other")
    assert tuple(cfg.data.views) == ("PA",) and config.data.source == "nih"
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        external.dataset_config(config, "padchest", ["colour=blue"])
    with pytest.raises(ValueError, match="data.synthetic_site"):
        external.dataset_config(config, "synthetic_padchest", ["synthetic_site=mars"])
    assert external.dataset_label("synthetic_padchest", ["synthetic_site=other"]) == \
        "synthetic_padchest_synthetic_site-other"


# ---------------------------------------------------------------------------------------------
# A (tiny, untrained) run scored on a synthetic PadChest set: one cell recomputed with sklearn.
# ---------------------------------------------------------------------------------------------


def _padchest_truth(csv_path: str, classes) -> dict[str, np.ndarray]:
    """Image id -> 0/1 per class, read from the synthetic PadChest CSV's term lists here."""
    terms = {"Atelectasis": "atelectasis", "Cardiomegaly": "cardiomegaly",
             "Effusion": "pleural effusion", "Infiltration": "infiltrates", "Mass": "mass",
             "Nodule": "nodule", "Pneumonia": "pneumonia", "Pneumothorax": "pneumothorax",
             "Consolidation": "consolidation", "Edema": "pulmonary edema",
             "Emphysema": "emphysema", "Fibrosis": "pulmonary fibrosis",
             "Pleural_Thickening": "pleural thickening", "Hernia": "hiatal hernia"}
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["ImageID"]: np.array(
        [terms[c] in ast.literal_eval(r["Labels"]) for c in classes], np.uint8) for r in rows}


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("ext") / "run")
    tiny_run(workdir)
    return workdir


def test_evaluate_dataset_scores_a_run_on_padchest_as_sklearn_does(tiny_workdir, tmp_path,
                                                                    capsys):
    workdir = tiny_workdir
    out_json = tmp_path / "ext.json"
    code = evaluate.main(["--workdir", workdir, "--dataset", "synthetic_padchest", "--data",
                          "synthetic_seed=5", "--data", "synthetic_n=120", "--n_boot", "100",
                          "--json", str(out_json)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    result = json.loads(out_json.read_text())
    label = "synthetic_padchest_synthetic_seed-5_synthetic_n-120"
    assert result["label"] == label and "External validation" in printed
    eval_dir = pathlib.Path(workdir) / "eval"
    assert json.loads((eval_dir / f"external_{label}_metrics.json").read_text()) == result
    # Independently: the written probabilities, the CSV's labels, scikit-learn.
    with open(eval_dir / f"external_{label}_predictions.csv", newline="") as f:
        rows = list(csv.reader(f))
    ids = [r[0] for r in rows[1:]]
    probs = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    assert len(ids) == result["n_images"] > 0
    root = pathlib.Path(workdir) / "synthetic"
    csv_path = next(root.glob("padchest_*/padchest/PADCHEST_*.csv"))
    truth = _padchest_truth(str(csv_path), CLASSES)
    labels = np.stack([truth[i] for i in ids])
    per = {}
    for c in result["classes_compared"]:
        k = CLASSES.index(c)
        per[c] = roc_auc_score(labels[:, k], probs[:, k])
        assert result["external"]["per_class"][c] == pytest.approx(per[c], abs=1e-6)
    assert result["external"]["mean_auc"] == pytest.approx(np.mean(list(per.values())),
                                                           abs=1e-6)
    own_ids, own_probs, own_labels, _ = evaluate.predict_workdir(workdir)
    own = np.mean([roc_auc_score(own_labels[:, CLASSES.index(c)],
                                 own_probs["fused"][:, CLASSES.index(c)])
                   for c in result["classes_compared"]])
    assert result["own_test"]["mean_auc"] == pytest.approx(own, abs=1e-6)
    assert result["mean_auc_difference"] == pytest.approx(
        result["external"]["mean_auc"] - own, abs=1e-6)
    assert (eval_dir / f"external_{label}.md").read_text().startswith("## External validation")


def test_the_matrix_script_writes_markdown_heat_map_and_json_of_every_cell(tiny_workdir,
                                                                            tmp_path, capsys):
    import importlib.util

    path = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "external_validation.py"
    spec = importlib.util.spec_from_file_location("external_validation", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "matrix"
    assert script.main(["--runs", tiny_workdir, "--datasets", "synthetic_padchest",
                        "synthetic_padchest:synthetic_site=other", "--data", "synthetic_seed=5",
                        "--data", "synthetic_n=120", "--n_boot", "50", "--out", str(out)]) == 0
    text = (out / "external_validation.md").read_text()
    assert text in capsys.readouterr().out
    cells = json.loads((out / "external_validation.json").read_text())["cells"]
    assert len(cells) == 1 and len(cells[0]) == 2
    header, _, row = text.splitlines()[:3]
    assert "synthetic_site-other" in header and row.startswith("| synthetic (run) |")
    assert text.splitlines()[3].startswith("| own test, same classes |")
    assert "Every dataset read with synthetic_seed=5, synthetic_n=120." in text
    for cell in cells[0]:
        assert f"{cell['external']['mean_auc']:.3f}" in row
        assert f"{len(cell['classes_compared'])} classes" in row
    assert (out / "external_validation.png").stat().st_size > 10_000
    assert script.main(["--runs", tiny_workdir, "--datasets", ":x=1"]) == 2


def test_recalibrate_fits_the_targets_val_reports_its_test_and_feeds_predict(
        tiny_workdir, tmp_path, capsys):
    """--recalibrate val on another site's synthetic PadChest (the matrix test's set): the
    thresholds are the target val's, both columns count the same test images, and the file
    drives predict's calls."""
    from PIL import Image

    from cxrjax import predict
    from cxrjax.data import pipeline, release_splits
    from cxrjax.evaluation import evaluator, operating_points

    data = ["synthetic_seed=5", "synthetic_n=120", "synthetic_site=other"]
    argv = ["--workdir", tiny_workdir, "--dataset", "synthetic_padchest", "--recalibrate", "val",
            "--calibrator", "temperature", "--n_boot", "0", "--json", str(tmp_path / "r.json")]
    assert evaluate.main(argv + [x for d in data for x in ("--data", d)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "r.json").read_text())
    label = "synthetic_padchest_synthetic_seed-5_synthetic_n-120_synthetic_site-other"
    eval_dir = pathlib.Path(tiny_workdir) / "eval"
    assert json.loads((eval_dir / f"recalibration_{label}.json").read_text()) == result
    assert printed == (eval_dir / f"recalibration_{label}.md").read_text()
    assert printed.startswith(f"## Recalibration for {label}")
    # Independently: the target's splits scored again, one class's threshold refitted.
    run = evaluator.open_run(tiny_workdir)
    cfg = external.dataset_config(run.config, "synthetic_padchest", data)
    target = evaluator.Evaluator(run.evaluator.model, run.config.model.fusion,
                                 pipeline.open_datasets(cfg, tiny_workdir), run.evaluator.mesh)
    val = external.predict_masked(target, run.variables, "val")
    test_ids = target.datasets.image_ids("test")
    assert result["target_test_split_hash"] == release_splits.split_hash(test_ids)
    assert result["images"]["target_test"] == len(test_ids)
    points = operating_points.OperatingPoints.load(result["thresholds_file"])
    fitted = [c for c in CLASSES if c not in result["thresholds_kept_from_run"]]
    assert fitted, result["thresholds_kept_from_run"]
    k = CLASSES.index(fitted[0])
    known = val.mask[:, k] == 1
    expected = operating_points.choose_thresholds(val.probs[known, k], val.labels[known, k])
    assert points.thresholds[k] == expected[0] == \
        result["after"]["per_class"][fitted[0]]["threshold"]
    for c in CLASSES:
        before, after = result["before"]["per_class"][c], result["after"]["per_class"][c]
        if before["threshold"] is not None and after["threshold"] is not None:  # JSON: NaN
            assert sum(before[x] for x in ("tp", "fp", "fn", "tn")) == \
                sum(after[x] for x in ("tp", "fp", "fn", "tn"))
    # The file round-trips through predict --thresholds; another class list is one line.
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40), np.uint8)).save(image)
    out = tmp_path / "pred"
    assert predict.main(["--workdir", tiny_workdir, "--thresholds", result["thresholds_file"],
                         "--out", str(out), str(image)]) == 0
    assert f"chosen on the validation split of {label}" in capsys.readouterr().out
    with open(out / "predictions.csv", newline="") as f:
        row = next(csv.DictReader(f))
    for c, t in zip(CLASSES, points.thresholds, strict=True):
        p = float(row[f"prob_{c}"])
        assert row[f"call_{c}"] == ("" if np.isnan(t) else
                                    "positive" if p >= t else "negative")
    other = tmp_path / "other.json"
    operating_points.OperatingPoints(("Mass",), np.array([0.5]), "youden").save(other)
    for bad, message in ((other, "other classes"), (tmp_path / "none.json", "not found")):
        assert predict.main(["--workdir", tiny_workdir, "--thresholds", str(bad),
                             str(image)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def test_recalibrate_flag_errors_are_one_line(capsys):
    for argv, message in (
            (["--workdir", "w", "--recalibrate", "val"], "needs one --workdir and --dataset"),
            (["--workdir", "w", "--dataset", "x", "--calibrator", "platt"],
             "--calibrator applies to --recalibrate only"),
            (["--workdir", "w", "--dataset", "x", "--recalibrate", "val", "--split", "val"],
             "--split does not apply to --recalibrate")):
        assert evaluate.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def test_the_report_gets_one_block_per_external_set_replaced_on_a_rerun(tmp_path):
    (tmp_path / "report.md").write_text("# Run\n\nbody\n")
    external.put_in_report(str(tmp_path), "a", "## A 1\n")
    external.put_in_report(str(tmp_path), "b", "## B\n")
    external.put_in_report(str(tmp_path), "a", "## A 2\n")
    text = (tmp_path / "report.md").read_text()
    assert text.count("## A") == 1 and "## A 2" in text and "## B" in text
    assert text.startswith("# Run\n\nbody\n")


def test_dataset_flag_errors_are_one_line(tmp_path, capsys):
    assert evaluate.main(["--predictions", "x.csv", "--dataset", "padchest"]) == 2
    assert "--dataset applies to one --workdir" in capsys.readouterr().err
    assert evaluate.main(["--predictions", "x.csv", "--data", "a=b", "--labels",
                          f"google2019={GOOGLE}"]) == 2
    assert "--data applies to --dataset only" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# google2019: NIH's adjudicated labels.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def google_rows():
    if not GOOGLE.exists():
        pytest.skip(f"the google2019 labels are absent (looked for {GOOGLE})")
    with gzip.open(GOOGLE, "rt", newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def test_the_file_is_read_by_column_with_its_crlf_and_bracketed_headers(google_rows):
    header, rows = google_rows
    ids, labels, sets = google2019.read_labels(str(GOOGLE))
    assert len(ids) == len(rows) == 4376 and len(header) == 16
    assert set(sets) == {"test", "val"}
    col = header.index("Nodule or mass")
    assert labels[:, 1].sum() == sum(r[col] == "YES" for r in rows)


def test_predictions_scored_on_google2019_match_sklearn(google_rows, tmp_path, capsys):
    header, rows = google_rows
    rng = np.random.default_rng(0)
    picked = rows[::7]
    ids = [r[0] for r in picked]
    probs = rng.random((len(ids), 14))
    path = tmp_path / "preds.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Image Index", *CLASSES])
        w.writerows([i, *p] for i, p in zip(ids, probs, strict=True))
    out = tmp_path / "g.json"
    assert evaluate.main(["--predictions", str(path), "--labels", f"google2019={GOOGLE}",
                          "--n_boot", "100", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert list(result["per_class"]) == ["Pneumothorax", "Nodule or mass"]
    assert result["not_scored"] == ["Fracture", "Airspace opacity"] and "max(Nodule, Mass)" \
        in printed
    y = {f: np.array([r[header.index(f)] == "YES" for r in picked]) for f in
         ("Pneumothorax", "Nodule or mass")}
    pneumo = roc_auc_score(y["Pneumothorax"], probs[:, CLASSES.index("Pneumothorax")])
    nodule = roc_auc_score(y["Nodule or mass"], np.maximum(probs[:, CLASSES.index("Nodule")],
                                                           probs[:, CLASSES.index("Mass")]))
    assert result["per_class"]["Pneumothorax"] == pytest.approx(pneumo, abs=1e-12)
    assert result["per_class"]["Nodule or mass"] == pytest.approx(nodule, abs=1e-12)
    assert result["mean_auc"] == pytest.approx((pneumo + nodule) / 2, abs=1e-12)
    assert result["n_images"] == len(ids)


def test_models_with_fracture_and_opacity_are_scored_on_them_too(google_rows):
    ids = [r[0] for r in google_rows[1][:600]]
    classes = ("Pneumothorax", "Fracture", "Lung Opacity", "Mass")
    probs = np.random.default_rng(1).random((len(ids), 4))
    result = google2019.score(ids, probs, classes, str(GOOGLE), n_boot=0)
    assert set(result["per_class"]) == {"Pneumothorax", "Fracture", "Airspace opacity"}


def test_google2019_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(google2019.ENV, raising=False)
    preds = tmp_path / "p.csv"
    preds.write_text("Image Index," + ",".join(CLASSES) + "\nnot_there.png" + ",0.5" * 14 + "\n")
    assert evaluate.main(["--predictions", str(preds), "--labels", "google2019"]) == 2
    assert "google2019=PATH" in capsys.readouterr().err
    assert evaluate.main(["--predictions", str(preds), "--labels",
                          f"google2019={tmp_path / 'nope.csv'}"]) == 2
    assert "no such file" in capsys.readouterr().err
    if GOOGLE.exists():
        assert evaluate.main(["--predictions", str(preds), "--labels",
                              f"google2019={GOOGLE}"]) == 2
        err = capsys.readouterr().err
        assert "none of the 1 scored images" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.csv"
    bad.write_text("Image Index,Fracture,Pneumothorax,Airspace opacity,Nodule or mass,Set Id\r\n"
                   "a.png,NO,MAYBE,NO,NO,test\r\n")
    with pytest.raises(ValueError, match="'MAYBE' is not YES or NO"):
        google2019.read_labels(str(bad))
    assert os.environ.get(google2019.ENV) is None


def test_evaluate_refuses_a_run_whose_split_now_holds_other_images(tiny_workdir, capsys):
    path = pathlib.Path(tiny_workdir) / "eval" / "test_metrics.json"
    existed = path.exists()
    saved = path.read_text() if existed else None
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"split_hashes": {"test": "0" * 64}}))
    try:
        assert evaluate.main(["--workdir", tiny_workdir, "--n_boot", "0"]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines()
                  if line.startswith("error:")]  # (the synthetic set's progress bar aside)
        assert len(errors) == 1 and "test split(s) now hold other images" in errors[0]
    finally:
        path.unlink()
        if existed:
            path.write_text(saved)


def test_the_evaluator_scores_a_release_over_known_labels_only(tmp_path):
    """What a run trained on a release reports: per class over the images whose label is
    known (CheXpert's uncertain ones left out under ``ignore``)."""
    from helpers import random_variables, tiny_config

    from cxrjax import models
    from cxrjax.data import pipeline
    from cxrjax.evaluation import inference
    from cxrjax.evaluation.evaluator import Evaluator

    config = tiny_config("r18")
    config.data.update(dict(source="synthetic_chexpert", synthetic_n=240, synthetic_size=40,
                            synthetic_seed=3, resolution=36, workers=0))
    config.train.update(dict(batch_size=8, eval_batch_size=8))
    ds = pipeline.open_datasets(config, str(tmp_path))
    model = models.build_model(config.model)
    variables = random_variables(model, 32)
    ev = Evaluator(model, config.model.fusion, ds, inference.create_mesh())
    scores = ev.score(variables, "test", n_boot=20)
    assert scores.label_mask is not None and not scores.label_mask.all()
    fused = scores.results["fused"]
    assert fused["masked"] and np.isnan(fused["w_auc"])
    for c, auc in fused["per_class"].items():
        k = CLASSES.index(c)
        known = scores.label_mask[:, k] == 1
        y = scores.labels[known, k]
        if len(set(y)) < 2:
            assert np.isnan(auc)
        else:
            assert auc == pytest.approx(roc_auc_score(y, scores.probs["fused"][known, k]),
                                        abs=1e-6)
    assert fused["n_known"]["Mass"] == 0  # CheXpert does not label Mass
    assert ev.validate(variables)["mean_auc"] == pytest.approx(
        ev.score(variables, "val", n_boot=0).results["fused"]["mean_auc"])


def test_a_run_is_scored_on_google2019_labels_of_its_split(tiny_workdir, tmp_path, capsys):
    """--workdir: the run's test images that the file lists (here a file in Google's format
    written for the synthetic run's own test images, whose ids are real NIH names)."""
    ids, probs, _, _ = evaluate.predict_workdir(tiny_workdir)
    rng = np.random.default_rng(2)
    truth = (rng.random((len(ids), 2)) < 0.4)
    truth[:2] = [[True, True], [False, False]]
    header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View "
              "Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],Fracture,"
              "Pneumothorax,Airspace opacity,Nodule or mass,Set Id")
    lines = [header] + [f"{i},No Finding,0,1,50,M,PA,2500,2048,0.14,0.14,NO,"
                        f"{'YES' if p else 'NO'},NO,{'YES' if n else 'NO'},test"
                        for i, (p, n) in zip(ids, truth, strict=True)]
    path = tmp_path / "google.csv"
    path.write_bytes("\r\n".join(lines).encode())
    assert evaluate.main(["--workdir", tiny_workdir, "--labels", f"google2019={path}",
                          "--n_boot", "50"]) == 0
    assert "max(Nodule, Mass)" in capsys.readouterr().out
    result = json.loads((pathlib.Path(tiny_workdir) / "eval" / "google2019_metrics.json")
                        .read_text())
    fused = probs["fused"]
    expected = roc_auc_score(truth[:, 1], np.maximum(fused[:, CLASSES.index("Nodule")],
                                                     fused[:, CLASSES.index("Mass")]))
    assert result["per_class"]["Nodule or mass"] == pytest.approx(expected, abs=1e-6)
    assert result["n_images"] == len(ids) and result["split"] == "test"

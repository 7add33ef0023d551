"""A model's classes come from its config: a run on another class list than NIH's 14 trains,
is scored, and writes its predictions, report and calls under its own class names."""

import csv
import glob
import json
import os

import numpy as np
import pytest
from helpers import tiny_config

from cxrjax import predict, recipe, train
from cxrjax.config_checks import ConfigError, check_config
from cxrjax.data.labels import CLASSES
from cxrjax.evaluation import report_plots
from cxrjax.io import run_layout

# The CheXpert competition's five, in the label space's names.
FIVE = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion")


def five_class_config(tiny_chexpert):
    c = tiny_config("r18", crop=32, batch=8)
    c.data.update({"source": "chexpert", "data_dir": str(tiny_chexpert / "tfds"),
                   "resolution": 40, "workers": 0, "classes": FIVE})
    c.model.num_classes = len(FIVE)
    c.train.eval_batch_size = 16
    c.eval.n_boot = 20
    for stage in c.train.stages:
        stage.epochs = 1
    return c


def test_a_five_class_run_trains_scores_and_writes_its_own_class_columns(
        tiny_chexpert, tiny_data, tmp_path, capsys):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(five_class_config(tiny_chexpert), workdir)
    with open(run_layout.eval_path(workdir, run_layout.TEST_PREDICTIONS)) as f:
        header = next(csv.reader(f))
    assert header == ["Image Index", *(f"prob_{c}" for c in FIVE)]
    with open(run_layout.eval_path(workdir, run_layout.TEST_METRICS)) as f:
        metrics = json.load(f)
    assert list(metrics["per_class"]) == list(FIVE)
    assert metrics["w_auc"] is None and metrics["d_auc"] is None  # need NIH's No Finding
    assert list(metrics["operating_points"]["per_class"]) == list(FIVE)
    assert "boxes are NIH's" in metrics["localization"]["skipped"]
    with open(run_layout.eval_path(workdir, run_layout.THRESHOLDS)) as f:
        assert json.load(f)["classes"] == list(FIVE)
    with open(run_layout.path(workdir, run_layout.REPORT)) as f:
        report = f.read()
    assert "| Edema |" in report and "| Infiltration |" not in report
    assert "W-AUC, D-AUC and N-AUC are n/a" in report
    # predict: the run's classes in its CSV, its thresholds read for those classes.
    image = sorted(glob.glob(str(tiny_chexpert / "chexpert" / "**" / "*.jpg"),
                             recursive=True))[0]
    out = tmp_path / "predict"
    assert predict.main(["--workdir", workdir, "--out", str(out), image]) == 0
    with open(out / "predictions.csv") as f:
        row = next(csv.DictReader(f))
    assert [k for k in row if k.startswith("prob_")] == [f"prob_{c}" for c in FIVE]
    assert row["top_finding"] in FIVE
    assert "Cardi" in capsys.readouterr().out
    # predict --thresholds: a file for the run's five classes is read for them (a site's
    # recalibrated file); one for NIH's 14 is one line before any image is scored.
    from cxrjax.evaluation.operating_points import OperatingPoints

    mine, nih = tmp_path / "five.json", tmp_path / "nih.json"
    OperatingPoints(FIVE, np.full(5, 0.0), "youden").save(mine)
    OperatingPoints(CLASSES, np.full(len(CLASSES), 0.5), "youden").save(nih)
    assert predict.main(["--workdir", workdir, "--thresholds", str(mine), "--out", str(out),
                         image]) == 0
    with open(out / "predictions.csv") as f:
        row = next(csv.DictReader(f))
    assert [row[f"call_{c}"] for c in FIVE] == ["positive"] * 5  # every p >= 0
    capsys.readouterr()
    assert predict.main(["--workdir", workdir, "--thresholds", str(nih), image]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "than the 5 scored here" in err, err
    # --recalibrate on an NIH target: its 14 labels read in the model's five's order.
    from cxrjax import evaluate

    assert evaluate.main(["--workdir", workdir, "--dataset", "nih", "--data",
                          f"manual_dir={tiny_data / 'nih'}", "--data",
                          f"data_dir={tiny_data / 'tfds'}", "--recalibrate", "val",
                          "--n_boot", "0"]) == 0, capsys.readouterr().err
    written = [n for n in os.listdir(os.path.join(workdir, "eval"))
               if n.startswith("recalibration_nih") and n.endswith("_thresholds.json")]
    assert len(written) == 1, written
    assert OperatingPoints.load(os.path.join(workdir, "eval", written[0]), FIVE).classes == FIVE


@pytest.mark.parametrize("source, classes, message", [
    ("chexpert", ("Edema", "Edema"), "expected distinct names"),
    ("chexpert", ("Edema", "Oedema"), "expected distinct names"),
    ("nih", FIVE, "label the NIH 14 in the paper's order only"),
    ("nih+chexpert", FIVE, "the source.s. nih label"),
])
def test_a_bad_class_list_is_one_config_error(source, classes, message):
    config = recipe.row("r18")
    config.data.source, config.data.classes = source, classes
    config.model.num_classes = len(classes)
    with pytest.raises(ConfigError, match=message):
        check_config(config)
    config.data.source = "synthetic_padchest+chexpert"
    if len(set(classes)) == len(classes) and "Oedema" not in classes:
        check_config(config)  # release sources give any class list of the label space


def test_the_roc_grid_fits_any_number_of_classes_and_draws_known_labels_only(
        tmp_path, monkeypatch):
    import numpy as np

    rng = np.random.default_rng(0)
    labels = (rng.random((40, len(FIVE))) < 0.4).astype(int)
    mask = np.ones_like(labels)
    mask[:10, 1] = 0  # Cardiomegaly unknown on 10 images
    drawn = []
    curve = report_plots.roc_curve
    monkeypatch.setattr(report_plots, "roc_curve", lambda y, s: drawn.append(len(y)) or curve(y, s))
    path = tmp_path / "roc.png"
    report_plots.plot_roc_curves(str(path), rng.random(labels.shape), labels, None, FIVE,
                                 mask=mask)
    assert path.stat().st_size > 0 and drawn == [40, 30, 40, 40, 40]


def test_an_nih_target_is_read_as_its_14_and_put_in_the_models_class_order():
    import numpy as np

    from cxrjax.data.labels import CLASSES
    from cxrjax.evaluation import external

    config = recipe.row("r18")
    config.data.update({"source": "chexpert", "classes": FIVE})
    config.model.num_classes = len(FIVE)
    target = external.dataset_config(config, "nih")
    assert tuple(target.data.classes) == CLASSES  # what the NIH records label
    assert tuple(external.dataset_config(config, "padchest").data.classes) == FIVE
    labels = np.arange(2 * 14).reshape(2, 14) % 2
    scored = external.Scored(["a", "b"], np.zeros((2, 5)), labels, np.ones_like(labels))
    mine = external.in_run_classes(scored, CLASSES, ("Edema", "Lung Opacity"))
    np.testing.assert_array_equal(mine.labels[:, 0], labels[:, CLASSES.index("Edema")])
    np.testing.assert_array_equal(mine.mask, [[1, 0], [1, 0]])  # NIH has no Lung Opacity


def test_the_printed_table_of_data_with_missing_labels_says_why_w_d_n_auc_are_na():
    import numpy as np

    from cxrjax.evaluation import masked_metrics
    from cxrjax.evaluation import prediction_files as predictions

    rng = np.random.default_rng(0)
    labels = (rng.random((30, 3)) < 0.4).astype(int)
    labels[:, 2] = 0
    summary = masked_metrics.as_summary(rng.random(labels.shape), labels, np.ones_like(labels),
                                        FIVE[:3], n_boot=0)
    text = predictions.format_table(summary)
    assert "left out of AUC (one label value): Consolidation" in text
    assert "W-AUC, D-AUC, N-AUC: n/a, they need every label known" in text
    assert "left out of D-AUC" not in text

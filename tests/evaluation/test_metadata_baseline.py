"""Tests of the metadata-only baseline (cxrjax.evaluation.metadata_baseline)."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from cxrjax import recipe
from cxrjax.data import patient_metadata as metadata
from cxrjax.data.labels import CLASSES, load_label_table
from cxrjax.evaluation import metadata_baseline, metrics
from cxrjax.evaluation.section import SectionInputs


def _by_hand(table, rows) -> np.ndarray:
    """The documented features, built here from the table's raw columns."""
    sex, view = np.asarray(table.sex)[rows], np.asarray(table.view)[rows]
    age = table.age[rows].astype(float)
    known = (age >= 0) & (age <= 120)
    return np.stack([sex == "F", sex == "M", np.where(known, age, 0), ~known, view == "PA",
                     view == "AP", ~np.isin(view, ["PA", "AP", ""]),
                     np.log1p(table.follow_up[rows])], axis=1).astype(float)


class _Datasets:
    def __init__(self, splits):
        self.splits = splits

    def image_ids(self, split):
        return self.splits[split]


@pytest.mark.filterwarnings("ignore:.*(one label value|NaN and left out):RuntimeWarning")
def test_the_baseline_section_matches_scikit_learn_fitted_here(tmp_path, monkeypatch):
    table = load_label_table()
    rng = np.random.default_rng(0)
    picked = rng.choice(len(table), 2500, replace=False)
    train_rows, test_rows = picked[:2000], picked[2000:]
    ids = {"train": [table.image_ids[r] for r in train_rows],
           "test": [table.image_ids[r] for r in test_rows]}
    test_labels = table.labels[test_rows].astype(int)
    model_probs = np.clip(0.2 + 0.3 * test_labels + rng.normal(0, 0.3, test_labels.shape), 0, 1)
    model = metrics.summary(model_probs, test_labels, n_boot=0)
    test = type("Scores", (), {"image_ids": ids["test"], "labels": test_labels,
                               "results": {"fused": model}})()
    evaluator = type("Evaluator", (), {"datasets": _Datasets(ids)})()
    monkeypatch.setattr(metadata, "run_table", lambda config, workdir: table)
    config = recipe.base_config()
    config.eval.n_boot = 30
    result = metadata_baseline.SECTION.compute(SectionInputs(
        config, str(tmp_path), test, None, evaluator=evaluator, workdir=str(tmp_path)))

    x_train, x_test = _by_hand(table, train_rows), _by_hand(table, test_rows)
    scaler = StandardScaler().fit(x_train)
    aucs = {}
    for c, name in enumerate(CLASSES):
        y = table.labels[train_rows, c]
        if np.unique(test_labels[:, c]).size < 2:
            continue  # no AUC on test
        if not y.any():  # no train positive: a constant prediction
            aucs[name] = 0.5
            continue
        fit = LogisticRegression(max_iter=1000).fit(scaler.transform(x_train), y)
        aucs[name] = roc_auc_score(test_labels[:, c],
                                   fit.predict_proba(scaler.transform(x_test))[:, 1])
    for name, auc in aucs.items():
        assert result["per_class"][name] == pytest.approx(auc, abs=1e-6)
    assert result["mean_auc"] == pytest.approx(np.mean(list(aucs.values())), abs=1e-6)
    lo, hi = result["mean_auc_ci95"]
    assert lo < result["mean_auc"] < hi
    assert result["features"][-1] == "log(1 + follow-up #)" and result["train_images"] == 2000
    close = {c["class"] for c in result["close_classes"]}
    assert close == {c for c in aucs if aucs[c] >= model["per_class"][c] - 0.05}
    text = metadata_baseline.report_section(result)
    assert f"| Metadata only | {result['mean_auc']:.3f} [{lo:.3f}, {hi:.3f}] |" in text


def test_off_by_config_and_skipped_without_metadata(tmp_path):
    config = recipe.base_config()
    assert config.eval.metadata_baseline is True
    config.data.source = "chestmnist"
    evaluator = type("Evaluator", (), {"datasets": _Datasets({"train": []})})()
    out = metadata_baseline.SECTION.compute(SectionInputs(
        config, str(tmp_path), None, None, evaluator=evaluator, workdir=str(tmp_path)))
    assert out == {"skipped": "data.source='chestmnist' carries no metadata"}
    assert "Not computed: data.source='chestmnist' carries no metadata." in \
        metadata_baseline.report_section(out)
    assert metadata_baseline.SECTION.switch == "metadata_baseline"
    with pytest.raises(ValueError, match="no metadata field"):
        metadata_baseline.features(metadata.Metadata(None, None, None))

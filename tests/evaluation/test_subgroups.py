"""Tests of the subgroup report (cxrjax.evaluation.subgroups), the metadata it reads
(cxrjax.data.patient_metadata),
predictions files with metadata columns, and `evaluate --predictions --subgroups`."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrjax import evaluate, recipe
from cxrjax.data import patient_metadata as metadata
from cxrjax.data.labels import CLASSES, load_label_table
from cxrjax.evaluation import calibration, subgroups
from cxrjax.evaluation import prediction_files as predictions
from cxrjax.evaluation.section import SectionInputs
from cxrjax.evaluation.subgroups_report import markdown


def _data(n=600, seed=0):
    """Scores that rank the labels fairly well, and random sex, age and view."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 14)) < 0.25).astype(int)
    scores = np.clip(0.2 + 0.3 * labels + rng.normal(0, 0.2, labels.shape), 0, 1)
    meta = metadata.Metadata(sex=rng.choice(["F", "M"], n),
                             age=rng.uniform(1, 95, n).round(),
                             view=rng.choice(["PA", "AP", "LL"], n, p=[0.5, 0.4, 0.1]))
    return scores, labels, meta


def test_one_subgroup_cell_equals_its_definition_computed_with_scikit_learn():
    scores, labels, meta = _data()
    thresholds = np.linspace(0.3, 0.5, 14)
    result = subgroups.subgroup_report(scores, labels, meta, thresholds, n_boot=200, seed=3)
    block = result["attributes"]["age"]
    cell = block["groups"]["40-60"]
    mask = (meta.age >= 40) & (meta.age < 60)
    s, y = scores[mask], labels[mask]
    assert cell["n"] == mask.sum() and cell["images_with_finding"] == y.any(1).sum()
    shared = block["mean_auc_classes"]
    assert len(shared) == 14  # every age group has both label values of every class here
    expected = np.mean([roc_auc_score(y[:, CLASSES.index(c)], s[:, CLASSES.index(c)])
                        for c in shared])
    assert cell["mean_auc"]["value"] == pytest.approx(expected, abs=1e-12)
    assert cell["mean_auc"]["low"] < expected < cell["mean_auc"]["high"]
    c = CLASSES.index("Effusion")
    called = s[:, c] >= thresholds[c]
    sens = (called & (y[:, c] == 1)).sum() / y[:, c].sum()
    spec = (~called & (y[:, c] == 0)).sum() / (y[:, c] == 0).sum()
    assert cell["sensitivity"]["Effusion"]["value"] == pytest.approx(sens)
    assert cell["specificity"]["Effusion"]["value"] == pytest.approx(spec)
    # Underdiagnosis: images with a finding and no class called, over images with a finding.
    has = y.any(1)
    missed = has & ~(s >= thresholds).any(1)
    assert cell["underdiagnosis_rate"]["value"] == pytest.approx(missed.sum() / has.sum())
    every = labels.any(1)
    assert result["overall"]["underdiagnosis_rate"] == pytest.approx(
        (every & ~(scores >= thresholds).any(1)).sum() / every.sum())
    _, pooled = calibration.expected_calibration_error(s, y, 15)
    assert cell["ece"]["value"] == pytest.approx(pooled, abs=1e-12)
    assert cell["ece"]["low"] <= pooled <= cell["ece"]["high"]
    whole = [roc_auc_score(labels[:, CLASSES.index(c)], scores[:, CLASSES.index(c)])
             for c in shared]
    assert block["all_images_mean_auc"] == pytest.approx(np.mean(whole), abs=1e-12)
    assert (f"| *all test images* | 600 | {labels.any(1).sum()} | {np.mean(whole):.3f} | "
            in markdown(result))
    # The third view value is grouped as "other"; every attribute is broken down.
    assert list(result["attributes"]["view"]["groups"]) == ["PA", "AP", "other"]
    assert result["not_broken_down"] == {}


def test_the_resampled_auc_is_scikit_learns_with_the_resample_counts_as_weights():
    rng = np.random.default_rng(4)
    y = rng.random(300) < 0.3
    s = rng.integers(0, 20, 300) / 20 + 0.2 * y  # many ties
    positives, negatives = s[y], np.sort(s[~y])
    pos_w, neg_w = rng.integers(0, 4, (3, y.sum())), rng.integers(0, 4, (3, (~y).sum()))
    got = subgroups.auc_of_counts(pos_w, neg_w, np.searchsorted(negatives, positives, "left"),
                                  np.searchsorted(negatives, positives, "right"))
    for b in range(3):
        weights = np.r_[pos_w[b], neg_w[b]]
        truth = np.r_[np.ones(y.sum()), np.zeros((~y).sum())]
        want = roc_auc_score(truth, np.r_[positives, negatives], sample_weight=weights)
        assert got[b] == pytest.approx(want, abs=1e-12)


def test_a_gap_is_flagged_only_when_its_interval_excludes_zero():
    scores, labels, meta = _data(n=800, seed=1)
    male = meta.sex == "M"
    rng = np.random.default_rng(5)
    scores[male] = rng.random((male.sum(), 14))  # the model knows nothing of men
    # The AP images are exact copies of the PA images: no difference between those two.
    half = len(scores) // 2
    scores[half:], labels[half:] = scores[:half], labels[:half]
    view = np.array(["PA"] * half + ["AP"] * half)
    meta = metadata.Metadata(sex=np.r_[meta.sex[:half], meta.sex[:half]], age=meta.age,
                             view=view)
    result = subgroups.subgroup_report(scores, labels, meta, np.full(14, 0.45), n_boot=300)
    sex_gap = result["attributes"]["sex"]["gaps"]["mean_auc"]
    assert sex_gap["worst"] == "male" and sex_gap["flagged"]
    assert sex_gap["difference"]["low"] > 0
    view_gap = result["attributes"]["view"]["gaps"]["mean_auc"]
    assert view_gap["difference"]["value"] == pytest.approx(0, abs=1e-12)
    assert not view_gap["flagged"] and view_gap["difference"]["low"] < 0
    text = markdown(result)
    assert "Largest mean AUC gap by sex: female minus male" in text
    assert "**flagged: its CI excludes 0**" in text


def test_attributes_the_data_lack_are_skipped_with_the_reason(tmp_path):
    scores, labels, meta = _data(n=200)
    lacking = metadata.from_columns({"view": [""] * 200, "age": [str(a) for a in meta.age]},
                                    200, "preds.csv")
    result = subgroups.subgroup_report(scores, labels, lacking, None, n_boot=20)
    assert list(result["attributes"]) == ["age"]
    assert result["not_broken_down"] == {"sex": "preds.csv has no sex field",
                                         "view": "preds.csv records no view for these images"}
    assert "sensitivity" not in result["attributes"]["age"]["groups"]["40-60"]
    text = markdown(result)
    assert "Not broken down by sex: preds.csv has no sex field." in text
    # A group under MIN_GROUP_IMAGES gets counts only, and no mean AUC.
    tiny = result["attributes"]["age"]["groups"]
    small = [g for g, c in tiny.items() if c["n"] < subgroups.MIN_GROUP_IMAGES]
    assert all(tiny[g].get("too_small") and "mean_auc" not in tiny[g] for g in small)
    few = subgroups.subgroup_report(scores[:40], labels[:40], metadata.Metadata(
        meta.sex[:40], None, None), None, n_boot=10)
    assert few["attributes"]["sex"]["gaps"] == {"mean_auc": None, "underdiagnosis_rate": None}
    assert "No gap by sex: fewer than two groups of 30 images or more." in markdown(few)
    # A run whose data carry no metadata: the section says why and writes nothing.
    config = recipe.base_config()
    config.data.source = "chestmnist"
    meta = metadata.run_metadata(config, str(tmp_path), ["a.png"])
    assert meta.sex is None and "carries no patient metadata" in meta.missing["sex"]
    assert metadata.run_columns(config, str(tmp_path), ["a.png"]) == {}
    test = type("Scores", (), {"image_ids": ["a.png"], "probs": {"fused": scores[:1]},
                               "labels": labels[:1]})()
    out = subgroups.SECTION.compute(SectionInputs(config, str(tmp_path / "eval"), test, None,
                                                  workdir=str(tmp_path)))
    assert "carries no patient metadata" in out["skipped"]
    assert not (tmp_path / "eval").exists()


def test_the_section_writes_json_markdown_and_forest_plot(tmp_path, monkeypatch):
    table = load_label_table()
    ids = list(table.image_ids[:400])
    rows = table.rows(ids)
    labels = table.labels[rows].astype(int)
    rng = np.random.default_rng(0)
    scores = np.clip(0.2 + 0.3 * labels + rng.normal(0, 0.2, labels.shape), 0, 1)
    monkeypatch.setattr(metadata, "run_table", lambda config, workdir: table)
    config = recipe.base_config()
    config.eval.n_boot = 50
    earlier = {"operating_points": {"per_class": {c: {"threshold": 0.4} for c in CLASSES}}}
    test = type("Scores", (), {"image_ids": ids, "probs": {"fused": scores},
                               "labels": labels})()
    out = subgroups.SECTION.compute(SectionInputs(
        config, str(tmp_path), test, None, workdir=str(tmp_path), earlier=earlier))
    assert set(out["attributes"]) == {"sex", "age", "view"}
    saved = json.loads((tmp_path / "subgroups.json").read_text())
    assert saved["attributes"]["sex"]["groups"]["female"]["n"] == int(
        (np.asarray(table.sex)[rows] == "F").sum())
    assert (tmp_path / "subgroups.png").read_bytes()[:4] == b"\x89PNG"
    assert "![Subgroup forest plot](subgroups.png)" in (tmp_path / "subgroups.md").read_text()
    section = subgroups.SECTION.report(out)
    assert section.startswith("## Subgroups") and "eval/subgroups.png" in section
    assert "underdiagnosis rate" in section
    assert set(subgroups.SECTION.summary(out)["gaps"]) == {"sex", "age", "view"}

    config.eval.figures = False  # the same numbers and files, without the picture
    (tmp_path / "off").mkdir()
    off = subgroups.SECTION.compute(SectionInputs(
        config, str(tmp_path / "off"), test, None, workdir=str(tmp_path), earlier=earlier))
    assert off.pop("figure") is None and out.pop("figure") == "eval/subgroups.png"
    assert json.dumps(off, sort_keys=True) == json.dumps(out, sort_keys=True)  # NaN: NaN
    assert sorted(p.name for p in (tmp_path / "off").iterdir()) == ["subgroups.json",
                                                                   "subgroups.md"]
    assert ".png" not in (tmp_path / "off" / "subgroups.md").read_text()
    assert ".png" not in subgroups.SECTION.report({**off, "figure": None})


def test_run_metadata_reads_the_run_data_folders_own_table(tiny_data, tmp_path):
    config = recipe.base_config()
    config.data.update(source="nih", data_dir=str(tiny_data / "tfds"),
                       manual_dir=str(tiny_data / "nih"), resolution=40)
    own = load_label_table(str(next((tiny_data / "nih").glob("Data_Entry_2017*"))))
    ids = list(own.image_ids[:20])
    meta = metadata.run_metadata(config, str(tmp_path), ids)
    rows = own.rows(ids)
    assert meta.sex.tolist() == [own.sex[r] for r in rows]
    assert meta.view.tolist() == [own.view[r] for r in rows]
    np.testing.assert_array_equal(meta.follow_up, own.follow_up[rows])
    assert meta.missing == {}
    columns = metadata.run_columns(config, str(tmp_path), ids)
    assert columns["sex"] == meta.sex.tolist() and len(columns["age"]) == 20


def test_predictions_round_trip_with_metadata_and_unchanged_without(tmp_path):
    scores, _, meta = _data(n=5)
    ids = [f"{i:08d}_000.png" for i in range(5)]
    meta = metadata.Metadata(sex=meta.sex, age=np.r_[np.nan, meta.age[1:]], view=meta.view)
    plain, extra = tmp_path / "plain.csv", tmp_path / "extra.csv.gz"
    predictions.write_predictions(plain, ids, scores)
    header = plain.read_text().splitlines()[0]
    assert header == "Image Index," + ",".join(f"prob_{c}" for c in CLASSES)
    predictions.write_predictions(tmp_path / "empty.csv", ids, scores, metadata={})
    assert (tmp_path / "empty.csv").read_bytes() == plain.read_bytes()
    predictions.write_predictions(extra, ids, scores, metadata=metadata.columns(meta))
    got_ids, got = predictions.load_predictions(extra)
    assert list(got_ids) == ids and np.array_equal(got, scores)
    columns = predictions.load_metadata_columns(extra)
    assert list(columns) == ["sex", "age", "view"] and columns["age"][0] == ""
    back = metadata.from_columns(columns, 5)
    assert back.sex.tolist() == meta.sex.tolist() and back.view.tolist() == meta.view.tolist()
    np.testing.assert_array_equal(back.age, meta.age)
    assert predictions.load_metadata_columns(plain) == {}
    with pytest.raises(ValueError, match="unknown metadata column"):
        predictions.write_predictions(plain, ids, scores, metadata={"race": ["x"] * 5})


@pytest.mark.filterwarnings("ignore:.*(one label value|NaN and left out):RuntimeWarning")
def test_evaluate_predictions_subgroups_in_process(tmp_path, capsys):
    table = load_label_table()
    ids = list(table.image_ids[1000:1300])
    labels = table.labels[table.rows(ids)].astype(int)
    rng = np.random.default_rng(2)
    scores = np.clip(0.2 + 0.3 * labels + rng.normal(0, 0.2, labels.shape), 0, 1)
    meta = metadata.from_table(table, ids)
    path = tmp_path / "preds.csv"
    predictions.write_predictions(path, ids, scores, metadata=metadata.columns(meta))
    out = tmp_path / "out.json"
    assert evaluate.main(["--predictions", str(path), "--subgroups", "--n_boot", "20",
                          "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "# Subgroups: whom does the model fail?" in printed
    saved = json.loads(out.read_text())["subgroups"]
    assert set(saved["attributes"]) == {"sex", "age", "view"} and not saved["thresholds"]
    female = saved["attributes"]["sex"]["groups"]["female"]
    assert female["n"] == int((meta.sex == "F").sum())
    plain = tmp_path / "plain.csv"  # no metadata columns: the label table's are used
    predictions.write_predictions(plain, ids, scores)
    again = evaluate.evaluate_predictions(plain, n_boot=0, subgroups=True)["subgroups"]
    assert again["attributes"]["sex"]["groups"]["female"]["n"] == female["n"]
    assert evaluate.main(["--workdir", str(tmp_path), "--subgroups"]) == 2
    assert "--subgroups applies to --predictions only" in capsys.readouterr().err


def test_a_missing_label_is_left_out_not_read_as_negative():
    scores, labels, meta = _data(n=400, seed=5)
    rng = np.random.default_rng(7)
    known = rng.random(labels.shape) < 0.7
    known[:, 2] = True
    known[:20] = False  # images with every label missing
    labels = labels * known  # what a release writes where a label is missing: 0
    thresholds = np.linspace(0.3, 0.5, 14)
    result = subgroups.subgroup_report(scores, labels, meta, thresholds, n_boot=50, seed=1,
                                       mask=known.astype(np.uint8))
    cell = result["attributes"]["sex"]["groups"]["female"]
    f = meta.sex == "F"
    s, y, k = scores[f], labels[f], known[f]
    c = CLASSES.index("Mass")
    assert cell["auc"]["Mass"]["value"] == pytest.approx(
        roc_auc_score(y[k[:, c], c], s[k[:, c], c]), abs=1e-12)
    called = s[:, c] >= thresholds[c]
    negatives = k[:, c] & (y[:, c] == 0)
    assert cell["specificity"]["Mass"]["value"] == pytest.approx(
        (~called & negatives).sum() / negatives.sum())
    has = (y.astype(bool) & k).any(1)
    assert cell["images_with_finding"] == has.sum()
    assert cell["images_without_known_label"] == (~k.any(1)).sum() > 0
    assert cell["underdiagnosis_rate"]["value"] == pytest.approx(
        (has & ~(s >= thresholds).any(1)).sum() / has.sum())
    _, pooled = calibration.expected_calibration_error(s, y, 15, mask=k)
    assert cell["ece"]["value"] == pytest.approx(pooled, abs=1e-12)
    assert "every label missing, 20 here" in markdown(result)
    # NIH: an all-ones mask is the unmasked report exactly.
    plain = subgroups.subgroup_report(scores, labels, meta, thresholds, n_boot=50, seed=1)
    ones = subgroups.subgroup_report(scores, labels, meta, thresholds, n_boot=50, seed=1,
                                     mask=np.ones_like(labels))
    assert json.dumps(plain) == json.dumps(ones)

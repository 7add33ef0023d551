"""Tests of the evaluation sections behind one interface (cxrjax.evaluation.sections)."""

import json

import numpy as np
import pytest
from helpers import tiny_config

from cxrjax import recipe
from cxrjax.config_checks import ConfigError
from cxrjax.evaluation import evaluator, metrics, sections
from cxrjax.evaluation.section import Section, SectionInputs
from cxrjax.runfolder import loading as runs


@pytest.mark.parametrize("fields, message", [
    ({"threshold_rule": "accuracy"}, "eval.threshold_rule='accuracy': expected one of youden"),
    ({"threshold_rule": "sensitivity", "target_sensitivity": 1.5},
     r"eval.target_sensitivity=1.5 must be in \(0, 1\]"),
    ({"calibration": "isotonic"}, "eval.calibration='isotonic': expected one of none, "
                                  "temperature, platt"),
    ({"calibration_bins": 0}, "eval.calibration_bins=0 must be a positive integer"),
    ({"localization_heatmap": "saliency"}, "eval.localization_heatmap='saliency': expected"),
    ({"localization_heatmap": "cam_b"}, "needs model.head_b, which this model does not have"),
])
def test_each_sections_bad_field_is_refused_in_one_line_naming_it(fields, message):
    config = tiny_config("r18")
    config.eval.update(fields)
    with pytest.raises(ConfigError, match=message):
        sections.check(config)


def test_an_older_runs_config_without_the_eval_fields_loads_with_the_recipes_defaults():
    saved = tiny_config("r18").to_dict()
    for field in ("threshold_rule", "target_sensitivity", "calibration", "calibration_bins",
                  "localization", "localization_heatmap"):
        del saved["eval"][field]
    config = runs.with_recipe_defaults(saved)
    sections.check(config)
    assert config.eval.threshold_rule == recipe.base_config().eval.threshold_rule


def test_every_eval_field_is_read_by_a_section_and_declared_in_the_recipe():
    declared = set(recipe.base_config().eval.keys())
    read = {f for s in sections.REGISTRY for f in s.fields} | {
        s.switch for s in sections.REGISTRY if s.switch}
    assert read <= declared
    assert declared - read == set(), f"eval fields no section reads: {declared - read}"


def _scores(split: str, n: int = 60, seed: int = 0) -> evaluator.SplitScores:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 14)) < 0.3).astype(np.int32)
    probs = {"fused": np.clip(labels * 0.3 + rng.random((n, 14)) * 0.7, 0, 1)}
    results = {"fused": metrics.summary(probs["fused"], labels, n_boot=0)}
    return evaluator.SplitScores(split, [f"{i:05d}.png" for i in range(n)], probs, labels,
                                 results)


def test_a_new_section_is_one_registry_entry_computed_summarised_and_reported(
        tmp_path, monkeypatch):
    seen = {}

    def compute(inputs: SectionInputs) -> dict:
        seen["earlier"] = sorted(inputs.earlier)
        return {"positives": int(inputs.test.labels.sum()), "detail": [1, 2, 3]}

    extra = Section("positives", (), check=lambda e, m: None, compute=compute,
                    summary=lambda r: {"positives": r["positives"]},
                    report=lambda r: f"## Positives\n\n{r['positives']} test positives.\n")
    monkeypatch.setattr(sections, "REGISTRY", (*sections.REGISTRY[:2], extra))
    config = tiny_config("r18")
    test, val = _scores("test"), _scores("val", seed=1)
    inputs = SectionInputs(config, str(tmp_path / "eval"), test, val, workdir=str(tmp_path))
    (tmp_path / "eval").mkdir()
    results = sections.compute(inputs)
    assert list(results) == ["operating_points", "calibration", "positives"]
    assert seen["earlier"] == ["calibration", "operating_points"]
    evaluator.write_test_outputs(str(tmp_path), config, test, results)
    saved = json.loads((tmp_path / "eval" / "test_metrics.json").read_text())
    assert saved["positives"] == {"positives": int(test.labels.sum())}
    assert "per_class" in saved["operating_points"]
    text = (tmp_path / "report.md").read_text()
    assert f"{int(test.labels.sum())} test positives." in text
    assert text.index("## Operating points") < text.index("## Calibration") < text.index(
        "## Positives")


def test_a_section_turned_off_is_not_computed_and_says_so(tmp_path, monkeypatch):
    calls = []
    switched = Section("probe", (), check=lambda e, m: None,
                       compute=lambda inputs: calls.append(1) or {}, switch="localization",
                       report=lambda r: r.get("skipped", ""))
    monkeypatch.setattr(sections, "REGISTRY", (switched,))
    config = tiny_config("r18")
    config.eval.localization = False
    results = sections.compute(SectionInputs(config, str(tmp_path), _scores("test"), None))
    assert calls == [] and results == {
        "probe": {"skipped": "turned off (eval.localization = False)"}}


def test_figures_off_leaves_out_only_the_pictures_and_the_report_says_so(tmp_path, monkeypatch):
    """eval.figures = False: the same numbers and files but every PNG (ROC and training curves,
    reliability diagrams), and neither report.md nor a section links a picture."""
    monkeypatch.setattr(sections, "REGISTRY", sections.REGISTRY[:2])  # points, calibration
    test, val = _scores("test"), _scores("val", seed=1)
    written = {}
    for figures in (True, False):
        config = tiny_config("r18")
        config.eval.figures = figures
        workdir = tmp_path / str(figures)
        (workdir / "eval").mkdir(parents=True)
        results = sections.compute(SectionInputs(config, str(workdir / "eval"), test, val,
                                                 workdir=str(workdir)))
        evaluator.write_test_outputs(str(workdir), config, test, results)
        written[figures] = ({p.relative_to(workdir).as_posix() for p in workdir.rglob("*")
                             if p.is_file()},
                            json.loads((workdir / "eval" / "test_metrics.json").read_text()),
                            (workdir / "report.md").read_text())
    (on, on_metrics, on_report), (off, off_metrics, off_report) = written[True], written[False]
    assert on - off == {"eval/roc_curves.png", "eval/reliability.png", "training_curves.png"}
    assert off <= on
    assert on_metrics["calibration"].pop("figure") == "eval/reliability.png"
    assert off_metrics["calibration"].pop("figure") is None
    assert on_metrics == off_metrics
    assert ".png" in on_report and ".png" not in off_report
    assert "Not drawn: `eval.figures = False`." in off_report

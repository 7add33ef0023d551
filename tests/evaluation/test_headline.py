"""Tests of the report's first screen (cxrjax.evaluation.headline)."""

import numpy as np

from cxrjax.data import patient_metadata as metadata
from cxrjax.evaluation import subgroups
from cxrjax.evaluation.headline import headline

FUSED = {"mean_auc": 0.8123, "mean_auc_ci95": [0.8, 0.825], "n_images": 640}


def _localization(full: bool) -> dict:
    overall = {"acc_iobb": [0.61, 0.4, 0.2, 0.1, 0.05]}
    chance = {"acc_iobb": [0.22, 0.1, 0.05, 0.01, 0.0]}
    if full:
        return {"thresholds": [0.1, 0.25, 0.5, 0.75, 0.9], "boxes": 88, "primary": "gradcam",
                "methods": {"gradcam": {"title": "Grad-CAM", "scores": {"overall": overall},
                                        "random_baseline": {"overall": chance}}}}
    return {"thresholds": [0.1, 0.25, 0.5, 0.75, 0.9], "boxes": 88, "primary": "gradcam",
            "overall": overall, "random_baseline_overall": chance}


def _subgroups() -> dict:
    rng = np.random.default_rng(0)
    n = 600
    labels = (rng.random((n, 14)) < 0.25).astype(int)
    scores = np.clip(0.2 + 0.3 * labels + rng.normal(0, 0.2, labels.shape), 0, 1)
    sex = rng.choice(["F", "M"], n)
    scores[sex == "M"] = rng.random(((sex == "M").sum(), 14))
    meta = metadata.Metadata(sex=sex, age=None, view=None,
                             missing={"age": "no age", "view": "no view"})
    return subgroups.subgroup_report(scores, labels, meta, np.full(14, 0.45), n_boot=100)


def test_five_lines_from_the_full_results_and_from_their_short_forms():
    groups = _subgroups()
    sections = {
        "subgroups": groups,
        "metadata_baseline": {"mean_auc": 0.652, "mean_auc_ci95": [0.63, 0.67],
                              "model_mean_auc": 0.8123, "margin": 0.05,
                              "close_classes": [{"class": "Hernia"}]},
        "calibration": {"heads": {"fused": {"overall": 0.0312, "mean_over_classes": 0.05}},
                        "rescaling": None},
        "localization": _localization(full=True)}
    text = headline(sections, FUSED)
    lines = text.rstrip("\n").split("  \n")
    assert len(lines) == 5
    assert lines[0] == ("**Mean AUC** 0.812 [0.800, 0.825] (fused prediction, 640 test images, "
                        "95% CI).")
    gap = groups["attributes"]["sex"]["gaps"]["mean_auc"]
    assert gap["worst"] == "male" and gap["flagged"]
    assert lines[1].startswith("**Worst subgroup** by mean AUC: male vs female (sex), gap "
                               f"{gap['difference']['value']:.3f}")
    assert "CI excludes 0" in lines[1]
    assert "by underdiagnosis rate: female vs male (sex)" in lines[1]
    assert "mean AUC 0.652 [0.630, 0.670] against the image model's 0.812" in lines[2]
    assert "(Hernia)" in lines[2]
    assert lines[3].startswith("**ECE** (fused, all predictions pooled) 0.0312")
    assert lines[4] == ("**Localization** (Grad-CAM): 0.610 of 88 boxes found at T(IoBB) = 0.1;"
                        " the same boxes at random places 0.220.")
    short = {"subgroups": subgroups.SECTION.summary(groups),
             "localization": _localization(full=False)}
    again = headline({**sections, **short}, FUSED).rstrip("\n").split("  \n")
    assert again[1] == lines[1]
    assert again[4] == lines[4].replace("(Grad-CAM)", "(gradcam)")


def test_each_line_says_why_its_section_did_not_run():
    text = headline({"subgroups": {"skipped": "data.source='chestmnist' carries no patient "
                                              "metadata"},
                     "localization": {"skipped": "turned off (eval.localization = False)"}},
                    {"mean_auc": float("nan"), "mean_auc_ci95": [float("nan")] * 2})
    lines = text.rstrip("\n").split("  \n")
    assert lines[0].startswith("**Mean AUC** n/a (")
    assert lines[1] == ("**Worst subgroup:** not computed (data.source='chestmnist' carries no "
                        "patient metadata).")
    assert lines[2] == "**Metadata-only baseline:** not computed (not run)."
    assert lines[3] == "**ECE:** not computed (not run)."
    assert lines[4] == ("**Localization:** not scored (turned off (eval.localization = "
                        "False)).")

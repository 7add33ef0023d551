"""cxrjax.evaluation.model_card: a run's one-screen card, from the files the run recorded."""

import json

import numpy as np
from helpers import tiny_config

from cxrjax.data.labels import CLASSES
from cxrjax.evaluation import evaluator, metrics, model_card, sections
from cxrjax.evaluation.section import SectionInputs
from cxrjax.runfolder import loading as runs


def _scores(split, n=80, seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 14)) < 0.3).astype(np.int32)
    probs = {"fused": np.clip(labels * 0.3 + rng.random((n, 14)) * 0.7, 0, 1)}
    return evaluator.SplitScores(split, [f"{i:05d}.png" for i in range(n)], probs, labels,
                                 {"fused": metrics.summary(probs["fused"], labels, n_boot=50)})


def test_a_tested_run_gets_its_card_with_the_report_from_its_own_numbers(tmp_path):
    config = tiny_config("r18")
    # A small set (the predictions' metadata columns are read from it), made in this process.
    config.data.update(source="synthetic", split_scheme="paper", split_seed=3, resolution=40,
                       crop=32, synthetic_n=120, synthetic_size=48, prepare_workers=1)
    config.eval.calibration = "temperature"
    config.eval.localization = False  # no boxes: a synthetic set would be made to find them
    # Nor metadata: those sections would make and prepare the synthetic set to read it from.
    config.eval.subgroups = config.eval.metadata_baseline = False
    runs.record_config(str(tmp_path), config)
    (tmp_path / "command.json").write_text(json.dumps({"config_file": "configs/r18.py"}))
    test, val = _scores("test"), _scores("val", seed=1)
    results = sections.compute(SectionInputs(config, str(tmp_path / "eval"), test, val,
                                             workdir=str(tmp_path)))
    evaluator.write_test_outputs(str(tmp_path), config, test, results)
    card = (tmp_path / "model_card.md").read_text()
    saved = json.loads((tmp_path / "eval" / "test_metrics.json").read_text())
    fused = test.results["fused"]
    lo, hi = fused["mean_auc_ci95"]
    assert card.startswith("# Model card: r18.py")
    assert "Research software, NOT a medical device" in card
    assert f"mean AUC **{fused['mean_auc']:.3f}** [{lo:.3f}, {hi:.3f}]" in card
    assert "on 80 test images" in card
    name = CLASSES[2]
    point = saved["operating_points"]["per_class"][name]
    c_lo, c_hi = fused["per_class_ci95"][name]
    assert (f"| {name} | {fused['n_positive'][name]} | {fused['per_class'][name]:.3f} "
            f"[{c_lo:.3f}, {c_hi:.3f}] | {point['threshold']:.3f} | "
            f"{point['sensitivity']['value']:.3f} | {point['specificity']['value']:.3f} |") in card
    ece = saved["calibration"]["heads"]["fused"]["overall"]
    after = saved["calibration"]["rescaling"]["test_ece_after"]["overall"]
    assert (f"fused test ECE {ece:.3f}; after temperature scaling fitted on validation "
            f"{after:.3f}") in card
    assert "scheme `paper`, seed 3" in card and "no split hashes recorded" in card
    assert "→ 40×40, Pillow antialiased bilinear" in card and "centre 32×32 crop" in card
    assert "trained on synthetic images (drawn shapes" in card  # cxrjax.evaluation.limitations
    assert "Views and ages: no real views or ages" in card
    assert "Synthetic set: 120 images of 48 px, seed 0." in card
    assert len(card.splitlines()) < 60  # about one screen


def test_an_untested_nih_run_says_so_and_names_views_and_ages(tmp_path):
    config = tiny_config("d121")
    runs.record_config(str(tmp_path), config)
    card = model_card.render(str(tmp_path))
    assert "Not tested yet: no `eval/test_metrics.json`" in card
    assert "- Not tested: its accuracy is unknown." in card
    assert "No thresholds recorded: probabilities only." in card
    assert "NIH ChestX-ray14" in card and "frontal PA/AP views only" in card
    assert "synthetic" not in card  # no limitation for a model trained on X-rays
    assert "Calibration" not in card
    path = model_card.write_model_card(str(tmp_path))
    assert open(path).read() == card


def test_recorded_split_hashes_are_shown(tmp_path):
    runs.record_config(str(tmp_path), tiny_config("r18"))
    (tmp_path / "eval" / "test_metrics.json").write_text(json.dumps({
        "mean_auc": 0.7, "split_hashes": {"train": "ab" * 32, "test": "cd" * 32}}))
    card = model_card.render(str(tmp_path))
    assert f"hashes: train `{'ab' * 8}`, test `{'cd' * 8}`" in card

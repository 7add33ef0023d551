"""A run on a tiny set whose splits hold no "No Finding" image (as a 60-image real sample's
6-image validation split did): it trains, validates and tests, the undefined figures NaN."""

import csv
import json
import logging
import math

from helpers import run_config

from cxrjax import train
from cxrjax.data import builder, nih_layout, synthetic
from cxrjax.runfolder import loading as runs


def _every_image_with_a_finding(nih_dir) -> None:
    """Relabels the set's "No Finding" images as Hernia, in its Data_Entry table."""
    path = nih_dir / nih_layout.DATA_ENTRY_NAME
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    for row in rows[1:]:
        if row[1] == "No Finding":
            row[1] = "Hernia"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_a_run_without_a_normal_image_trains_and_reports_nan_where_undefined(tmp_path, caplog):
    synthetic.generate(str(tmp_path / "nih"), n=40, size=48, seed=3)
    _every_image_with_a_finding(tmp_path / "nih")
    builder.build(str(tmp_path / "nih"), str(tmp_path / "tfds"), resolution=40, workers=1)
    config = run_config("r18", tmp_path, epochs=2)
    config.eval.n_boot = 10
    workdir = tmp_path / "run"

    with caplog.at_level(logging.WARNING, logger="cxrjax"):
        results = train.train_and_evaluate(config, str(workdir))

    fused = results["fused"]
    assert math.isnan(fused["n_auc"]) and fused["n_images"] > 0
    assert "validation split: N-AUC undefined (NaN): none of the" in caplog.text
    assert "test split: N-AUC undefined (NaN)" in caplog.text
    with open(workdir / "eval" / "test_metrics.json") as f:
        assert json.load(f)["n_auc"] is None  # written as null
    log = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert len([r for r in log if "val/mean_auc" in r]) == 2  # both epochs validated
    best = runs.best_step(runs.final_stage_dir(str(workdir)))
    assert best in {r["step"] for r in log if "val/mean_auc" in r}

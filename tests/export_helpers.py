"""A tiny tested run and its export, made once per test session and shared by the export,
serving and model-card tests."""

import importlib
import json
import os

import numpy as np
from helpers import TINY, random_variables

from cxrjax.data.labels import CLASSES

RES, CROP = 40, 32  # the tiny trunks stride by 32: a 1x1 map, the smallest that runs


def tiny_run(workdir: str) -> str:
    """An R18 + R18-F-MSML tiny run on synthetic data (never prepared: not needed to export)
    with one saved checkpoint, and the files a tested run records: thresholds.json and a
    test_metrics.json with a temperature rescaling."""
    from cxrjax import models, train
    from cxrjax.evaluation import inference, operating_points
    from cxrjax.io import checkpoint
    from cxrjax.runfolder import loading as runs

    c = importlib.import_module("configs.r18_msml").get_config()
    c.model.trunk_a, c.model.trunk_b = TINY[c.model.trunk_a], TINY[c.model.trunk_b]
    c.model.bilinear_dim, c.model.init = 16, "scratch"
    c.data.update(dict(source="synthetic", synthetic_n=60, synthetic_size=48, resolution=RES,
                       crop=CROP, workers=0))
    os.makedirs(os.path.join(workdir, "eval"))
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(c.to_json_best_effort(indent=2))
    model = models.build_model(c.model)
    variables = random_variables(model, CROP, seed=3)
    manager = checkpoint.open_manager(runs.stage_dir(workdir, 0, c.train.stages[0]), 3)
    state, _ = train.create_stage(c, 0, model, variables, 10, inference.create_mesh())
    checkpoint.save(manager, 7, state, {"step": 7}, {"stage": "global", "val_mean_auc": 0.6},
                    0.6)
    manager.wait_until_finished()
    thresholds = np.linspace(0.2, 0.8, len(CLASSES))
    thresholds[3] = np.nan  # a class without a threshold
    operating_points.OperatingPoints(CLASSES, thresholds, "youden").save(
        os.path.join(workdir, operating_points.RUN_FILE))
    rescaling = {"method": "temperature", "fitted_on": "validation",
                 "test_ece_before": {"overall": 0.2}, "test_ece_after": {"overall": 0.05},
                 "parameters": {"method": "temperature", "per_class": {
                     name: {"slope": 0.5 + 0.1 * i, "intercept": 0.0}
                     for i, name in enumerate(CLASSES)}}}
    with open(os.path.join(workdir, "eval", "test_metrics.json"), "w") as f:
        json.dump({"mean_auc": 0.61, "mean_auc_ci95": [0.55, 0.67], "n_images": 30,
                   "calibration": {"heads": {"fused": {"overall": 0.2}},
                                   "rescaling": rescaling}}, f)
    return workdir


def exported_run(tmp_path_factory) -> tuple[str, str]:
    """(workdir, export folder) of the tiny run, made on the first call of the session."""
    from cxrjax import export

    root = tmp_path_factory.getbasetemp() / "exported_tiny_run"
    workdir, out = str(root / "run"), str(root / "export")
    if not os.path.exists(os.path.join(out, "manifest.json")):
        tiny_run(workdir)
        export.export_run(workdir, out)
    return workdir, out

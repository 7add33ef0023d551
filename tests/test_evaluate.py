"""The evaluate CLI on predictions files made from the real NIH tables and on trained runs,
the predictions file format, and every bad input."""

import csv
import gzip
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import TINY, random_variables
from sklearn.metrics import roc_auc_score

from cxrjax import evaluate
from cxrjax.data.labels import CLASSES, load_label_table, resource_path
from cxrjax.evaluation import prediction_files as predictions


@pytest.fixture(scope="module")
def chexnet_test_list():
    """The 22,433-image CheXNet test list shipped with the package: names and (N, 14) labels."""
    with gzip.open(resource_path("chexnet_split/test_list.txt.gz"), "rt") as f:
        rows = [line.split() for line in f if line.strip()]
    return [r[0] for r in rows], np.array([r[1:] for r in rows], np.uint8)


def _write(path, header, rows):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def _correlated_scores(labels, seed=0):
    rng = np.random.default_rng(seed)
    return np.round(rng.random(labels.shape) * 0.7 + 0.3 * labels, 3)  # 3 decimals: many ties


@pytest.fixture(scope="module")
def chexnet_predictions(tmp_path_factory, chexnet_test_list):
    """A CheXNet-style ``prob_<Class>`` predictions file for the whole test list."""
    ids, labels = chexnet_test_list
    scores = _correlated_scores(labels)
    path = tmp_path_factory.mktemp("preds") / "test_predictions.csv.gz"
    rows = ([name, *(f"{v:.3f}" for v in row)] for name, row in zip(ids, scores, strict=True))
    _write(path, ["Image Index", *(f"prob_{c}" for c in CLASSES)], rows)
    return str(path), scores


@pytest.fixture(scope="module")
def small(chexnet_test_list):
    """Header and rows of a valid 60-image file, for the bad-input cases to break."""
    ids, labels = chexnet_test_list
    scores = _correlated_scores(labels[:60], seed=1)
    rows = [[name, *(str(v) for v in row)] for name, row in zip(ids[:60], scores, strict=True)]
    return ["Image Index", *CLASSES], rows


def test_cli_on_chexnet_test_list_prints_sklearn_aucs_to_6_decimals(
        chexnet_predictions, chexnet_test_list, tmp_path, capsys, optimised_xla):
    path, scores = chexnet_predictions
    ids, list_labels = chexnet_test_list
    assert len(ids) == 22_433
    table = load_label_table()
    labels = table.labels[table.rows(ids)]
    # The CheXNet list misses 37 positives that the NIH table has (first 8 classes only); the
    # CLI scores against the table, so sklearn is run against the table's labels too.
    assert (labels >= list_labels).all() and (labels != list_labels).sum() == 37
    out_json = tmp_path / "out" / "metrics.json"

    # 200 resamples: the CI's sanity is checked here, not the default count's (1,000) cost
    assert evaluate.main(["--predictions", path, "--json", str(out_json), "--n_boot", "200"]) == 0
    printed = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    result = json.loads(out_json.read_text())
    for c, name in enumerate(CLASSES):
        ref = roc_auc_score(labels[:, c], scores[:, c])
        assert printed[name][1] == f"{ref:.6f}"
        assert result["per_class"][name] == pytest.approx(ref, abs=1e-12)
    ref_mean = roc_auc_score(labels, scores, average="macro")
    assert result["mean_auc"] == pytest.approx(ref_mean, abs=1e-12)
    assert result["w_auc"] == pytest.approx(
        sum(table.prevalence()[c] * result["per_class"][n] for c, n in enumerate(CLASSES)))
    lo, hi = result["mean_auc_ci95"]
    assert lo < result["mean_auc"] < hi and hi - lo < 0.02
    assert result["n_images"] == 22_433
    for key in ("w_auc_normalized", "d_auc", "n_auc"):
        assert 0.5 < result[key] < 1.0
    for row in ("AUC", "W-AUC", "D-AUC", "N-AUC"):
        assert row in printed


def test_cli_accepts_plain_csv_class_named_columns_and_own_label_table(tmp_path, capsys):
    # A 3-row Data_Entry table of our own: its prevalence becomes the W-AUC weights.
    entry = tmp_path / "Data_Entry.csv"
    head = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
            "Patient Gender", "View Position"]
    _write(entry, head, [["a.png", "Mass|Hernia", 0, 1, 50, "M", "PA"],
                         ["b.png", "No Finding", 0, 2, 40, "F", "PA"],
                         ["c.png", "Hernia", 0, 3, 30, "F", "AP"]])
    preds = _write(tmp_path / "p.csv", ["Image Index", *CLASSES, "Patient ID"],
                   [["a.png", *[0.9] * 14, 1], ["b.png", *[0.1] * 14, 2],
                    ["c.png", *[0.5] * 14, 3]])
    out_json = tmp_path / "m.json"
    code = evaluate.main(["--predictions", preds, "--labels", str(entry),
                          "--json", str(out_json), "--n_boot", "20"])
    assert code == 0
    out, err = capsys.readouterr()
    assert "warning: AUC: 12 class(es) have one label value" in err and "Atelectasis" in err
    result = json.loads(out_json.read_text())
    assert result["per_class"]["Mass"] == 1.0 and result["per_class"]["Hernia"] == 1.0
    assert result["per_class"]["Atelectasis"] is None  # NaN -> null: no positive image
    assert set(result["excluded_classes"]) == set(CLASSES) - {"Mass", "Hernia"}
    assert result["w_auc"] == pytest.approx(1 / 3 + 2 / 3)
    assert "left out of AUC, W-AUC" in out


def _run_bad(tmp_path, capsys, header, rows, name="bad.csv", extra=()):
    path = _write(tmp_path / name, header, rows)
    code = evaluate.main(["--predictions", path, "--n_boot", "0", *extra])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("mutate, match", [
    (lambda h, r: (h[:-1], [x[:-1] for x in r]), "missing class column.*Hernia"),
    (lambda h, r: (h + ["prob_Mass"], [x + ["0.5"] for x in r]), "duplicated class.*Mass"),
    (lambda h, r: (h + ["Mass"], [x + ["0.5"] for x in r]), "duplicated class.*Mass"),
    (lambda h, r: (h + ["prob_Covid"], [x + ["0.5"] for x in r]), "'prob_Covid' names no"),
    (lambda h, r: (["Image"] + h[1:], r), "no 'Image Index' column"),
    (lambda h, r: (h, r + [r[3]]), "1 duplicate row.*lines 5 and 62"),
    (lambda h, r: (h, r[:5] + [["x_1.png"] + r[5][1:], ["x_2.png"] + r[6][1:]] + r[7:]),
     "2 image name.*not in the label table.*x_1.png, x_2.png"),
    (lambda h, r: (h, r[:2] + [r[2][:3] + ["high"] + r[2][4:]] + r[3:]),
     "line 4, column 'Effusion': non-numeric score 'high'"),
    (lambda h, r: (h, r[:2] + [r[2][:3] + ["nan"] + r[2][4:]] + r[3:]), "score is 'nan'"),
    (lambda h, r: (h, r[:2] + [r[2][:3] + ["inf"] + r[2][4:]] + r[3:]), "must be finite"),
    (lambda h, r: (h, r[:2] + [r[2][:-1]] + r[3:]), "line 4: 14 fields, header has 15"),
    (lambda h, r: (h, r[:2] + [[""] + r[2][1:]] + r[3:]), "empty 'Image Index'"),
    (lambda h, r: (h, []), "no prediction rows"),
])
def test_cli_bad_predictions_give_one_line_error_and_exit_2(tmp_path, capsys, small, mutate,
                                                            match):
    header, rows = mutate(list(small[0]), [list(r) for r in small[1]])
    code, err = _run_bad(tmp_path, capsys, header, rows)
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert __import__("re").search(match, err), err


def test_cli_empty_file_missing_file_and_bad_labels_path_exit_2(tmp_path, capsys, small):
    empty = tmp_path / "empty.csv.gz"
    with gzip.open(empty, "wt"):
        pass
    cases = [(["--predictions", str(empty)], "empty file"),
             (["--predictions", str(tmp_path / "nope.csv")], "predictions file not found"),
             (["--predictions", str(tmp_path)], "is a directory"),
             (["--predictions", _write(tmp_path / "ok.csv", *small), "--labels",
               str(tmp_path / "nolabels.csv")], "label table not found")]
    for argv, match in cases:
        assert evaluate.main([*argv, "--n_boot", "0"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and match in err, err


def test_cli_not_gzip_data_in_gz_file_exits_2(tmp_path, capsys):
    path = tmp_path / "fake.csv.gz"
    path.write_text("Image Index,Mass\n")
    assert evaluate.main(["--predictions", str(path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_load_predictions_orders_columns_by_class_and_accepts_spaced_names(tmp_path):
    shuffled = list(reversed(CLASSES))
    header = ["Image Index"] + [f"prob_{c.replace('_', ' ')}" for c in shuffled]
    path = _write(tmp_path / "p.csv", header,
                  [["a.png", *range(14)], ["b.png", *range(14, 28)]])
    ids, scores = predictions.load_predictions(path)
    assert ids == ("a.png", "b.png")
    np.testing.assert_array_equal(scores[0], np.arange(13, -1, -1))  # back in NIH order
    assert scores.dtype == np.float64 and scores.shape == (2, 14)


@pytest.mark.parametrize("name, dtype", [("p.csv", np.float32), ("sub/p.csv.gz", np.float64)])
def test_write_predictions_round_trips_and_preserves_every_auc(tmp_path, name, dtype):
    rng = np.random.default_rng(3)
    labels = (rng.random((500, 14)) < 0.3).astype(np.uint8)
    scores = (rng.random((500, 14)) ** 3 * 1e-3 + labels * 1e-4).astype(dtype)
    scores[:50] = scores[50:100]  # exact ties must survive the text round trip
    ids = [f"{i:08d}_000.png" for i in range(500)]
    path = tmp_path / name
    predictions.write_predictions(path, ids, scores)
    got_ids, got = predictions.load_predictions(path)
    assert got_ids == tuple(ids)
    np.testing.assert_array_equal(got.astype(dtype), scores)
    for c in range(14):
        assert roc_auc_score(labels[:, c], got[:, c]) == roc_auc_score(labels[:, c], scores[:, c])
    with pytest.raises(ValueError, match="must be"):
        predictions.write_predictions(tmp_path / "x.csv", ids[:3], scores)


def test_format_table_shows_nan_as_na_and_lists_excluded_classes():
    summary = {"per_class": {"Mass": 0.75, "Hernia": math.nan}, "mean_auc": 0.75,
               "w_auc": 0.1, "w_auc_normalized": 0.75, "d_auc": 0.7, "n_auc": 0.8,
               "mean_auc_ci95": [0.7, 0.8], "n_images": 10, "excluded_classes": ["Hernia"],
               "n_boot": 100}
    text = predictions.format_table(summary)
    assert "Hernia" in text and "n/a" in text and "0.750000" in text
    assert "AUC (mean of 1)" in text and "left out of AUC, W-AUC (one label value): Hernia" in text


def test_python_dash_m_runs_and_reports_bad_input_on_stderr(tmp_path, small):
    ok = _write(tmp_path / "ok.csv", *small)
    bad = _write(tmp_path / "bad.csv", small[0][:-1], [r[:-1] for r in small[1]])
    run = [sys.executable, "-m", "cxrjax.evaluate", "--n_boot", "10", "--predictions"]
    good = subprocess.run([*run, ok], capture_output=True, text=True, timeout=120)
    assert good.returncode == 0 and "W-AUC" in good.stdout
    failed = subprocess.run([*run, bad], capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and failed.stdout == ""
    assert failed.stderr.strip().splitlines() == [failed.stderr.strip()]
    assert "missing class column(s) Hernia" in failed.stderr


# ---------------------------------------------------------------------------------------------
# --workdir: trained runs (tiny "trained" runs: saved checkpoints, no training) and ensembles.
# ---------------------------------------------------------------------------------------------



def tiny_run(workdir, seed=0, split_seed=0, shared_data=None):
    """A tiny R18 + R18-F-MSML run on a 60-image synthetic set with two saved checkpoints:
    step 5 (val AUC 0.7, the best) and step 10 (0.5, other weights). Returns (config, model,
    the best step's variables)."""
    import importlib
    import os

    import jax

    from cxrjax import models, train_step
    from cxrjax.evaluation import inference
    from cxrjax.io import checkpoint
    from cxrjax.runfolder import loading as runs

    c = importlib.import_module("configs.r18_msml").get_config()
    c.model.trunk_a, c.model.trunk_b = TINY[c.model.trunk_a], TINY[c.model.trunk_b]
    c.model.bilinear_dim, c.model.init, c.seed = 16, "scratch", seed
    c.data.update(dict(source="synthetic", synthetic_n=60, synthetic_size=32, resolution=36,
                       crop=32, workers=0, split_seed=split_seed))
    c.train.update(dict(batch_size=4, eval_batch_size=4))
    os.makedirs(workdir)
    if shared_data:  # the same synthetic set, made once (ensure_prepared reuses it)
        os.symlink(os.path.join(shared_data, "synthetic"), os.path.join(workdir, "synthetic"))
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(c.to_json_best_effort(indent=2))
    model = models.build_model(c.model)
    best = random_variables(model, c.data.crop, seed)
    other = jax.tree.map(lambda x: x * 0.5, best)
    index = len(c.train.stages) - 1
    manager = checkpoint.open_manager(runs.stage_dir(workdir, index, c.train.stages[index]), 3)
    for step, variables, auc in ((5, best, 0.7), (10, other, 0.5)):
        state, _ = train_step.create_stage(c, index, model, variables, 10, inference.create_mesh())
        checkpoint.save(manager, step, state, {"step": step},
                        {"stage": "global", "val_mean_auc": auc}, auc)
    manager.wait_until_finished()
    return c, model, best


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """Runs a (seed 0) and b (seed 1) on the same data; c on another patient split."""
    root = tmp_path_factory.mktemp("runs")
    a = tiny_run(str(root / "a"), seed=0)
    evaluate.predict_workdir(str(root / "a"))  # makes a's synthetic set for b and c to share
    b = tiny_run(str(root / "b"), seed=1, shared_data=str(root / "a"))
    tiny_run(str(root / "c"), seed=0, split_seed=1, shared_data=str(root / "a"))
    return {"a": (str(root / "a"), *a), "b": (str(root / "b"), *b), "c": str(root / "c")}


def test_predict_workdir_scores_the_best_checkpoint_on_the_run_own_test_split(trained_runs):
    """Probabilities equal the best step's model on centre crops of the test records."""
    from cxrjax import models
    from cxrjax.data import pipeline

    workdir, config, model, best = trained_runs["a"]
    ids, probs, labels, step = evaluate.predict_workdir(workdir, "test")
    assert step == 5
    ds = pipeline.open_datasets(config, workdir)
    assert ids == ds.image_ids("test") and len(ids) == len(set(ids)) > 0
    records = [ds.records[r] for r in ds.split_rows["test"]]
    images = np.stack([img[2:34, 2:34, None] for img, _ in records])  # centre 32 of 36
    expected = models.probabilities(model.apply(best, images, train=False), ("ce", "fce"))
    assert set(probs) == {"ce", "msml", "fce", "fused"}
    for head, p in probs.items():
        np.testing.assert_allclose(p, expected[head], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels, np.stack([lab for _, lab in records]))


def test_cli_workdir_prints_the_table_and_writes_fused_and_per_head_json(
        trained_runs, tmp_path, capsys):
    from cxrjax.evaluation import metrics

    workdir = trained_runs["a"][0]
    out = tmp_path / "m.json"
    assert evaluate.main(["--workdir", workdir, "--n_boot", "0", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{workdir} (step 5): test split" in printed and "W-AUC" in printed
    saved = json.loads(out.read_text())
    _, probs, labels, _ = evaluate.predict_workdir(workdir, "test")
    want = metrics.summary(probs["fused"], labels, n_boot=0)
    assert math.isclose(saved["mean_auc"], want["mean_auc"], rel_tol=1e-9)
    assert set(saved["heads"]) == {"ce", "msml", "fce"} and saved["split"] == "test"
    assert saved["n_images"] == len(labels)


def test_val_split_is_scored_when_asked(trained_runs, tmp_path, capsys):
    workdir = trained_runs["a"][0]
    val_ids = evaluate.predict_workdir(workdir, "val")[0]
    out = tmp_path / "val.json"
    assert evaluate.main(["--workdir", workdir, "--split", "val", "--n_boot", "0",
                          "--json", str(out)]) == 0
    assert json.loads(out.read_text())["n_images"] == len(val_ids)
    assert ": val split" in capsys.readouterr().out


def test_mode_eval_writes_the_run_files_with_the_numbers_evaluate_workdir_prints(
        trained_runs, tmp_path):
    """One path: ``main --mode eval`` (evaluate_run writing the run's files) and ``evaluate
    --workdir`` score the same checkpoint into the same numbers."""
    import shutil

    from cxrjax.evaluation import evaluator
    from cxrjax.runfolder import loading as runs

    workdir = tmp_path / "run"
    shutil.copytree(trained_runs["a"][0], workdir, symlinks=True)
    config = runs.load_config(str(workdir))
    config.eval.n_boot = 10
    step, scores = evaluator.evaluate_run(str(workdir), config=config, write=True)
    assert step == 5
    ids, fused = predictions.load_predictions(workdir / "eval" / "test_predictions.csv")
    assert list(ids) == scores.image_ids
    np.testing.assert_array_equal(fused.astype(np.float32), scores.probs["fused"])
    for head in ("ce", "msml", "fce"):
        assert (workdir / "eval" / f"test_predictions_{head}.csv").is_file()
    assert (workdir / "report.md").read_text().count("|") > 50
    saved = json.loads((workdir / "eval" / "test_metrics.json").read_text())

    out = tmp_path / "cli.json"
    assert evaluate.main(["--workdir", str(workdir), "--n_boot", "10", "--json", str(out)]) == 0
    printed = json.loads(out.read_text())
    for key in ("per_class", "mean_auc", "mean_auc_ci95", "w_auc", "d_auc", "n_auc", "heads"):
        assert printed[key] == saved[key], key


def test_ensemble_scores_the_mean_of_the_two_runs_fused_probabilities(trained_runs, capsys):
    from cxrjax.evaluation import metrics

    (a, *_), (b, *_) = trained_runs["a"], trained_runs["b"]
    _, pa, labels, _ = evaluate.predict_workdir(a)
    _, pb, _, _ = evaluate.predict_workdir(b)
    assert not np.allclose(pa["fused"], pb["fused"])  # two different models
    out = evaluate.evaluate_workdirs([a, b], n_boot=0)
    want = metrics.summary((pa["fused"] + pb["fused"]) / 2, labels, n_boot=0)
    assert out["per_class"] == pytest.approx(want["per_class"], nan_ok=True)
    assert out["mean_auc"] == pytest.approx(want["mean_auc"])
    assert list(out["members"].values()) == pytest.approx(
        [metrics.summary(p["fused"], labels, n_boot=0)["mean_auc"] for p in (pa, pb)])
    assert evaluate.main(["--workdir", a, b, "--n_boot", "0"]) == 0
    assert "ensemble of" in capsys.readouterr().out


def test_ensemble_of_runs_on_different_splits_is_refused_naming_both(trained_runs, capsys):
    a, c = trained_runs["a"][0], trained_runs["c"]
    assert evaluate.main(["--workdir", a, c, "--n_boot", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert a in err and c in err and "refusing to ensemble" in err
    assert re.search(r"differ in [1-9]\d* image id", err)


def test_align_runs_reorders_the_same_images_and_refuses_other_labels():
    labels = np.eye(3, 14, dtype=np.uint8)
    orders = evaluate.align_runs(["w1", "w2"], [["x", "y", "z"], ["z", "x", "y"]],
                                 [labels, labels[[2, 0, 1]]])
    np.testing.assert_array_equal(orders[1], [1, 2, 0])
    with pytest.raises(ValueError, match="w1 and w2: 1 image"):
        evaluate.align_runs(["w1", "w2"], [["x", "y", "z"], ["x", "y", "z"]],
                            [labels, labels[[0, 1, 0]]])
    with pytest.raises(ValueError, match="differ in 2 image id"):
        evaluate.align_runs(["w1", "w2"], [["x", "y"], ["x", "q"]], [labels[:2], labels[:2]])


def test_workdir_errors_are_one_line_and_exit_2(trained_runs, tmp_path, capsys):
    import shutil

    a = trained_runs["a"][0]
    started = tmp_path / "started"  # config written, no checkpoint yet
    started.mkdir()
    shutil.copy(f"{a}/config.json", started / "config.json")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (tmp_path / "empty").mkdir()
    cases = [
        (["--workdir", str(tmp_path / "nope")], "workdir not found"),
        (["--workdir", str(tmp_path / "empty")], "is not a cxrjax workdir"),
        (["--workdir", str(started)], "training has not finished a checkpoint yet"),
        (["--workdir", str(broken)], "config.json is not a readable config"),
        (["--workdir", a, a], "a workdir is given twice"),
        (["--workdir", a, "--labels", "x.csv"], "--labels applies to --predictions only"),
    ]
    for argv, message in cases:
        assert evaluate.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (argv, err)
    (started / "checkpoints" / "stage0_global").mkdir(parents=True)
    assert evaluate.main(["--workdir", str(started)]) == 2
    assert "training has not finished a checkpoint yet" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse: the two modes exclude each other
        evaluate.main(["--workdir", a, "--predictions", "p.csv"])
    assert exit_info.value.code == 2


def test_a_run_saved_on_two_devices_evaluates_on_one(trained_runs, tmp_path):
    """Checkpoints restore onto whatever devices evaluate them (here 2 CPU devices -> 1)."""
    import os

    workdir = trained_runs["a"][0]
    out = tmp_path / "one_device.json"
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "cxrjax.evaluate", "--workdir", workdir,
                           "--n_boot", "0", "--json", str(out)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _, probs, labels, _ = evaluate.predict_workdir(workdir)  # 2 devices, in this process
    from cxrjax.evaluation import metrics

    want = metrics.summary(probs["fused"], labels, n_boot=0)["mean_auc"]
    assert json.loads(out.read_text())["mean_auc"] == pytest.approx(want, rel=1e-6)


def test_checkpoint_of_another_model_is_refused_in_one_line(trained_runs, tmp_path, capsys):
    import shutil

    workdir = tmp_path / "mixed_up"
    shutil.copytree(trained_runs["a"][0], workdir, symlinks=True)
    config = json.loads((workdir / "config.json").read_text())
    config["model"]["bilinear_dim"] = 8  # a head of another shape than the checkpoint's
    (workdir / "config.json").write_text(json.dumps(config))
    assert evaluate.main(["--workdir", str(workdir), "--n_boot", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not match this model's parameter tree" in err


def test_truncated_checkpoint_is_a_one_line_error(trained_runs, tmp_path, capsys):
    import pathlib
    import shutil

    workdir = tmp_path / "truncated"
    shutil.copytree(trained_runs["a"][0], workdir, symlinks=True)
    data = pathlib.Path(workdir, "checkpoints", "stage0_global", "5", "state")
    for f in (p for p in data.rglob("*") if p.is_file() and p.parent.name == "d"):
        f.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 2])
    assert evaluate.main(["--workdir", str(workdir), "--n_boot", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint 5" in err and "unreadable" in err, err


# ---------------------------------------------------------------------------------------------
# Operating points and calibration: chosen on validation, measured on test.
# ---------------------------------------------------------------------------------------------


def test_mode_eval_writes_validation_thresholds_their_test_measures_and_calibration(
        trained_runs, tmp_path):
    import shutil
    import warnings

    from cxrjax.evaluation import evaluator, operating_points
    from cxrjax.runfolder import loading as runs

    workdir = tmp_path / "run"
    shutil.copytree(trained_runs["a"][0], workdir, symlinks=True)
    config = runs.load_config(str(workdir))
    config.eval.n_boot, config.eval.calibration = 10, "temperature"
    config.eval.localization_heatmap = "gradcam_fine"
    evaluator.evaluate_run(str(workdir), config=config, write=True)
    _, val, val_labels, _ = evaluate.predict_workdir(str(workdir), "val")
    _, test, test_labels, _ = evaluate.predict_workdir(str(workdir), "test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes without a validation positive: NaN
        want = operating_points.choose_thresholds(val["fused"], val_labels)
    saved = operating_points.OperatingPoints.load(workdir / "eval" / "thresholds.json")
    np.testing.assert_array_equal(saved.thresholds, want)
    assert saved.rule == "youden" and np.isfinite(want).any()
    metrics_json = json.loads((workdir / "eval" / "test_metrics.json").read_text())
    points = metrics_json["operating_points"]
    assert points["chosen_on"] == "validation" and points["n_boot"] == 10
    for c, name in enumerate(CLASSES):
        row = points["per_class"][name]
        if np.isfinite(want[c]):
            called = test["fused"][:, c] >= want[c]
            assert row["tp"] == float((called & (test_labels[:, c] == 1)).sum())
            assert row["fp"] == float((called & (test_labels[:, c] == 0)).sum())
        else:
            assert row["threshold"] is None and row["sensitivity"]["value"] is None
    calibration = metrics_json["calibration"]
    assert set(calibration["heads"]) == {"fused", "ce", "fce"}  # not MSML: a ranking score
    assert calibration["ranking_heads"] == ["msml"]
    rescaling = calibration["rescaling"]
    assert rescaling["method"] == "temperature" and rescaling["fitted_on"] == "validation"
    assert rescaling["test_ece_before"] == calibration["heads"]["fused"]
    assert metrics_json["localization"]["json"] == "eval/localization.json"
    assert metrics_json["localization"]["primary"] == "gradcam_fine"
    for name in ("reliability.png", "localization.png", "localization.json"):
        assert (workdir / "eval" / name).stat().st_size > 1000, name
    report = (workdir / "report.md").read_text()
    for heading in ("## Operating points", "## Calibration", "## Localization"):
        assert heading in report
    assert "![Reliability diagrams](eval/reliability.png)" in report
    assert "Temperature scaling of the fused prediction" in report


def _thresholds_file(path, classes, values, rule="youden"):
    from cxrjax.evaluation import operating_points

    operating_points.OperatingPoints(tuple(classes), np.asarray(values, float), rule).save(path)
    return str(path)


def test_cli_predictions_with_thresholds_adds_the_operating_point_table(
        chexnet_predictions, chexnet_test_list, tmp_path, capsys):
    from sklearn.metrics import precision_score, recall_score

    path, scores = chexnet_predictions
    ids, _ = chexnet_test_list
    table = load_label_table()
    labels = table.labels[table.rows(ids)]
    values = np.full(14, 0.5)
    values[13] = np.nan  # Hernia: no threshold, no call
    th = _thresholds_file(tmp_path / "thresholds.json", CLASSES, values)
    out = tmp_path / "m.json"
    assert evaluate.main(["--predictions", path, "--thresholds", th, "--json", str(out),
                          "--n_boot", "20"]) == 0
    printed = capsys.readouterr().out
    assert "Operating points at the thresholds of" in printed and "specificity" in printed
    points = json.loads(out.read_text())["operating_points"]
    for c, name in enumerate(CLASSES[:13]):
        row = points["per_class"][name]
        assert row["sensitivity"]["value"] == pytest.approx(
            recall_score(labels[:, c], scores[:, c] >= 0.5))
        assert row["ppv"]["value"] == pytest.approx(
            precision_score(labels[:, c], scores[:, c] >= 0.5))
        sens = row["sensitivity"]
        assert sens["low"] <= sens["value"] <= sens["high"]
    assert points["per_class"]["Hernia"]["threshold"] is None


def test_thresholds_for_other_classes_or_with_workdir_are_one_line_errors(
        small, trained_runs, tmp_path, capsys):
    preds = _write(tmp_path / "p.csv", *small)
    other = _thresholds_file(tmp_path / "t13.json", CLASSES[:13], np.full(13, 0.5))
    assert evaluate.main(["--predictions", preds, "--thresholds", other, "--n_boot", "0"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "INFO" not in line]
    assert len(err) == 1 and "other classes" in err[0] and "Hernia" in err[0], err
    good = _thresholds_file(tmp_path / "t.json", CLASSES, np.full(14, 0.5))
    assert evaluate.main(["--workdir", trained_runs["a"][0], "--thresholds", good]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "INFO" not in line]
    assert len(err) == 1 and "--thresholds applies to --predictions only" in err[0], err


def test_a_file_given_as_workdir_is_named_a_file_in_one_line(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# not a run\n")
    assert evaluate.main(["--workdir", str(readme)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {readme} is a file, not a run folder (give the folder that " \
                  "cxrjax.main wrote)", err

"""scripts/benchmark.py: every mode of ours runs at a tiny size and prints valid JSON lines with
its keys; the compile mode's warm process is served by the persistent cache; paper-run's phases
add up to its wall time; resume restarts a run stopped by SIGTERM; metrics, backbone and the data
modes set each figure beside its reference."""

import importlib.util
import json
import os

import pytest
from helpers import cli_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A tiny R18 row: the ResNet family's test-sized trunk, 32-px crops.
TINY = ["--configs", "r18", "--set", "model.trunk_a=resnet_tiny", "--size", "32", "--batch", "4"]
# A synthetic set of a few dozen images is prepared in this process, not by a pool per core.
ONE_PREPARER = ["--set", "data.prepare_workers=1"]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts",
                                                                     f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def benchmark_module():
    """scripts/benchmark.py, loaded once: its modes run in this process (the JAX, data and torch
    imports paid once), but for the processes a mode starts itself (compile, resume)."""
    return _load("benchmark")


@pytest.fixture
def bench(benchmark_module, capsys, monkeypatch):
    """Runs ``benchmark.py ARGV`` (its ``main``); the JSON lines it printed. The processes a
    mode starts run without torch, as where users run (``helpers.cli_env``)."""
    monkeypatch.setenv("PYTHONPATH", cli_env()["PYTHONPATH"])

    def run(*argv: str) -> list[dict]:
        capsys.readouterr()  # what the test printed before is not the mode's
        benchmark_module.main(list(argv))
        out = capsys.readouterr().out
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert lines, out
        overrides = [value for flag, value in zip(argv, argv[1:], strict=False)
                     if flag == "--set"]
        for line in lines:  # every figure says where and with what it was measured
            assert {"date", "device", "host", "jax_version", "xla_flags", "bench"} <= line.keys()
            assert line.get("set", []) == overrides
        return lines

    return run


def test_torch_reference_mirrors_the_densenet_rows_with_their_256_channel_reduction():
    benchmark = _load("benchmark")
    assert benchmark.torch_args("d121_vgg_msml") == [
        "--model", "fmsml", "--a", "densenet121", "--b", "vgg16", "--proj", "512",
        "--reduce", "256"]
    assert benchmark.torch_args("d121_msml")[-2:] == ["--reduce", "256"]
    assert "--reduce" not in benchmark.torch_args("r18_msml")
    assert benchmark.torch_args("d121") == ["--model", "baseline", "--a", "densenet121"]


def test_set_overrides_config_fields_by_dotted_path_and_list_index():
    common = _load("bench_common")
    c = common.load_config("r18_msml", ["model.trunk_a=resnet_tiny", "train.stages.0.epochs=2",
                                        "model.bilinear_reduce=8", "data.flip=True"])
    assert (c.model.trunk_a, c.train.stages[0].epochs, c.model.bilinear_reduce, c.data.flip) \
        == ("resnet_tiny", 2, 8, True)
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        common.load_config("r18", ["model.trunk_a"])
    with pytest.raises(SystemExit, match="no_such_field"):
        common.load_config("r18", ["model.no_such_field.x=1"])


def test_phases_count_each_second_once_compile_first_then_the_innermost_phase():
    split = _load("bench_paper_run").split_phases
    phases = [(0, 2, "data"), (5, 6, "validation"), (7, 9, "test_metrics"), (8, 9, "report")]
    compiles = [(1, 1.5), (5.5, 6.5), (5.8, 6.0)]  # nested spans count once
    got = split(0, 10, phases, compiles)
    assert got == {"data": 1.5, "compile": 1.5, "train": 4.5, "validation": 0.5,
                   "test_metrics": 1.0, "report": 1.0}
    assert sum(got.values()) == pytest.approx(10)


def test_train_mode_prints_the_step_figure(bench):
    (line,) = bench("train", *TINY, "--steps", "2", "--warmup", "1")
    assert line["bench"] == "train_step" and line["impl"] == "jax" and line["config"] == "r18"
    assert line["img_per_s"] > 0 and line["step_ms"] > 0 and line["compiles"] == 1
    assert (line["batch"], line["size"]) == (4, 32)


def test_compile_mode_times_each_function_cold_then_warm_from_the_cache(bench):
    lines = bench("compile", *TINY, "--eval-batch", "4", "--predict-batch", "2",
                   "--min-compile-s", "0")
    by = {(x["run"], x["function"]): x for x in lines}
    functions = ("train_step", "eval_predict", "predict_scores", "predict_gradcam")
    assert set(by) == {(run, f) for run in ("cold", "warm")
                       for f in ("init", *functions, "time_to_first_step")}
    for f in functions:
        cold, warm = by["cold", f], by["warm", f]
        assert {"trace_s", "compile_s", "first_run_s", "cache_hits", "cache_writes"} <= cold.keys()
        assert cold["cache_writes"] >= 1 and cold["cache_hits"] == 0, f
        assert warm["cache_hits"] >= 1 and warm["cache_writes"] == 0, f
    assert by["warm", "init"]["cache_hits"] >= 1
    assert by["warm", "time_to_first_step"]["seconds"] > 0


def test_end_to_end_mode_feeds_the_step_from_grain(bench, tmp_path):
    (line,) = bench("end-to-end", *TINY, *ONE_PREPARER, "--steps", "2", "--warmup", "1",
                     "--data_root", str(tmp_path), "--synthetic_n", "48", "--resolution", "40")
    assert line["bench"] == "end_to_end" and line["img_per_s"] > 0 and line["ratio"] > 0


def test_paper_run_times_every_phase_of_a_whole_run_and_writes_its_report(bench, tmp_path):
    # The report's optional sections (box localization, subgroups, the metadata baseline) off:
    # the phases are what is tested, and the test phase and report.md run without them.
    sections_off = [x for s in ("localization", "subgroups", "metadata_baseline")
                    for x in ("--set", f"eval.{s}=False")]
    (line,) = bench("paper-run", "--config", "r18", "--set", "model.trunk_a=resnet_tiny",
                    *sections_off, *ONE_PREPARER, "--scale", "0.0015", "--resolution", "40",
                    "--crop", "32", "--batch", "16", "--eval-batch", "32", "--epochs", "2",
                    "--n-boot", "10", "--workers", "0", "--workdir", str(tmp_path / "run"))
    assert line["bench"] == "paper_run" and line["images"] == 168 and line["epochs"] == 2
    phases = line["phases_s"]
    assert set(phases) == {"data", "compile", "train", "validation", "test_metrics", "report"}
    assert all(v >= 0 for v in phases.values()) and phases["data"] > 0 and phases["compile"] > 0
    assert sum(phases.values()) == pytest.approx(line["total_s"], abs=0.1)
    assert line["steps"] > 0 and line["steps"] % 2 == 0  # whole epochs
    assert 0 <= line["test_mean_auc"] <= 1 and len(line["test_mean_auc_ci95"]) == 2
    assert (tmp_path / "run" / "report.md").is_file()
    assert (tmp_path / "run" / "eval" / "test_metrics.json").is_file()


def test_resume_mode_times_a_second_command_after_sigterm_until_it_restored(bench):
    (line,) = bench("resume", *TINY, *ONE_PREPARER, "--images", "40")
    assert line["bench"] == "resume" and line["package_root"] == ROOT
    assert line["first_run_to_checkpoint_s"] > 0 and line["resume_to_restored_s"] > 0


def test_metrics_mode_times_the_jitted_summary_beside_the_sklearn_bootstrap(bench):
    (line,) = bench("metrics", "--n_boot", "3")
    assert line["bench"] == "metrics_summary" and (line["images"], line["classes"]) == (22433, 14)
    assert line["first_call_s"] > 0 and line["second_call_s"] > 0
    assert line["sklearn_mean_ci_s"] > 0


def test_backbone_mode_times_jax_beside_torchvision_forward_and_backward(bench):
    lines = bench("backbone", "--archs", "resnet18", "--dtypes", "float32", "--batch", "2",
                   "--size", "32", "--steps", "1", "--warmup", "1")
    assert {(x["impl"], x["mode"]) for x in lines} == {
        (impl, mode) for impl in ("jax", "torch") for mode in ("fwd", "fwd_bwd")}
    assert all(x["arch"] == "resnet18" and x["img_per_s"] > 0 for x in lines)


def test_data_modes_time_the_builder_and_grain_on_the_real_sample_images(bench):
    prepare = bench("data-prepare", "--workers", "1", "--resolution", "32",
                     "--repeat", "1", "--formats", "nih")
    what = {x["what"] for x in prepare}
    assert {"bare PIL decode+resize loop", "chest_xray14 builder"} <= what
    assert all(x.get("images", 207) == 207 for x in prepare)
    pipeline = bench("data-pipeline", "--workers", "0", "--resolution", "32", "--crop",
                      "24", "--batch", "8", "--batches", "2", "--repeat", "1")
    assert [x["what"] for x in pipeline] == ["TFDS ArrayRecord random read",
                                             "grain train batches"]
    assert all(x["images_per_s"] > 0 for x in pipeline)


def test_data_prepare_times_each_releases_builder_beside_a_bare_loop_of_the_same_files(
        bench, tmp_path):
    lines = bench("data-prepare", "--workers", "1", "--resolution", "32", "--formats",
                   "chexpert,mimic_cxr,padchest", "--synthetic_n", "8", "--synthetic_size", "64",
                   "--data_root", str(tmp_path))
    by = {(x["format"], x["what"]): x for x in lines}
    assert len(by) == len(lines) == 6
    for fmt, files in (("chexpert", "JPEG"), ("mimic_cxr", "JPEG"), ("padchest", "PNG 16-bit")):
        bare, built = by[fmt, "bare PIL decode+resize loop"], by[fmt, f"{fmt} builder"]
        assert bare["files"] == built["files"] == files
        assert bare["images"] == built["images"] == 8
        assert built["workers"] == 1 and built["vs_bare_loop"] > 0
        assert built["vs_bare_loop"] == round(
            built["images_per_s"] / built["bare_loops_in_parallel_images_per_s"], 3)


def test_checkpoint_mode_times_the_array_checksums_beside_the_save_call(bench):
    (line,) = bench("checkpoint", *TINY, "--steps", "2")
    assert line["bench"] == "checkpoint_checksum" and line["saves"] == 2
    assert line["state_bytes"] > 0 and line["arrays"] > 10
    assert 0 < line["checksum_s"] and 0 < line["save_call_s"] <= line["save_until_written_s"]

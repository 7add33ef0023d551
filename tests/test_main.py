"""python -m cxrjax.main as a user meets it: --help, one-line mistakes, the run's last line."""

import os
import re
import subprocess
import sys

from helpers import cli_env, run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "r18.py")
ENV = cli_env(PYTHONUNBUFFERED="1")


def _main(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxrjax.main", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_help_describes_the_job_its_outputs_and_resuming():
    done = _main("--help")
    assert done.returncode == 0, done.stderr
    text = done.stdout + done.stderr
    for words in ("Train one model", "test split", "report.md", "checkpoints/", "Resuming",
                  "--restart", "--config.train.stages[0].epochs=2"):
        assert words in text, words
    assert "one call" not in text and "train.py" not in text  # the job, not the code


def test_a_misspelled_override_is_one_line_with_the_field_it_meant(tmp_path):
    line = _one_error_line(_main("--config", CONFIG, "--workdir", str(tmp_path / "w"),
                                 "--config.train.batchsize=8"))
    assert line == ("error: --config.train.batchsize: no field 'batchsize' in train; did you "
                    "mean --config.train.batch_size?")
    line = _one_error_line(_main("--config", CONFIG, "--workdir", str(tmp_path / "w"),
                                 "--config.trian.batch_size=8"))
    assert "did you mean --config.train.batch_size?" in line
    line = _one_error_line(_main("--config", CONFIG, "--workdir", str(tmp_path / "w"),
                                 "--config.train.stages[2].epochs=1"))
    assert line == "error: --config.train.stages[2].epochs: train.stages has 1 entry, no [2]"
    assert not (tmp_path / "w").exists()


def test_a_missing_or_broken_config_file_is_named_in_one_line(tmp_path):
    missing = tmp_path / "nope.py"
    line = _one_error_line(_main("--config", str(missing), "--workdir", str(tmp_path / "w")))
    assert line == f"error: --config {missing}: no such file ({missing})"
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config():\n    raise KeyError('model')\n")
    line = _one_error_line(_main("--config", str(broken), "--workdir", str(tmp_path / "w")))
    assert line == f"error: --config {broken}: cannot load it: KeyError: 'model'"
    assert not (tmp_path / "w").exists()


def test_a_run_ends_with_its_test_result_and_logs_in_one_format(tiny_data, tmp_path):
    c = run_config("r18", tiny_data)
    workdir = tmp_path / "run"
    done = _main(
        "--config", CONFIG, "--workdir", str(workdir), f"--config.model.trunk_a={c.model.trunk_a}",
        "--config.model.init=scratch", f"--config.data.manual_dir={c.data.manual_dir}",
        f"--config.data.data_dir={c.data.data_dir}", "--config.data.resolution=40",
        "--config.data.crop=32", "--config.data.workers=0", "--config.train.batch_size=8",
        "--config.train.eval_batch_size=16", "--config.train.stages[0].epochs=1",
        "--config.eval.n_boot=10", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"test mean AUC (0\.\d{4}) \[(0\.\d{4}), (0\.\d{4})\] on (\d+) images, "
                         r"report at (.+)", last)
    assert match, last
    assert match[5] == str(workdir / "report.md") and os.path.isfile(match[5])
    assert int(match[4]) > 0 and float(match[2]) <= float(match[1]) <= float(match[3])
    assert "Config file `" + CONFIG + "`, overridden by `--config.model.trunk_a=" in \
        (workdir / "report.md").read_text()
    # Our messages and the libraries' in one format: no absl ("I1127 ...") or root ("INFO:x:")
    logged = [line for line in done.stderr.splitlines() if re.match(r"\d\d:\d\d:\d\d ", line)]
    assert any(" INFO epoch 1/1: val mean AUC" in line for line in logged)  # one stage: no name
    assert not [line for line in done.stderr.splitlines()
                if re.match(r"[IWEF]\d{4} |(INFO|WARNING|ERROR):\w", line)], done.stderr

    # --mode eval reads the config the workdir records; a --config given must be that one.
    again = _main("--mode", "eval", "--workdir", str(workdir), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.strip().splitlines()[-1].split(" [")[0] == last.split(" [")[0]
    line = _one_error_line(_main("--mode", "eval", "--workdir", str(workdir), "--config", CONFIG,
                                 timeout=600))
    assert line.startswith(f"error: refusing to evaluate {workdir} with another model"), line
    assert "model.trunk_a" in line


def test_training_needs_a_config_and_eval_a_run(tmp_path):
    line = _one_error_line(_main("--workdir", str(tmp_path / "w")))
    assert line == "error: --config is required to train (python -m cxrjax.main --help)"
    line = _one_error_line(_main("--mode", "eval", "--workdir", str(tmp_path)))
    assert line == f"error: {tmp_path} is not a cxrjax workdir (no config.json in it)"

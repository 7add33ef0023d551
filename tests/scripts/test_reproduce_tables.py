"""scripts/reproduce_tables.py on workdirs without results: each line says what is true (no
checkpoint, a stage without one, checkpoints but no test) and gives the command that helps."""

import importlib.util
import json
import os
import shlex
import sys

import jax.numpy as jnp
import pytest

from configs import r18, r18_msml_local
from cxrjax.io import checkpoint, run_layout
from cxrjax.runfolder import loading as runs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "reproduce_tables", os.path.join(ROOT, "scripts", "reproduce_tables.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


reproduce_tables = _load_script()


def _workdir(path, config, argv_tail=()) -> tuple[str, list[str]]:
    """A workdir as train.py leaves it before its first checkpoint: config, command, an empty
    checkpoint folder per stage; returns it and the recorded training argv."""
    workdir = str(path)
    runs.record_config(workdir, config)
    argv = ["python", "-m", "cxrjax.main", "--config", "configs/x.py", "--workdir", workdir,
            "--config.data.manual_dir=/my data", "--config.train.batch_size=16", *argv_tail]
    with open(os.path.join(workdir, run_layout.COMMAND), "w") as f:
        json.dump({"config_file": "configs/x.py", "overrides": argv[7:], "argv": argv}, f)
    for i, stage in enumerate(config.train.stages):
        os.makedirs(runs.stage_dir(workdir, i, stage))
    return workdir, argv


def _save_checkpoint(workdir: str, index: int, stage, step: int) -> None:
    manager = checkpoint.open_manager(runs.stage_dir(workdir, index, stage), keep=2)
    checkpoint.save(manager, step, {"w": jnp.ones(2)}, {}, {"epoch": 1.0}, float("nan"))
    manager.wait_until_finished()


def _problem(workdir: str) -> str:
    run = reproduce_tables.load_run(workdir)
    assert run.summary is None and run.problem.startswith("no eval/test_metrics.json: ")
    return run.problem.removeprefix("no eval/test_metrics.json: ")


def test_a_run_without_a_checkpoint_is_told_to_train_again_not_to_evaluate(tmp_path):
    config = r18.get_config()
    workdir, argv = _workdir(tmp_path / "small", config, ["--restart"])
    os.makedirs(os.path.join(runs.stage_dir(workdir, 0, config.train.stages[0]),
                             "3.orbax-checkpoint-tmp-17"))  # a write cut short is no checkpoint
    problem = _problem(workdir)
    assert problem.startswith("no checkpoint: training stopped before the end of its first epoch")
    assert f"`{shlex.join(argv[:-1])}`" in problem  # the recorded command, less --restart
    assert "--mode" not in problem
    with pytest.raises(FileNotFoundError, match="not finished a checkpoint"):  # what eval says
        runs.best_step(runs.final_stage_dir(workdir))


def test_a_run_with_a_checkpoint_but_no_test_is_told_mode_eval(tmp_path, capsys):
    config = r18.get_config()
    workdir, argv = _workdir(tmp_path / "small", config, ["--mode", "train"])
    _save_checkpoint(workdir, 0, config.train.stages[0], 6)
    assert runs.best_step(runs.final_stage_dir(workdir)) == 6  # --mode eval has one to test
    problem = _problem(workdir)
    train = shlex.join(argv[:-2])
    assert problem.startswith("checkpoints (last: step 6) but no test results")
    assert f"`{train} --mode eval` tests the best one" in problem
    assert f"`{train}` resumes it" in problem
    assert reproduce_tables.main(["--runs", workdir]) == 0
    listed = capsys.readouterr().out.split("## Workdirs without results", 1)[1]
    assert f"`{workdir}`" in listed and "--mode eval" in listed


def test_a_two_stage_run_stopped_before_its_second_stage_is_told_to_resume(tmp_path):
    config = r18_msml_local.get_config()
    stages = config.train.stages
    assert len(stages) == 2
    workdir, argv = _workdir(tmp_path / "local", config)
    _save_checkpoint(workdir, 0, stages[0], 10)
    problem = _problem(workdir)
    assert problem.startswith(f"stopped in stage 2 of 2 ({stages[1].name}) before its first "
                              "checkpoint; run the training command again to resume")
    assert f"`{shlex.join(argv)}`" in problem and "--mode" not in problem


def test_a_run_without_a_recorded_command_gets_its_configs_usual_command(tmp_path):
    config = r18.get_config()
    workdir, _ = _workdir(tmp_path / "r18", config)
    os.remove(os.path.join(workdir, run_layout.COMMAND))
    problem = _problem(workdir)
    assert problem.endswith(f"`python -m cxrjax.main --config configs/r18.py --workdir "
                            f"{workdir}`")

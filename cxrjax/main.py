"""Train one model of Ge et al. 2018 on ChestX-ray14 and test it: one command per run.

    python -m cxrjax.main --config configs/r18_msml.py --workdir runs/r18_msml

Trains the config's stages in order (validation mean AUC after every epoch), then scores the
best checkpoint of the last stage on the test split. The last line printed is the result:
"test mean AUC X [lo, hi] on N images, report at WORKDIR/report.md". WORKDIR holds:

  config.json              the config as run (with every override)
  checkpoints/stage<i>_*/  per stage, the latest train.keep_checkpoints steps and the best epoch
  metrics.jsonl, tensorboard/   loss, learning rate and validation AUC while training
  eval/                    test predictions (CSV), test_metrics.json, ROC curves
  report.md                test AUC per class with 95% CIs, how the run differs from the
                           paper's recipe, training curves

Resuming: the same command again continues from the newest readable checkpoint (after a kill
too). A SIGTERM while training (a spot VM's or Slurm's notice) finishes the step in flight,
saves it and exits with code 75 and one line naming the step; at any other moment (start-up,
the test phase) a single-process run stops with one line saying what was done and exit code 75
too, and the same command completes the run (multi-host: jax.distributed's own handler takes
SIGTERM outside training, which only notes it); a Ctrl-C does the same with exit code 130 (a
second Ctrl-C stops at once, without saving). WORKDIR may be gs://BUCKET/... (checked writable
before any work). Only the learning rate, logging, checkpoint, evaluation,
worker and path fields may change on resume (cxrjax.runfolder.ownership.RESUMABLE_FIELDS), and a
stage's epochs; a workdir that holds a run of another config is refused, untouched. --restart moves
that run aside (WORKDIR.old-<time>) and starts over; nothing is ever deleted.

Any config field can be overridden: --config.train.batch_size=32,
--config.train.stages[0].epochs=2, --config.model.init=scratch. --mode eval scores a finished
run's best checkpoint again and rewrites its eval/ files and report (with the config recorded in
WORKDIR; a --config given must match it). To try it on a CPU in
minutes, without any download: --config configs/demo.py (synthetic data).
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from cxrjax.io import preemption  # imports nothing that starts a thread

# A config file imports only the installed package (cxrjax.recipe): any path, any directory.
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The run's config: a .py file with get_config() (configs/*.py); "
    "--mode eval reads it from --workdir.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's folder (created if needed): "
                               "checkpoints, logs, test results and report.md.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"],
                          "train: train (resuming if possible), then test; eval: test the "
                          "finished run in --workdir again.")
_RESTART = flags.DEFINE_bool("restart", False, "Start over: move a run already in --workdir "
                             "aside (renamed WORKDIR.old-<time>, not deleted) first.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "yes", "no"],
    "Call jax.distributed.initialize(): auto = when a cluster environment is detected.")
flags.mark_flags_as_required(["workdir"])

# Variables by which a multi-host launcher announces itself (TPU pod, SLURM, explicit).
_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS",
                "MEGASCALE_COORDINATOR_ADDRESS")


# ---------------------------------------------------------------------------------------------
# Flags: every mistake (a missing config file, a misspelled override) is one line, exit code 2.
# ---------------------------------------------------------------------------------------------


_HELP_FLAGS = ("help", "helpshort", "helpfull", "helpxml", "?")


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, and the config file loaded now, each failure one line; the help
    exits with code 0 (absl's with 1)."""
    # First of all: the threads that the config's imports start (numpy's) must leave Ctrl-C to
    # _CTRL_C, as must every thread and worker process started later. A SIGTERM from now on
    # ends in one line and exit code 75 (_SIGTERM; while training, the loop's watcher's).
    _CTRL_C.install()
    _SIGTERM.install()
    try:
        from cxrjax import config_checks  # in the try: a signal during the import is one line

        rest = flags.FLAGS(argv)
        if _CONFIG.value is not None:
            _CONFIG.value.keys()  # a config file that failed to load raises on first use: here
        return rest
    except SystemExit as e:  # absl's help flags print the help, then exit with code 1
        asked = any(a.lstrip("-").split("=")[0] in _HELP_FLAGS for a in argv[1:]
                    if a.startswith("-"))
        sys.exit(0 if asked and e.code == 1 else e.code)
    except KeyboardInterrupt:
        _CTRL_C.exit()
    except preemption.Terminated as e:
        _CTRL_C.exit(str(e), preemption.PREEMPTED_EXIT_CODE)
    except Exception as e:  # noqa: BLE001 - config_flags raises many kinds: one line each
        from cxrjax import config_checks

        print(f"error: {config_checks.flag_problem(argv, e)}", file=sys.stderr)
        sys.exit(2)


# ---------------------------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------------------------


def _command() -> dict:
    """This command as the report shows it: the config file, the overrides, the argv."""
    from cxrjax import config_checks

    argv = sys.argv[1:]
    return {"config_file": config_checks.config_path(argv),
            "overrides": [a for a in argv if a.startswith("--config.")],
            "argv": ["python", "-m", "cxrjax.main", *argv]}


def _maybe_initialize_distributed(log) -> None:
    import jax

    mode = _DISTRIBUTED.value
    detected = any(os.environ.get(k) for k in _CLUSTER_ENV) and not (
        os.environ.get("SLURM_NTASKS") == "1")
    if mode == "yes" or (mode == "auto" and detected):
        jax.distributed.initialize()
        log.info("process %d of %d", jax.process_index(), jax.process_count())


def _recorded_config(workdir: str):
    """The config recorded in ``workdir`` (a run's), or WorkdirError in one line."""
    from cxrjax.io import fileio
    from cxrjax.runfolder import loading as runs
    from cxrjax.runfolder import ownership as workdir_lib

    try:
        return runs.load_config(fileio.expand(workdir))
    except ValueError as e:
        raise workdir_lib.WorkdirError(str(e)) from None


def _end_progress_bars() -> None:
    """Before the last line: each open progress bar closed, its line ended."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def _release_worker_memory() -> None:
    """At a Ctrl-C: grain's worker processes stopped and their shared memory unlinked."""
    workers = sys.modules.get("cxrjax.data.grain_workers")
    if workers is not None:
        workers.close_open_iterators()


def _sigterm_line(trained: bool) -> str:
    """What a SIGTERM outside training stopped (``trained``: this process finished training),
    and that the same command completes it."""
    try:
        mode = _MODE.value
    except flags.UnparsedFlagAccessError:
        mode = "train"
    if trained:
        return ("preempted (SIGTERM) in the test phase: training is complete and saved, the "
                "test files already written are whole; run the same command again to complete "
                "the test and the report")
    if mode == "eval":
        return ("preempted (SIGTERM) while testing: the files already written are whole; run "
                "the same command again to complete them")
    return ("preempted (SIGTERM) before training started: no step was in flight, nothing to "
            f"save; {preemption.RESUME}")


# A Ctrl-C ends the program in one line, with exit code 130; a SIGTERM outside training in one
# line, with exit code 75 (both installed by _parse_flags).
_CTRL_C = preemption.CtrlC(before_line=_end_progress_bars, cleanup=[_release_worker_memory])
_SIGTERM = preemption.Sigterm(_sigterm_line, ending=_CTRL_C)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        from cxrjax.io import logs

        _run(logs.setup())
    except preemption.Interrupted as e:  # the step in flight is saved: the same command resumes
        _CTRL_C.exit(str(e))
    except KeyboardInterrupt:
        _CTRL_C.exit()
    except preemption.Terminated as e:  # outside training: a rerun does what was not done
        _CTRL_C.exit(str(e), preemption.PREEMPTED_EXIT_CODE)


def _run(log) -> None:
    """The run of ``--mode``; every expected failure is one line and exit code 2."""
    if _RESTART.value and _MODE.value != "train":
        print("error: --restart applies to --mode train only", file=sys.stderr)
        sys.exit(2)
    if _CONFIG.value is None and _MODE.value == "train":
        print("error: --config is required to train (python -m cxrjax.main --help)",
              file=sys.stderr)
        sys.exit(2)
    from cxrjax.io import storage_checks

    try:  # before any work: a wrong bucket or an unreachable server is one line, at once
        storage_checks.check_writable(_WORKDIR.value)
    except storage_checks.StorageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    _maybe_initialize_distributed(log)  # before the loop's PreemptionWatcher, which asks JAX
    import jax

    from cxrjax import config_checks, train
    from cxrjax.data.labels import LabelError
    from cxrjax.evaluation import evaluator
    from cxrjax.io import checkpoint, compilation_cache
    from cxrjax.runfolder import ownership as workdir_lib

    try:
        # --mode eval without --config: the run's own, recorded in its workdir.
        config = _CONFIG.value or _recorded_config(_WORKDIR.value)
        compilation_cache.enable(config.get("compile_cache_dir", compilation_cache.DEFAULT_DIR))
        if _MODE.value == "train":
            results = train.train_and_evaluate(config, _WORKDIR.value,
                                               restart=_RESTART.value, command=_command())
        else:  # the path of `python -m cxrjax.evaluate --workdir`, writing the run's files
            results = evaluator.evaluate_run(_WORKDIR.value, "test", config=_CONFIG.value,
                                             write=True)[1].results
    except preemption.Preempted as e:  # the step is saved: the same command resumes
        print(e, file=sys.stderr)
        sys.exit(preemption.PREEMPTED_EXIT_CODE)
    except (config_checks.ConfigError, checkpoint.CheckpointError, workdir_lib.WorkdirError,
            LabelError, FileNotFoundError, FloatingPointError,
            OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    _SIGTERM.finished()  # every file is written: a notice from now on changes nothing
    if jax.process_index() == 0:
        print(evaluator.summary_line(results["fused"], _WORKDIR.value), flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)

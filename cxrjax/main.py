"""Entry point: ``python -m cxrjax.main --config configs/r18_msml.py --workdir runs/r18_msml``.

Flags, distributed initialisation, one call into train.py (or evaluation of a finished run).
"""

import os
import sys

from absl import app, flags, logging

# Configs import `configs.base`: make the repository root importable wherever we run from.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_ROOT, "configs")) and _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config (a .py file).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and reports.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"],
                          "train: train (resuming if possible), then test; eval: test only.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "yes", "no"],
    "Call jax.distributed.initialize(): auto = when a cluster environment is detected.")
flags.mark_flags_as_required(["config", "workdir"])

# Variables by which a multi-host launcher announces itself (TPU pod, SLURM, explicit).
_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS",
                "MEGASCALE_COORDINATOR_ADDRESS")


def _maybe_initialize_distributed() -> None:
    import jax

    mode = _DISTRIBUTED.value
    detected = any(os.environ.get(k) for k in _CLUSTER_ENV) and not (
        os.environ.get("SLURM_NTASKS") == "1")
    if mode == "yes" or (mode == "auto" and detected):
        jax.distributed.initialize()
        logging.info("process %d of %d", jax.process_index(), jax.process_count())


def _setup_logging() -> None:
    """Our messages at INFO on stderr; libraries (orbax logs every read) at WARNING."""
    import logging as py_logging

    logging.set_verbosity(logging.WARNING)
    handler = py_logging.StreamHandler(sys.stderr)
    handler.setFormatter(py_logging.Formatter("%(asctime)s %(levelname)s %(message)s",
                                              "%H:%M:%S"))
    ours = py_logging.getLogger("cxrjax")
    ours.setLevel(py_logging.INFO)
    ours.addHandler(handler)
    ours.propagate = False
    # Library warnings that are no news: orbax on mid-epoch checkpoints (no validation score)
    # and read-only restores, TFDS on every load of our resolution-named builder configs.
    noise = ("did not provide metrics", "Using custom data configuration",
             "has no dataset_info.json", "Metadata file does not exist", "read_only=True",
             "Given directory is read only")
    py_logging.getLogger("absl").addFilter(
        lambda record: not any(n in record.getMessage() for n in noise))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    _setup_logging()
    _maybe_initialize_distributed()
    from cxrjax import checkpoint, config_checks, train
    from cxrjax.data.labels import LabelError

    try:
        if _MODE.value == "train":
            train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
        else:
            train.evaluate_run(_CONFIG.value, _WORKDIR.value)
    except (config_checks.ConfigError, checkpoint.CheckpointError, LabelError, FileNotFoundError,
            FloatingPointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)

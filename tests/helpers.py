"""Shared test helpers: the paper configs, tiny variants of them, counting compilations."""

import collections
import contextlib
import importlib
import os
import re
import sys
from collections.abc import Iterator

import jax

# Every config under configs/ that is a row of the paper's Tables 1-2 (not base or demo).
PAPER_CONFIGS = ["r18", "r18_bl", "r18_r18_bl", "r18_msml", "r18_msml_local",
                 "r18_msml_local_fixed", "d121", "d121_bl", "d121_d121_bl", "d121_msml",
                 "r18_vgg_msml", "d121_vgg_msml"]

TINY = {"resnet18": "resnet_tiny", "densenet121": "densenet_tiny", "vgg16": "vgg_tiny"}

_SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
if _SCRIPTS not in sys.path:
    sys.path.append(_SCRIPTS)  # last: a script never shadows a package
# The fuzz script's tiny run and the tests' models get their variables from one maker.
from fuzz_runs import random_variables  # noqa: E402, F401

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_ROOT = os.path.dirname(_SCRIPTS)
_WITHOUT_TORCH = os.path.join(_ROOT, "tests", "without_torch")


def xla_flags(devices: int) -> str:
    """The suite's XLA_FLAGS (tests/conftest.py) with ``devices`` CPU devices instead of 2, so
    that a process of fewer devices compiles as the suite does."""
    return re.sub(r"--xla_force_host_platform_device_count=\d+",
                  f"--xla_force_host_platform_device_count={devices}", os.environ["XLA_FLAGS"])


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI run as a subprocess: CPU, the package importable, and torch
    absent as where users run it (tests/without_torch); ``extra`` added (the session's
    compilation cache comes with ``os.environ``, tests/conftest.py)."""
    path = os.pathsep.join([_WITHOUT_TORCH, _ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": path, **extra}


@contextlib.contextmanager
def count_compiles() -> Iterator[collections.Counter]:
    """Counts XLA compilations per jitted function name ({"step": 1}) while the block runs.

    Public API only: JAX reports every compilation to ``jax.monitoring`` listeners (a hit of
    the persistent compilation cache counts too: it is a miss of the jitted function's own).
    """
    counts: collections.Counter = collections.Counter()

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == _BACKEND_COMPILE:
            name = str(kwargs.get("fun_name", "?"))
            counts[re.sub(r"^jit\((.*)\)$", r"\1", name)] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def tiny_config(name: str, crop: int = 32, batch: int = 8):
    """A paper config with its trunks swapped for tiny variants of the same families."""
    c = importlib.import_module(f"configs.{name}").get_config()
    c.model.trunk_a = TINY.get(c.model.trunk_a, c.model.trunk_a)
    if c.model.trunk_b is not None:
        c.model.trunk_b = TINY.get(c.model.trunk_b, c.model.trunk_b)
    if c.model.bilinear_reduce:
        c.model.bilinear_reduce = 8
    c.model.bilinear_dim = 16
    c.model.init = "scratch"
    c.data.crop = crop
    c.train.batch_size = batch
    c.train.lr = 1e-3
    return c


def run_config(name: str, data_root, epochs: int = 1):
    """A tiny config that trains on the ``tiny_data`` set (tests/conftest.py)."""
    c = tiny_config(name, crop=32, batch=8)  # DenseNet needs 32 px: its trunk strides by 32
    c.data.source = "nih"
    c.data.manual_dir = str(data_root / "nih")
    c.data.data_dir = str(data_root / "tfds")
    c.data.resolution = 40
    c.data.workers = 0
    c.train.eval_batch_size = 16
    c.train.log_every_steps = 5
    c.eval.n_boot = 20
    for stage in c.train.stages:
        stage.epochs = epochs
    return c


# What a test can leave off when it is not its point (tests/evaluation/ and test_train_run's
# report test cover each): the evaluation sections beyond AUC and the figures (eval.* switches).
# A run's test phase is then mostly scoring and the report's tables.
SECTIONS_OFF = ("localization", "subgroups", "metadata_baseline", "figures")
SECTIONS_OFF_FLAGS = [f"--config.eval.{name}=False" for name in SECTIONS_OFF]


def sections_off(config):
    """``config`` with the switches of ``SECTIONS_OFF`` turned off (and returned)."""
    for name in SECTIONS_OFF:
        config.eval[name] = False
    return config


def truncate_files(directory: str) -> None:
    """Cuts every file under ``directory`` to half its size (a crash mid-write, bit rot)."""
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)


def flip_a_bit(directory: str) -> str:
    """Flips one bit in the middle of the largest file under ``directory`` (a checkpoint's array
    data: bit rot that leaves every file's size as it was); returns the file's path."""
    files = [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.seek(os.path.getsize(largest) // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 4]))
    return largest

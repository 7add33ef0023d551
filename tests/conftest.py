"""Test-wide settings: two CPU devices, so that every sharded code path really shards."""

import atexit
import logging
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

# Must happen before JAX starts its backends (conftest is imported before any test module).
# XLA:CPU's older emitters instead of its fusion emitters: the same operations, compiled in less
# than half the time (docs/performance.md: a tiny R18's train step 1.73 -> 0.72 s), which is most
# of what the tiny models cost. Only where this jaxlib knows the flag (XLA stops
# on an unknown one): one probe a session, inherited by xdist's workers and every process the
# tests start through XLA_FLAGS. An XLA_FLAGS of the caller's own is left as it is.
QUICK_CPU_COMPILE = "--xla_cpu_use_fusion_emitters=false"
if "XLA_FLAGS" not in os.environ:
    _flags = f"--xla_force_host_platform_device_count=2 {QUICK_CPU_COMPILE}"
    _probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices('cpu')"],
                            env={**os.environ, "XLA_FLAGS": _flags, "JAX_PLATFORMS": "cpu"},
                            capture_output=True, timeout=300)
    os.environ["XLA_FLAGS"] = _flags if _probe.returncode == 0 else _flags.split()[0]
# XLA without its costly optimisation passes, in this process and every one the tests start:
# the same computations (equal to float rounding, not bit for bit, to optimised code), compiled
# in about half the CPU time, which is most of what the tiny models cost here. Every comparison
# the tests make is between programs compiled alike. JAX_DISABLE_MOST_OPTIMIZATIONS=0 runs the
# suite with the optimised code users get.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# Entry points turn JAX's persistent compilation cache on by default (in ~/.cache). The tests'
# processes (this one, pytest-xdist's workers and the CLIs run as subprocesses, which inherit the
# variable) share a fresh folder of this session instead: never the user's cache nor an earlier
# session's entries, and a step compiled by one test is loaded from disk by the next that needs
# the same program (kill-and-resume runs, the same tiny row trained by several tests).
if "CXRJAX_COMPILE_CACHE" not in os.environ:
    _SESSION_CACHE = tempfile.mkdtemp(prefix="cxrjax_test_compile_cache_")
    os.environ["CXRJAX_COMPILE_CACHE"] = _SESSION_CACHE
    atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "tests")):  # configs.<name> by name; tests' helpers
    if path not in sys.path:
        sys.path.insert(0, path)

# The GCS emulator's fixtures (gcs_server, gcs_bucket) for every test; importable through the
# sys.path entry above, and imported before any test module (it sets a gcsfs variable).
pytest_plugins = ("gcs_emulator",)


# The modules that take longest, first: pytest-xdist (--dist loadscope --no-loadscope-reorder,
# pyproject.toml) hands whole modules to the workers in collection order (by default it would
# reorder them by their number of tests), so the last ones to start are short and neither
# worker waits long for the other at the end. The rest keep their order. Every module of 8
# test-seconds or more, longest first (measured on the 2-core machine, 2026-12-06, 05:12).
_LONGEST_FIRST = (
    "test_multihost.py", "test_train.py", "scripts/test_benchmark.py", "test_train_run_gcs.py",
    "test_train_run.py", "test_evaluate.py", "scripts/test_fault_campaign.py",
    "test_atomic_outputs.py", "test_main.py", "models/test_backbones.py", "test_full_disk.py",
    "test_interrupt.py", "scripts/test_fuzz_inputs.py", "models/test_networks.py",
    "test_predict.py", "test_faults.py", "data/test_pipeline.py", "evaluation/test_metrics.py",
    "evaluation/test_external.py", "test_localize.py", "models/test_densenet.py",
    "models/test_port.py", "test_mixed_resume.py", "test_sigterm_outside_training.py",
    "runfolder/test_ownership.py", "runfolder/test_lock.py", "test_masked_step.py",
    "test_losses.py", "io/test_preemption.py", "evaluation/test_run_classes.py",
    "runfolder/test_loading.py")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        path = item.nodeid.split("::")[0].removeprefix("tests/")
        return _LONGEST_FIRST.index(path) if path in _LONGEST_FIRST else len(_LONGEST_FIRST)

    items.sort(key=rank)  # stable: each module's tests stay in their order


@pytest.fixture(scope="session", autouse=True)
def _session_compilation_cache():
    """The session's compilation cache (above) for what tests compile in this process too."""
    from cxrjax.io import compilation_cache

    compilation_cache.enable(None)  # the environment variable names the folder


@pytest.fixture
def optimised_xla():
    """XLA's optimisation passes on for one test (the suite turns them off, above): for the few
    whose time is running a program (bootstraps over 22,433 images), not compiling it."""
    import jax

    suite = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", suite)


@pytest.fixture(autouse=True)
def _restore_cxrjax_logging():
    """The CLIs' main() sets up the process's logging (level, handlers): undo it after each
    test, so that a later test's captured log records do not depend on which CLI ran first."""
    saved = [(log, log.level, list(log.handlers), log.propagate)
             for log in (logging.getLogger(), logging.getLogger("cxrjax"))]
    yield
    for log, level, handlers, propagate in saved:
        log.setLevel(level)
        log.handlers[:] = handlers
        log.propagate = propagate


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A 160-image synthetic set in the NIH layout, prepared at 40 px through the builder."""
    from cxrjax.data import builder, synthetic

    root = tmp_path_factory.mktemp("tiny_cxr14")
    synthetic.generate(str(root / "nih"), n=160, size=48, seed=0)
    builder.build(str(root / "nih"), str(root / "tfds"), resolution=40, workers=1)
    return root


@pytest.fixture(scope="session")
def tiny_chexpert(tmp_path_factory):
    """A 64-image synthetic set in CheXpert's layout (JPEGs), prepared at 40 px through its
    builder: with ``tiny_data``, the second source of a mixed run."""
    from cxrjax.data import release_builder, synthetic

    root = tmp_path_factory.mktemp("tiny_chexpert")
    synthetic.generate_format(str(root / "chexpert"), "chexpert", n=64, size=40, seed=0,
                              workers=0)
    release_builder.build("chexpert", str(root / "chexpert"), str(root / "tfds"), resolution=40,
                          workers=1)
    return root

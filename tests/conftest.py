"""Test-wide settings: two CPU devices, so that every sharded code path really shards."""

import logging
import os
import sys

import pytest

# Must happen before JAX starts its backends (conftest is imported before any test module).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
# Entry points turn JAX's persistent compilation cache on by default (in ~/.cache): tests that
# call them in-process must neither write there nor depend on earlier runs' entries.
os.environ.setdefault("CXRJAX_COMPILE_CACHE", "off")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "tests")):  # configs.<name> by name; tests' helpers
    if path not in sys.path:
        sys.path.insert(0, path)

# The GCS emulator's fixtures (gcs_server, gcs_bucket) for every test; importable through the
# sys.path entry above, and imported before any test module (it sets a gcsfs variable).
pytest_plugins = ("gcs_emulator",)


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

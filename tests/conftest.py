"""Test-wide settings: two CPU devices, so that every sharded code path really shards."""

import os
import sys

import pytest

# Must happen before JAX starts its backends (conftest is imported before any test module).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "tests")):  # configs/ as cxrjax.main imports it; helpers
    if path not in sys.path:
        sys.path.insert(0, path)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A 160-image synthetic set in the NIH layout, prepared at 40 px through the builder."""
    from cxrjax.data import builder, synthetic

    root = tmp_path_factory.mktemp("tiny_cxr14")
    synthetic.generate(str(root / "nih"), n=160, size=48, seed=0)
    builder.build(str(root / "nih"), str(root / "tfds"), resolution=40, workers=1)
    return root

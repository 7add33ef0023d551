"""Test-wide settings: two CPU devices, so that every sharded code path really shards."""

import os
import sys

# Must happen before JAX starts its backends (conftest is imported before any test module).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "tests")):  # configs/ as cxrjax.main imports it; helpers
    if path not in sys.path:
        sys.path.insert(0, path)

"""Put on PYTHONPATH by ``helpers.cli_env``: a CLI subprocess runs as it would where torch is
absent (torch is a test-time dependency only), so that it never imports it (tensorboardX would,
~1.3 s a process) and a run-time need of torch would fail the test."""

import importlib.abc
import sys


class _NoTorch(importlib.abc.MetaPathFinder):
    """Every ``torch`` and ``torchvision`` import fails as in an environment without them."""

    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in ("torch", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoTorch())

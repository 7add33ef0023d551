"""What every benchmark mode shares: configs by name with ``--set`` overrides, and the JSON lines.

A figure is one JSON line: the fields of the measurement, plus the date, the device, the host,
the jax version, XLA_FLAGS (which change compile time and step speed) and the ``--set``
overrides in force (``OVERRIDES``, when there are any).
"""

from __future__ import annotations

import ast
import datetime
import importlib
import json
import os
import platform
import sys
from collections.abc import Sequence

# The --set overrides of this run, recorded in every line that `emit` prints.
OVERRIDES: list[str] = []
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def load_config(name: str, overrides: Sequence[str] = ()):
    """A config by file name under configs/ ('r18_msml', 'configs/r18_msml.py'), with
    ``KEY=VALUE`` overrides ('model.trunk_a=resnet_tiny', 'train.stages.0.epochs=1')."""
    module = os.path.basename(name)[:-3] if name.endswith(".py") else name
    try:
        config = importlib.import_module(f"configs.{module}").get_config()
    except ModuleNotFoundError as e:
        raise SystemExit(f"error: no config {name!r} under configs/ ({e})") from None
    for item in overrides:
        set_field(config, item)
    return config


def set_field(config, item: str) -> None:
    """Applies one ``KEY=VALUE`` override; VALUE is a Python literal, else a string."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise SystemExit(f"error: --set {item!r}: expected KEY=VALUE")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    *parents, last = key.split(".")
    node = config
    try:
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    except (KeyError, IndexError, ValueError, TypeError) as e:
        raise SystemExit(f"error: --set {item!r}: {type(e).__name__} {e}") from None


def emit(record: dict, out: str | None = None) -> dict:
    """Prints one JSON line with the context fields (and appends it to ``out``)."""
    import jax

    record = {"date": datetime.date.today().isoformat(), "device": device_name(),
              "host": platform.node(), "jax_version": jax.__version__,
              "xla_flags": os.environ.get("XLA_FLAGS", ""),
              **({"set": list(OVERRIDES)} if OVERRIDES else {}), **record}
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
    return record


def device_name() -> str:
    import jax

    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '')} x{jax.device_count()}"

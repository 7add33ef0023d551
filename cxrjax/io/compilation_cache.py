"""JAX's persistent compilation cache, on by default: a rerun, an evaluate, a predict or a resume
after preemption loads its compiled steps from disk instead of compiling them again.

Where the cache lives, first match wins:

1. the environment variable ``CXRJAX_COMPILE_CACHE``: a folder, or ``off`` (also ``0``, ``no``,
   ``none``, ``false``) to switch the cache off. The environment wins because where compiled
   programs may be kept is a property of the machine or the job (a cluster's scratch disk, a
   read-only home), not of the experiment a config describes;
2. the ``directory`` given to :func:`enable`: the entry points pass the config field
   ``compile_cache_dir`` (``""`` = off) or :data:`DEFAULT_DIR`.

Each jax version gets its own subfolder (``<folder>/jax-<version>``): JAX's cache keys carry the
version, but XLA's GPU autotuning results, kept beside them, do not. On GPUs those autotuning
results (one per distinct convolution or GEMM fusion) are kept too, so a function compiled for
the first time still reuses the autotuning of every fusion an earlier one already measured (the
eval step shares the train step's forward convolutions).

The cache is trusted code: as JAX's documentation warns, anyone who can write into the folder
can make a later run execute code. Keep it private (the default is in the user's home).
"""

from __future__ import annotations

import logging
import os

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

log = logging.getLogger("cxrjax")

ENV_VAR = "CXRJAX_COMPILE_CACHE"
DEFAULT_DIR = "~/.cache/cxrjax/jax_cache"
# Compilations quicker than this are not written: eager jnp ops compile in milliseconds and
# would fill the folder with thousands of tiny files; every step of ours takes longer.
MIN_COMPILE_TIME_S = 0.2
_OFF = ("off", "0", "no", "none", "false")
# XLA's own caches that JAX fills when its persistent cache is on, where the installed jax
# knows the option: the per-fusion GPU autotuning results (a no-op on CPU).
_XLA_CACHES = "xla_gpu_per_fusion_autotune_cache_dir"


def resolve(directory: str | None = DEFAULT_DIR) -> str | None:
    """The cache folder that :func:`enable` would use (expanded, versioned), or None for off."""
    env = os.environ.get(ENV_VAR)
    if env is not None and env.strip():
        directory = None if env.strip().lower() in _OFF else env.strip()
    if not directory:
        return None
    return os.path.join(os.path.abspath(os.path.expanduser(directory)),
                        f"jax-{jax.__version__}")


def enable(directory: str | None = DEFAULT_DIR, *,
           min_compile_time_s: float = MIN_COMPILE_TIME_S) -> str | None:
    """Turns the persistent compilation cache on in ``directory`` (``None``/``""``: off), unless
    ``CXRJAX_COMPILE_CACHE`` says otherwise; returns the folder in use, or None when off.

    Call it first thing in an entry point, before anything is compiled. A folder that cannot be
    created is a warning, not an error: the run goes on without the cache.
    """
    path = resolve(directory)
    if path is not None:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            log.warning("compilation cache off: cannot create %s (%s); set %s to another "
                        "folder or to 'off'", path, e.strerror, ENV_VAR)
            path = None
    jax_cache.reset_cache()  # a folder chosen earlier in this process is forgotten
    if path is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # any size
    if "jax_persistent_cache_enable_xla_caches" in jax.config.values:
        jax.config.update("jax_persistent_cache_enable_xla_caches", _XLA_CACHES)
    # debug, not info: a command refused in one line should not be preceded by this one
    log.debug("compilation cache: %s", path)
    return path


def entries(path: str) -> list[str]:
    """Names of the compiled programs stored in a cache folder (``resolve``'s result)."""
    if not os.path.isdir(path):
        return []
    return sorted(name for name in os.listdir(path) if name.endswith("-cache"))

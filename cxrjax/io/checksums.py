"""An exact checksum of a state's arrays, so a checkpoint whose array files changed on disk is
recognised at restore (orbax and tensorstore keep no checksum of the array data).

Each leaf's bits are read as unsigned integers (uint32; uint16 or uint8 for narrow dtypes),
multiplied by odd per-position weights (times an odd per-path weight) and summed mod 2**32.
Flipping bit k of one element changes the sum by an odd number times 2**k, never 0 mod 2**32,
so ANY single flipped bit is detected; integer sums are exact in any order, so the same state
gives the same number on one device or sharded over many.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Knuth's multiplicative-hash constant (odd): spreads the position weights over 32 bits.
_MIX = np.uint32(0x9E3779B1)


def state_checksums(state: Any) -> dict[str, str]:
    """Per top-level field of ``state`` (a dict or a dataclass such as TrainState), its arrays'
    checksum as 8 hex digits, e.g. ``{"params": "1f3a09c2", "opt_state": ...}``."""
    fields = (
        {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
        if dataclasses.is_dataclass(state) else dict(state))
    sums = _checksums({name: {path: _as_array(leaf) for path, leaf in
                              _leaves_by_path(value).items()}
                       for name, value in fields.items()})
    return {name: f"{int(np.asarray(value)):08x}" for name, value in sums.items()}


def mismatched(saved: Mapping[str, str], restored: Mapping[str, str]) -> list[str]:
    """The fields whose recorded checksum differs from the restored arrays' (fields recorded in
    only one of the two are not compared)."""
    return sorted(k for k in saved if k in restored and saved[k] != restored[k])


def _leaves_by_path(tree: Any) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def _as_array(leaf: Any) -> Any:
    """A device array as it is; a host array's bits as unsigned integers, read on the host (a
    float64 would otherwise lose bits in JAX's conversion to float32)."""
    if isinstance(leaf, jax.Array):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key_data(leaf)
        return leaf
    leaf = np.ascontiguousarray(leaf)
    if leaf.dtype == np.bool_ or leaf.dtype.itemsize not in (1, 2) and leaf.dtype.itemsize % 4:
        return leaf.astype(np.uint8)
    unsigned = {1: np.uint8, 2: np.uint16}.get(leaf.dtype.itemsize, np.uint32)
    return leaf.view(unsigned)


@jax.jit
def _checksums(fields: dict) -> dict:
    """Compiled once per state structure: the paths (dict keys) are part of what jit keys on."""
    return {name: _field_sum(leaves) for name, leaves in fields.items()}


def _field_sum(leaves: Mapping[str, jax.Array]) -> jax.Array:
    total = jnp.uint32(0)
    for path, leaf in leaves.items():
        path_weight = np.uint32(zlib.crc32(path.encode()) | 1)
        total = total + path_weight * _leaf_sum(leaf)
    return total


def _leaf_sum(leaf: jax.Array) -> jax.Array:
    """sum_i w_i * bits_i mod 2**32, with w_i odd for every position i."""
    bits = _bits(leaf).reshape(-1)
    positions = jnp.arange(bits.size, dtype=jnp.uint32)
    weights = (positions * _MIX + np.uint32(0x7F4A7C15)) | np.uint32(1)
    return jnp.sum(weights * bits, dtype=jnp.uint32)


def _bits(leaf: jax.Array) -> jax.Array:
    """The leaf's bits as uint32 values (8-byte elements as two values each)."""
    if leaf.dtype == jnp.bool_:
        return leaf.astype(jnp.uint32)
    width = jnp.dtype(leaf.dtype).itemsize
    if width >= 4:
        return jax.lax.bitcast_convert_type(leaf, jnp.uint32)
    narrow = {1: jnp.uint8, 2: jnp.uint16}[width]
    return jax.lax.bitcast_convert_type(leaf, narrow).astype(jnp.uint32)

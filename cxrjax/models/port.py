"""Port torchvision weights to cxrjax's Flax backbones, and save/load them without torch.

The Flax modules carry torchvision's names (numeric parts joined by `_`: `layer1.0.conv1` ->
`layer1_0/conv1`), so a port is a renaming plus transposes: conv OIHW -> HWIO, linear (out, in) ->
(in, out), BN weight/bias/running_mean/running_var -> scale/bias and batch_stats mean/var. VGG's
first classifier layer also reorders its inputs from torch's CHW flatten to our HWC flatten.
`num_batches_tracked` is ignored on purpose: Flax's BatchNorm uses a fixed momentum, as torchvision
does by default, so the counter carries no information for us.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from cxrjax.models.common import create_classifier, get_spec

FORMAT = "cxrjax-variables-v1"
# The torchvision state-dict key of each family's last classifier weight (gives num_classes).
_TORCHVISION_HEAD_WEIGHT = {"resnet": "fc.weight", "densenet": "classifier.weight",
                            "vgg": "classifier.6.weight"}
# Old DenseNet checkpoints (torchvision < 0.3, CheXNet reproductions) say `norm.1` for `norm1`.
_OLD_DENSENET = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _family(arch: str) -> str:
    tv = get_spec(arch).torchvision
    if tv is None:
        raise ValueError(f"architecture {arch!r} has no torchvision counterpart to port from")
    return next(f for f in _TORCHVISION_HEAD_WEIGHT if tv.startswith(f))


def _to_numpy(value: Any) -> np.ndarray:
    """NumPy array from a NumPy array or a torch tensor (duck-typed: no torch import here)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        value = value.numpy()
    value = np.asarray(value)
    if np.issubdtype(value.dtype, np.floating) or value.dtype == ml_dtypes.bfloat16:
        return value.astype(np.float32, copy=False)
    return value


def _flax_path(family: str, key: str) -> tuple[str, ...] | None:
    """torchvision key -> Flax path (collection first), or None when the key has no place."""
    if family == "densenet":
        key = _OLD_DENSENET.sub(r"\1\2", key)
    segs: list[str] = []
    for s in key.split("."):
        if s.isdigit() and segs:
            segs[-1] += f"_{s}"
        else:
            segs.append(s)
    *mods, leaf = segs
    if not mods:
        return None
    if family == "resnet":
        mods = ["head", *mods] if mods[0] == "fc" else ["trunk", *mods]
    elif family == "densenet":
        if mods[0] not in ("features", "classifier"):
            return None
        mods = ["trunk", *mods[1:]] if mods[0] == "features" else ["head", *mods]
    else:
        top = mods[0].split("_")[0]
        if top not in ("features", "classifier"):
            return None
        mods = ["trunk" if top == "features" else "head", *mods]
    names = {"running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var"),
             "bias": ("params", "bias"), "weight": ("params", "weight")}
    if leaf not in names:
        return None
    collection, leaf = names[leaf]
    return (collection, *mods, leaf)


def _convert(path: tuple[str, ...], value: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """Rename/transpose one torch array to its Flax leaf name and layout."""
    if path[-1] != "weight":
        return path, value
    if value.ndim == 4:
        return path[:-1] + ("kernel",), value.transpose(2, 3, 1, 0)
    if value.ndim == 2:
        if path[-2] == "classifier_0" and value.shape[1] % 49 == 0:  # VGG: CHW -> HWC flatten
            out, c = value.shape[0], value.shape[1] // 49
            value = value.reshape(out, c, 7, 7).transpose(0, 2, 3, 1).reshape(out, 49 * c)
        return path[:-1] + ("kernel",), value.T
    return path[:-1] + ("scale",), value


def _torch_name(family: str, path: tuple[str, ...]) -> str:
    """Flax path -> the torchvision key that fills it (for error messages)."""
    _, top, *mods, leaf = path
    leaf = {"kernel": "weight", "scale": "weight", "mean": "running_mean",
            "var": "running_var"}.get(leaf, leaf)
    if family == "densenet" and top == "trunk":
        mods = ["features", *mods]
    return re.sub(r"_(\d+)", r".\1", ".".join([*mods, leaf]))


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return tree


def _names(items, limit: int = 12) -> str:
    items = list(items)
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" ... ({len(items)} in all)" if len(items) > limit else "")


def torchvision_to_flax(arch: str, state_dict: Mapping[str, Any]) -> dict:
    """torchvision state dict (NumPy arrays or tensors) -> `{"params", "batch_stats"}` of
    `create_classifier(arch, num_classes)`, num_classes read from the state dict's last layer.

    Strict: every source key is used exactly once, every Flax leaf is filled, every shape matches;
    otherwise a ValueError names the missing, unused, duplicated and mis-shaped keys.
    """
    family = _family(arch)
    head_key = _TORCHVISION_HEAD_WEIGHT[family]
    num_classes = int(np.shape(state_dict[head_key])[0]) if head_key in state_dict else 1000
    model = create_classifier(arch, num_classes)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    expected = {p: tuple(v.shape) for p, v in _flatten(shapes).items()}

    filled: dict[tuple[str, ...], np.ndarray] = {}
    source: dict[tuple[str, ...], str] = {}
    unused, duplicated, wrong_shape = [], [], []
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        path = _flax_path(family, key)
        if path is None:
            unused.append(key)
            continue
        value = _to_numpy(value)
        src_shape = tuple(value.shape)
        path, value = _convert(path, value)
        if path not in expected:
            unused.append(key)
        elif path in source:
            duplicated.append(f"{key} (same as {source[path]})")
        elif value.shape != expected[path]:
            wrong_shape.append(f"{key}: {src_shape} (Flax {tuple(value.shape)}) vs expected "
                               f"Flax {'/'.join(path)} {expected[path]}")
            source[path] = key
        else:
            filled[path], source[path] = value, key
    missing = [f"{_torch_name(family, p)} ({'/'.join(p)})" for p in expected if p not in source]
    problems = [f"{what}: {_names(items)}" for what, items in
                (("missing", missing), ("unused", unused), ("duplicated", duplicated),
                 ("wrong shape", wrong_shape)) if items]
    if problems:
        raise ValueError(f"{arch}: state dict does not fit the Flax model; " + "; ".join(problems))
    out = {"params": {}, "batch_stats": {}}  # batch_stats present (empty for vgg16) for all archs
    out.update(_unflatten({p: jnp.asarray(v) for p, v in filled.items()}))
    return out


def replace_head(variables: Mapping, arch: str, num_classes: int, rng: jax.Array) -> dict:
    """Same trunk weights and statistics, a freshly initialised `num_classes` head."""
    spec = get_spec(arch)
    head = spec.head(num_classes=num_classes)
    feats = jnp.zeros((1, 2, 2, spec.channels), jnp.float32)
    new_head = head.init({"params": rng}, feats, train=False)["params"]
    out = {k: dict(v) for k, v in variables.items()}
    out["params"]["head"] = new_head
    return out


# ----------------------------------------------------------------------------------------------
# Files: torch checkpoints in, torch-free .npz out.
# ----------------------------------------------------------------------------------------------

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
              "BOOL": np.bool_}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Arrays of a .safetensors file, read with NumPy only (8-byte header size, JSON, raw data)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a safetensors file ({e})") from e
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        buf = data[8 + n + begin:8 + n + end]
        out[name] = np.frombuffer(buf, _ST_DTYPES[info["dtype"]]).reshape(info["shape"]).copy()
    return out


def write_safetensors(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays as .safetensors (little-endian, as the format requires)."""
    names = {np.dtype(v): k for k, v in _ST_DTYPES.items()}
    header, chunks, offset = {}, [], 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": names[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob + b"".join(chunks))


def load_torch_file(path: str) -> dict[str, Any]:
    """State dict of a .pth/.pt (torch.load, weights_only=True) or .safetensors (no torch) file.

    A checkpoint dict holding `state_dict` is unwrapped, and a DataParallel `module.` prefix on
    every key is removed.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        sd: Any = read_safetensors(path)
    elif path.endswith((".pth", ".pt", ".bin")):
        import torch  # only the port needs torch

        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001  (torch raises several types; all mean "unreadable")
            raise ValueError(f"{path}: not a weights-only torch file ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from e
    else:
        raise ValueError(f"{path}: unknown weights format; expected .pth/.pt/.bin/.safetensors")
    if isinstance(sd, Mapping) and isinstance(sd.get("state_dict"), Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not sd:
        raise ValueError(f"{path}: does not hold a state dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def save_variables(path: str, variables: Mapping, arch: str | None = None) -> None:
    """Save a variables tree as .npz (keys `params/trunk/conv1/kernel`), loadable without torch."""
    if not str(path).endswith(".npz"):
        raise ValueError(f"{path}: variables are saved as .npz; give a path ending in .npz")
    arrays = {}
    for p, v in _flatten(variables).items():
        a = np.asarray(v)
        arrays["/".join(p)] = a.astype(np.float32) if a.dtype == ml_dtypes.bfloat16 else a
    meta = json.dumps({"format": FORMAT, "arch": arch})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, __meta__=np.array(meta), **arrays)


def _open_npz(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"variables file not found: {path}")
    try:
        npz = np.load(path, allow_pickle=False)
        meta = json.loads(str(npz["__meta__"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a cxrjax variables file, or truncated ({e})") from e
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown variables format {meta.get('format')!r}")
    return npz, meta


def load_variables(path: str) -> dict:
    """Nested dict of NumPy arrays saved by `save_variables`."""
    npz, _ = _open_npz(path)
    with npz:
        return _unflatten({tuple(k.split("/")): npz[k] for k in npz.files if k != "__meta__"})


def variables_arch(path: str) -> str | None:
    """The architecture recorded by `save_variables`, or None if it was not given."""
    npz, meta = _open_npz(path)
    npz.close()
    return meta.get("arch")

"""An exported model folder, loaded and run: images in, per-class probabilities out.

``load(DIR)`` reads the manifest, the weights and the ``jax.export`` entries;
``ExportedModel.predict`` decodes files or arrays by the folder's preprocessing contract and
scores them in padded batches (one compiled shape per batch size); probabilities come back per
head with the fused ones, with positive calls at the run's thresholds and the calibrated fused
probabilities when the run recorded them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax import export as jax_export

from cxrjax.serving import decode, files


class ServingError(ValueError):
    """An export folder that cannot be used; the message says why in one line."""


@dataclasses.dataclass(frozen=True)
class Scores:
    """Results for N inputs: ``probs`` {head: (N, C) float32} with "fused"; ``calls`` per image
    and class True (positive), False, or None (no threshold), None without thresholds;
    ``calibrated``: the rescaled fused (N, C), None when the run fitted no rescaling."""

    classes: tuple[str, ...]
    probs: dict[str, np.ndarray]
    calls: list[list[bool | None]] | None
    calibrated: np.ndarray | None


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ServingError(f"{path} is missing (not an export folder?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ServingError(f"{path} is not readable JSON: {e}") from None


def sha256(path: str) -> str:
    """The file's sha256 hex digest."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _calibrate(fused: np.ndarray, calibration: dict, classes: Sequence[str]) -> np.ndarray:
    """``sigmoid(slope * logit(p) + intercept)`` per class, in float64 (as fitted)."""
    per = calibration["parameters"]["per_class"]
    slope = np.array([per[c]["slope"] for c in classes], np.float64)
    intercept = np.array([per[c]["intercept"] for c in classes], np.float64)
    p = np.asarray(fused, np.float64)
    with np.errstate(divide="ignore"):
        z = slope * (np.log(p) - np.log1p(-p)) + intercept
    return 1.0 / (1.0 + np.exp(-z))


class ExportedModel:
    """A loaded export folder. ``resolution``/``crop``: the contract's sizes; ``limitations``:
    (short, text) pairs the run's config implied; ``thresholds``: (C,) or None."""

    def __init__(self, directory: str):
        self.directory = directory
        manifest = _read_json(os.path.join(directory, files.MANIFEST))
        if not isinstance(manifest, dict) or manifest.get("format") != files.FORMAT:
            raise ServingError(f"{directory}: {files.MANIFEST} is not a {files.FORMAT} manifest")
        if manifest.get("version") != files.VERSION:
            raise ServingError(f"{directory}: export version {manifest.get('version')}, this "
                               f"loader reads version {files.VERSION}")
        self.manifest = manifest
        self.preprocessing = _read_json(os.path.join(directory, files.PREPROCESSING))
        try:
            self.classes = tuple(manifest["classes"])
            self.heads = tuple(manifest["heads"])
            self.resolution, self.crop = int(manifest["resolution"]), int(manifest["crop"])
            self.limitations = tuple((x["short"], x["text"]) for x in manifest["limitations"])
        except (KeyError, TypeError, ValueError) as e:
            raise ServingError(f"{directory}: {files.MANIFEST} is incomplete ({e!r})") from None
        self.thresholds = self._thresholds()
        cal_path = os.path.join(directory, files.CALIBRATION)
        self.calibration = _read_json(cal_path) if os.path.exists(cal_path) else None
        self._weights = self._load_weights()
        self._entries: dict[str, Any] = {}

    def _thresholds(self) -> np.ndarray | None:
        path = os.path.join(self.directory, files.THRESHOLDS)
        if not os.path.exists(path):
            return None
        body = _read_json(path)
        if list(body.get("classes", ())) != list(self.classes):
            raise ServingError(f"{path} holds thresholds for other classes than the model's")
        return np.array([np.nan if body["thresholds"][c] is None else body["thresholds"][c]
                         for c in self.classes], np.float64)

    def _load_weights(self) -> Any:
        path = os.path.join(self.directory, files.WEIGHTS)
        try:
            with np.load(path) as saved:
                leaves = [saved[f"leaf_{i:05d}"] for i in range(len(saved.files))]
        except FileNotFoundError:
            raise ServingError(f"{path} is missing (not an export folder?)") from None
        except (OSError, ValueError, KeyError) as e:
            raise ServingError(f"{path} is unreadable: {e}") from None
        return jax.device_put(leaves)

    def entry(self, dtype: str) -> Any:
        """The jitted call of the ``dtype`` ("uint8" or "uint16") entry, deserialised once."""
        if dtype not in self._entries:
            path = os.path.join(self.directory, files.ENTRIES[dtype])
            try:
                with open(path, "rb") as f:
                    exported = jax_export.deserialize(bytearray(f.read()))
            except FileNotFoundError:
                raise ServingError(f"{path} is missing (not an export folder?)") from None
            except Exception as e:  # noqa: BLE001 - flatbuffers/MLIR raise many kinds
                raise ServingError(f"{path} is not a readable jax.export: "
                                   f"{type(e).__name__}") from None
            platform = jax_export.default_export_platform()
            if platform not in exported.platforms:
                raise ServingError(f"{path} was lowered for {', '.join(exported.platforms)}, "
                                   f"not for this machine's {platform}")
            self._entries[dtype] = (jax.jit(exported.call), exported.in_tree)
        return self._entries[dtype]

    def _forward(self, dtype: str, crops: np.ndarray) -> dict[str, np.ndarray]:
        call, in_tree = self.entry(dtype)
        (weights, images), _ = jax.tree.unflatten(in_tree, [*self._weights, crops])
        return {k: np.asarray(v) for k, v in jax.device_get(call(weights, images)).items()}

    def decode(self, item: Any) -> np.ndarray:
        """One path or image array as the model's (crop, crop, 1) uint8 input."""
        if isinstance(item, str | os.PathLike):
            return decode.decode_file(item, self.resolution, self.crop)
        return decode.decode_array(item, self.resolution, self.crop)

    def predict(self, inputs: Sequence[Any], batch_size: int = 16) -> Scores:
        """Paths (PNG, JPEG) or gray arrays (uint8, uint16) -> Scores, through the contract.
        A bad input is a DecodeError naming it."""
        crops = []
        for item in inputs:
            try:
                crops.append(self.decode(item))
            except decode.DecodeError as e:
                name = os.fspath(item) if isinstance(item, str | os.PathLike) else "array"
                raise decode.DecodeError(f"{name}: {e}") from None
        return self.predict_crops(np.stack(crops) if crops else np.zeros(
            (0, self.crop, self.crop, 1), np.uint8), batch_size)

    def predict_crops(self, crops: np.ndarray, batch_size: int = 16) -> Scores:
        """Model-ready crops (N, crop, crop[, 1]), uint8 or uint16 (the uint16 entry maps them
        onto 0..255 first, as a 16-bit image is) -> Scores."""
        crops = np.asarray(crops)
        if crops.ndim == 3:
            crops = crops[..., None]
        if crops.shape[1:] != (self.crop, self.crop, 1) or crops.dtype.name not in files.ENTRIES:
            raise ServingError(f"crops must be (N, {self.crop}, {self.crop}[, 1]) uint8 or "
                               f"uint16, got {crops.shape} {crops.dtype}")
        if batch_size < 1:
            raise ServingError(f"batch_size must be >= 1, got {batch_size}")
        n = len(crops)
        size = min(batch_size, 1 << max(n - 1, 0).bit_length())  # few shapes, few compiles
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, n, size):
            chunk = crops[start:start + size]
            batch = np.zeros((size, *crops.shape[1:]), crops.dtype)
            batch[:len(chunk)] = chunk
            for head, p in self._forward(crops.dtype.name, batch).items():
                parts.setdefault(head, []).append(p[:len(chunk)])
        probs = {h: np.concatenate(parts[h]) if n else
                 np.zeros((0, len(self.classes)), np.float32) for h in self.heads}
        return Scores(self.classes, probs, self._calls(probs["fused"]),
                      None if self.calibration is None else
                      _calibrate(probs["fused"], self.calibration, self.classes))

    def _calls(self, fused: np.ndarray) -> list[list[bool | None]] | None:
        if self.thresholds is None:
            return None
        return [[None if np.isnan(t) else bool(p >= t)
                 for p, t in zip(row, self.thresholds, strict=True)]
                for row in np.asarray(fused, np.float64)]


def load(directory: str | os.PathLike, warn: bool = True) -> ExportedModel:
    """The export folder ``directory``, ready to ``predict``. With ``warn``, the run's
    limitations (a model trained on synthetic images, ...) are printed to stderr, one line
    each, as ``cxrjax.predict`` prints them."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ServingError(f"export folder not found: {directory}")
    model = ExportedModel(directory)
    if warn:
        for _, text in model.limitations:
            print(f"warning: {directory}: {text}", file=sys.stderr)
    return model

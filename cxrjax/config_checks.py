"""Config checks: one clear line per bad field, before anything is built; the dtype rule."""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc

from cxrjax import models


class ConfigError(ValueError):
    """A config field with a bad value; the message names the field."""


def model_heads(model_cfg: Any) -> tuple[str, ...]:
    """Output heads of the configured model (the keys of its logits dict)."""
    heads = []
    if model_cfg.head_a:
        heads.append("ce")
    if model_cfg.head_b:
        heads.append({"ce": "ce_b", "msml": "msml"}[model_cfg.head_b])
    if model_cfg.bilinear:
        heads.append("fce")
    return tuple(heads)


def check_config(config: mlc.ConfigDict) -> None:
    """Raises ConfigError naming the first bad field."""
    m, d, t = config.model, config.data, config.train
    for field, arch in (("model.trunk_a", m.trunk_a), ("model.trunk_b", m.trunk_b)):
        if arch is not None and arch not in models.ARCHS:
            raise ConfigError(f"{field}={arch!r}: unknown architecture; known: "
                              f"{', '.join(sorted(models.ARCHS))}")
    if m.head_b is not None and m.head_b not in ("ce", "msml"):
        raise ConfigError(f"model.head_b={m.head_b!r}: expected 'ce', 'msml' or None")
    if m.head_b is not None and m.trunk_b is None:
        raise ConfigError("model.head_b is set but model.trunk_b is None")
    heads = model_heads(m)
    if not heads:
        raise ConfigError("model: no head (set head_a, head_b or bilinear)")
    if d.crop > d.resolution:
        raise ConfigError(f"data.crop={d.crop} is larger than data.resolution={d.resolution}")
    for arch in {m.trunk_a, m.trunk_b} - {None}:
        if d.crop < models.trunk_stride(arch):
            raise ConfigError(f"data.crop={d.crop} is smaller than the {arch} trunk's stride "
                              f"({models.trunk_stride(arch)}): its feature map would be empty")
    n_dev = jax.device_count()
    for field in ("batch_size", "eval_batch_size"):
        value = t[field]
        if value <= 0 or value % n_dev:
            raise ConfigError(f"train.{field}={value} must be a positive multiple of the "
                              f"device count ({n_dev})")
    if t.lr <= 0:
        raise ConfigError(f"train.lr={t.lr} must be positive")
    if not t.stages:
        raise ConfigError("train.stages is empty")
    for i, stage in enumerate(t.stages):
        where = f"train.stages[{i}]"
        if stage.epochs <= 0:
            raise ConfigError(f"{where}.epochs={stage.epochs} must be positive")
        for head, w in stage.loss_weights.items():
            if head not in heads:
                raise ConfigError(f"{where}.loss_weights has {head!r}, not a head of this model "
                                  f"({', '.join(heads)})")
            if w < 0:
                raise ConfigError(f"{where}.loss_weights.{head}={w} is negative")
        if not any(stage.loss_weights.get(h, 0) > 0 for h in heads):
            raise ConfigError(f"{where}.loss_weights: every weight is zero")
        try:
            re.compile(stage.trainable)
        except re.error as e:
            raise ConfigError(f"{where}.trainable={stage.trainable!r}: bad regex ({e})") from None


def compute_dtype(config: mlc.ConfigDict) -> jnp.dtype:
    """bfloat16 on accelerators and float32 on CPU for "auto"; else the named dtype."""
    name = config.dtype
    if name == "auto":
        name = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    if name not in ("float32", "bfloat16"):
        raise ConfigError(f"dtype={config.dtype!r}: expected 'auto', 'float32' or 'bfloat16'")
    return jnp.dtype(name)

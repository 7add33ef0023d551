"""VGG (as torchvision's vgg16 / vgg16_bn) in Flax Linen, NHWC.

Layer names carry torchvision's indices (`features_0`, `classifier_3`) so that the weight port is
a renaming. The trunk ends after the last conv block's ReLU, BEFORE its final max-pool: at 224^2
that is a 14x14x512 map (stride 16), the finer map the paper's bilinear pooling wants; the
classifier head applies that last max-pool itself, then torchvision's adaptive 7x7 average pool.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cxrjax.models.common import (
    ArchSpec,
    BatchNorm,
    adaptive_avg_pool,
    conv_init_fan_out,
    max_pool,
    pad2,
    register,
)

CFG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
CFG_TINY = (8, "M", 16, "M", 16, "M", 16, "M", 16, "M")


class VGGTrunk(nn.Module):
    """torchvision's `features` without its last max-pool."""

    cfg: Sequence[int | str]
    batch_norm: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        if self.cfg[-1] != "M":
            raise ValueError("VGG cfg must end with its max-pool 'M'")
        x = x.astype(self.dtype)
        idx = 0
        for v in self.cfg[:-1]:
            if v == "M":
                x = max_pool(x, 2, 2)
                idx += 1
                continue
            x = nn.Conv(int(v), (3, 3), padding=pad2(1), dtype=self.dtype,
                        kernel_init=conv_init_fan_out, name=f"features_{idx}")(x)
            idx += 1
            if self.batch_norm:
                x = BatchNorm(use_running_average=not train, dtype=self.dtype,
                              name=f"features_{idx}")(x)
                idx += 1
            x = nn.relu(x)
            idx += 1
        return x


class VGGHead(nn.Module):
    """Last max-pool, adaptive 7x7 average pool, flatten (HWC order) and the 3-layer classifier."""

    num_classes: int
    hidden: int = 4096
    dropout: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feats: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = adaptive_avg_pool(max_pool(feats, 2, 2), (7, 7))
        x = x.reshape(x.shape[0], -1)
        dense = functools.partial(nn.Dense, dtype=self.dtype)
        x = nn.relu(dense(self.hidden, name="classifier_0")(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.relu(dense(self.hidden, name="classifier_3")(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return dense(self.num_classes, name="classifier_6")(x).astype(jnp.float32)


def _vgg(cfg, batch_norm, hidden=4096, tv=None):
    return ArchSpec(
        trunk=functools.partial(VGGTrunk, cfg, batch_norm),
        head=functools.partial(VGGHead, hidden=hidden),
        channels=[v for v in cfg if v != "M"][-1],
        stride=2 ** (cfg.count("M") - 1),
        torchvision=tv,
    )


register("vgg16", _vgg(CFG_D, False, tv="vgg16"))
register("vgg16_bn", _vgg(CFG_D, True, tv="vgg16_bn"))
register("vgg_tiny", _vgg(CFG_TINY, True, hidden=32))

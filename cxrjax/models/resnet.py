"""ResNet (v1.5, as torchvision) in Flax Linen, NHWC; module names mirror torchvision's keys."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cxrjax.models.common import (
    ArchSpec,
    BatchNorm,
    conv_init_fan_out,
    max_pool,
    pad2,
    register,
)
from cxrjax.models.heads import GlobalAvgPoolDense


class BasicBlock(nn.Module):
    """Two 3x3 convs (resnet18/34); stride on the first, projection shortcut when shapes change."""

    filters: int
    stride: int = 1
    dtype: Any = jnp.float32
    expansion = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                                 kernel_init=conv_init_fan_out)
        norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
        y = conv(self.filters, (3, 3), self.stride, padding=pad2(1), name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = conv(self.filters, (3, 3), padding=pad2(1), name="conv2")(y)
        y = norm(name="bn2")(y)
        if self.stride != 1 or x.shape[-1] != self.filters:
            x = conv(self.filters, (1, 1), self.stride, padding=pad2(0), name="downsample_0")(x)
            x = norm(name="downsample_1")(x)
        return nn.relu(x + y)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, torchvision's v1.5) -> 1x1 x4 (resnet50)."""

    filters: int
    stride: int = 1
    dtype: Any = jnp.float32
    expansion = 4

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                                 kernel_init=conv_init_fan_out)
        norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
        out = self.filters * self.expansion
        y = nn.relu(norm(name="bn1")(conv(self.filters, (1, 1), name="conv1")(x)))
        y = conv(self.filters, (3, 3), self.stride, padding=pad2(1), name="conv2")(y)
        y = nn.relu(norm(name="bn2")(y))
        y = norm(name="bn3")(conv(out, (1, 1), name="conv3")(y))
        if self.stride != 1 or x.shape[-1] != out:
            x = conv(out, (1, 1), self.stride, padding=pad2(0), name="downsample_0")(x)
            x = norm(name="downsample_1")(x)
        return nn.relu(x + y)


class ResNetTrunk(nn.Module):
    """Stem + layer1..layer4; returns the layer4 feature map (B, H/32, W/32, C)."""

    stage_sizes: Sequence[int]
    block: type[nn.Module]
    width: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        x = nn.Conv(self.width, (7, 7), 2, padding=pad2(3), use_bias=False, dtype=self.dtype,
                    kernel_init=conv_init_fan_out, name="conv1")(x.astype(self.dtype))
        x = BatchNorm(use_running_average=not train, dtype=self.dtype, name="bn1")(x)
        x = max_pool(nn.relu(x), 3, 2, 1)
        for i, n_blocks in enumerate(self.stage_sizes):
            for j in range(n_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                x = self.block(self.width * 2**i, stride, self.dtype,
                               name=f"layer{i + 1}_{j}")(x, train)
        return x


def _resnet(stage_sizes, block, width=64, tv=None):
    return ArchSpec(
        trunk=functools.partial(ResNetTrunk, stage_sizes, block, width),
        head=functools.partial(GlobalAvgPoolDense, dense_name="fc"),
        channels=width * 8 * block.expansion,
        stride=32,
        torchvision=tv,
    )


register("resnet18", _resnet((2, 2, 2, 2), BasicBlock, tv="resnet18"))
register("resnet34", _resnet((3, 4, 6, 3), BasicBlock, tv="resnet34"))
register("resnet50", _resnet((3, 4, 6, 3), Bottleneck, tv="resnet50"))
register("resnet_tiny", _resnet((1, 1, 1, 1), BasicBlock, width=4))

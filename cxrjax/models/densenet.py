"""DenseNet-BC (as torchvision's densenet121) in Flax Linen, NHWC; names mirror torchvision's."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cxrjax.models.common import (
    ArchSpec,
    BatchNorm,
    conv_init_fan_in,
    max_pool,
    pad2,
    register,
)
from cxrjax.models.heads import GlobalAvgPoolDense


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (bn_size*growth) -> BN-ReLU-3x3 conv (growth); returns the new features."""

    growth: int
    bn_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                                 kernel_init=conv_init_fan_in)
        norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
        y = conv(self.bn_size * self.growth, (1, 1), name="conv1")(nn.relu(norm(name="norm1")(x)))
        return conv(self.growth, (3, 3), padding=pad2(1), name="conv2")(
            nn.relu(norm(name="norm2")(y)))


class DenseBlock(nn.Module):
    """`n_layers` dense layers, each fed the concatenation of all earlier feature maps."""

    n_layers: int
    growth: int
    bn_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        for i in range(self.n_layers):
            layer = DenseLayer(self.growth, self.bn_size, self.dtype, name=f"denselayer{i + 1}")
            y = layer(x, train)
            x = jnp.concatenate([x, y], axis=-1)
        return x


class Transition(nn.Module):
    """BN-ReLU-1x1 conv halving the channels, then 2x2 average pool (stride 2)."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        x = BatchNorm(use_running_average=not train, dtype=self.dtype, name="norm")(x)
        x = nn.relu(x)
        x = nn.Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype,
                    kernel_init=conv_init_fan_in, name="conv")(x)
        return nn.avg_pool(x, (2, 2), (2, 2))


class DenseNetTrunk(nn.Module):
    """torchvision's `features` plus the final ReLU: (B,H,W,3) -> (B, H/32, W/32, C)."""

    block_config: Sequence[int]
    growth: int = 32
    init_features: int = 64
    bn_size: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
        x = nn.Conv(self.init_features, (7, 7), 2, padding=pad2(3), use_bias=False,
                    dtype=self.dtype, kernel_init=conv_init_fan_in,
                    name="conv0")(x.astype(self.dtype))
        x = max_pool(nn.relu(norm(name="norm0")(x)), 3, 2, 1)
        channels = self.init_features
        for i, n_layers in enumerate(self.block_config):
            x = DenseBlock(n_layers, self.growth, self.bn_size, self.dtype,
                           name=f"denseblock{i + 1}")(x, train)
            channels += n_layers * self.growth
            if i != len(self.block_config) - 1:
                channels //= 2
                x = Transition(channels, self.dtype, name=f"transition{i + 1}")(x, train)
        return nn.relu(norm(name="norm5")(x))


def _densenet(block_config, growth=32, init_features=64, bn_size=4, tv=None):
    channels = init_features
    for i, n in enumerate(block_config):
        channels += n * growth
        if i != len(block_config) - 1:
            channels //= 2
    return ArchSpec(
        trunk=functools.partial(DenseNetTrunk, block_config, growth, init_features, bn_size),
        head=functools.partial(GlobalAvgPoolDense, dense_name="classifier"),
        channels=channels,
        stride=32,
        torchvision=tv,
    )


register("densenet121", _densenet((6, 12, 24, 16), tv="densenet121"))
register("densenet_tiny", _densenet((1, 2, 2, 1), growth=4, init_features=8, bn_size=2))

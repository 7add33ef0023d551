"""DenseNet-BC (as torchvision's densenet121) in Flax Linen, NHWC; names mirror torchvision's.

A dense block runs either unrolled (one program per layer, as torchvision writes it) or, with
``scan_chunk`` > 0, as ``lax.scan`` over chunks of that many layers. Unrolled, every layer's 1x1
convolution has its own input width (DenseNet121: 58 distinct shapes), so XLA compiles, and on
GPUs autotunes, each one separately. Scanned, a chunk's layers share one program: each reads a
buffer already as wide as the chunk's output, whose not-yet-written channels are zeros, with its
BatchNorm scale/bias and 1x1 kernel zero-padded to that width. The parameters, their names and
the outputs are the same either way (up to float summation order); the price is the 1x1
convolution's extra zero channels. XLA:CPU runs a convolution's kernel gradient inside a loop many
times slower than outside one (jax-ml/jax#12868), so scanning is for GPUs and TPUs.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxrjax.models.common import (
    BATCHNORM_EPSILON,
    BATCHNORM_MOMENTUM,
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


class _BatchNormVariables(nn.Module):
    """Declares a BatchNorm's variables exactly as `BatchNorm` names and initialises them."""

    features: int

    @nn.compact
    def __call__(self) -> tuple[jnp.ndarray, jnp.ndarray, nn.Variable, nn.Variable]:
        scale = self.param("scale", nn.initializers.ones, (self.features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        mean = self.variable("batch_stats", "mean", jnp.zeros, (self.features,), jnp.float32)
        var = self.variable("batch_stats", "var", jnp.ones, (self.features,), jnp.float32)
        return scale, bias, mean, var


class _ConvKernel(nn.Module):
    """Declares a bias-free `nn.Conv`'s kernel (HWIO) with the same name and initialiser."""

    shape: tuple[int, int, int, int]

    @nn.compact
    def __call__(self) -> jnp.ndarray:
        return self.param("kernel", conv_init_fan_in, self.shape, jnp.float32)


class _DenseLayerVariables(nn.Module):
    """A `DenseLayer`'s variables (same tree), for the scanned block that computes it itself."""

    in_features: int
    growth: int
    bn_size: int

    @nn.compact
    def __call__(self) -> dict[str, Any]:
        width = self.bn_size * self.growth
        return {"norm1": _BatchNormVariables(self.in_features, name="norm1")(),
                "conv1": _ConvKernel((1, 1, self.in_features, width), name="conv1")(),
                "norm2": _BatchNormVariables(width, name="norm2")(),
                "conv2": _ConvKernel((3, 3, width, self.growth), name="conv2")()}


def _batch_stats(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-channel mean and (biased) variance in float32, as flax's BatchNorm computes them."""
    x = x.astype(jnp.float32)
    mean = x.mean((0, 1, 2))
    return mean, jnp.maximum(0.0, (x * x).mean((0, 1, 2)) - mean * mean)


def _normalize_relu(x, mean, var, scale, bias, dtype) -> jnp.ndarray:
    """ReLU of flax's BatchNorm output (float32 arithmetic, result in `dtype`)."""
    y = (x - mean) * (jax.lax.rsqrt(var + BATCHNORM_EPSILON) * scale) + bias
    return nn.relu(y.astype(dtype))


def _conv(x: jnp.ndarray, kernel: jnp.ndarray, padding: int, dtype: Any) -> jnp.ndarray:
    """A bias-free stride-1 NHWC convolution computed in `dtype`, as `nn.Conv` does it."""
    return jax.lax.conv_general_dilated(
        x.astype(dtype), kernel.astype(dtype), (1, 1), pad2(padding),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class DenseBlock(nn.Module):
    """`n_layers` dense layers, each fed the concatenation of all earlier feature maps.

    `scan_chunk` > 0 runs them as `lax.scan` over chunks of at most that many layers (see the
    module docstring); 0 unrolls them.
    """

    n_layers: int
    growth: int
    bn_size: int
    dtype: Any = jnp.float32
    scan_chunk: int = 0

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        if self.scan_chunk <= 0:
            for i in range(self.n_layers):
                layer = DenseLayer(self.growth, self.bn_size, self.dtype, name=f"denselayer{i + 1}")
                x = jnp.concatenate([x, layer(x, train)], axis=-1)
            return x
        c0 = x.shape[-1]
        layers = [_DenseLayerVariables(c0 + i * self.growth, self.growth, self.bn_size,
                                       name=f"denselayer{i + 1}")()
                  for i in range(self.n_layers)]
        update_stats = train and not self.is_initializing()
        for start in range(0, self.n_layers, self.scan_chunk):
            chunk = layers[start:start + self.scan_chunk]
            x = self._scan_chunk(x, chunk, c0 + start * self.growth, train, update_stats)
        return x

    def _scan_chunk(self, x: jnp.ndarray, layers: list[dict[str, Any]], first_in: int,
                    train: bool, update_stats: bool) -> jnp.ndarray:
        """The layers of one chunk as one scanned program over a buffer of the chunk's width."""
        width = first_in + len(layers) * self.growth

        def padded(a: jnp.ndarray, fill: float = 0.0, axis: int = 0) -> jnp.ndarray:
            pad = [(0, 0)] * a.ndim
            pad[axis] = (0, width - a.shape[axis])
            return jnp.pad(a, pad, constant_values=fill)

        def stack(fn):
            return jnp.stack([fn(layer) for layer in layers])

        xs = {
            "offset": jnp.arange(len(layers)) * self.growth + first_in,
            "scale1": stack(lambda v: padded(v["norm1"][0])),  # zero scale/bias: padding -> 0
            "bias1": stack(lambda v: padded(v["norm1"][1])),
            "mean1": stack(lambda v: padded(v["norm1"][2].value)),
            "var1": stack(lambda v: padded(v["norm1"][3].value, 1.0)),
            "kernel1": stack(lambda v: padded(v["conv1"], axis=2)),
            "scale2": stack(lambda v: v["norm2"][0]),
            "bias2": stack(lambda v: v["norm2"][1]),
            "mean2": stack(lambda v: v["norm2"][2].value),
            "var2": stack(lambda v: v["norm2"][3].value),
            "kernel2": stack(lambda v: v["conv2"]),
        }
        dtype = self.dtype

        def layer_step(buffer, p):
            if train:
                mean1, var1 = _batch_stats(buffer)
            else:
                mean1, var1 = p["mean1"], p["var1"]
            h = _normalize_relu(buffer, mean1, var1, p["scale1"], p["bias1"], dtype)
            y = _conv(h, p["kernel1"], 0, dtype)
            if train:
                mean2, var2 = _batch_stats(y)
            else:
                mean2, var2 = p["mean2"], p["var2"]
            h = _normalize_relu(y, mean2, var2, p["scale2"], p["bias2"], dtype)
            new = _conv(h, p["kernel2"], 1, dtype).astype(buffer.dtype)
            buffer = jax.lax.dynamic_update_slice_in_dim(buffer, new, p["offset"], axis=3)
            return buffer, (mean1, var1, mean2, var2)

        buffer = jnp.pad(x, [(0, 0)] * 3 + [(0, width - x.shape[-1])])
        buffer, (mean1, var1, mean2, var2) = jax.lax.scan(layer_step, buffer, xs)
        if update_stats:
            m = BATCHNORM_MOMENTUM
            for i, layer in enumerate(layers):
                n_in = layer["conv1"].shape[2]
                for norm, mean, var in (("norm1", mean1[i, :n_in], var1[i, :n_in]),
                                        ("norm2", mean2[i], var2[i])):
                    ra_mean, ra_var = layer[norm][2], layer[norm][3]
                    ra_mean.value = m * ra_mean.value + (1 - m) * mean
                    ra_var.value = m * ra_var.value + (1 - m) * var
        return buffer


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
    scan_chunk: int = 0  # see DenseBlock

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
        x = nn.Conv(self.init_features, (7, 7), 2, padding=pad2(3), use_bias=False,
                    dtype=self.dtype, kernel_init=conv_init_fan_in,
                    name="conv0")(x.astype(self.dtype))
        x = max_pool(nn.relu(norm(name="norm0")(x)), 3, 2, 1)
        channels = self.init_features
        for i, n_layers in enumerate(self.block_config):
            x = DenseBlock(n_layers, self.growth, self.bn_size, self.dtype, self.scan_chunk,
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
        trunk_options=(("dense_scan_chunk", "scan_chunk"),),
    )


register("densenet121", _densenet((6, 12, 24, 16), tv="densenet121"))
register("densenet_tiny", _densenet((1, 2, 2, 1), growth=4, init_features=8, bn_size=2))

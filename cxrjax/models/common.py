"""Shared pieces of the backbones: input preprocessing, torch-style layers, the arch registry."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision's BatchNorm2d: momentum 0.1 (flax counts the other way: 0.9), eps 1e-5. One known
# difference in train mode: torch updates running_var with the unbiased batch variance, flax with
# the biased one (a factor n/(n-1), n = B*H*W >= 392 at batch 8: under 0.3%); outputs are equal.
BATCHNORM_MOMENTUM = 0.9
BATCHNORM_EPSILON = 1e-5
BatchNorm = functools.partial(nn.BatchNorm, momentum=BATCHNORM_MOMENTUM, epsilon=BATCHNORM_EPSILON,
                              param_dtype=jnp.float32)


# torchvision's conv init: kaiming normal for ReLU nets (ResNet, VGG: fan_out; DenseNet: fan_in),
# so that training from scratch (tests, the demo) starts like a torchvision model would.
conv_init_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
conv_init_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def preprocess(images: jnp.ndarray, dtype: Any = jnp.float32) -> jnp.ndarray:
    """uint8 grayscale (B,H,W) or (B,H,W,1) -> ImageNet-normalised (B,H,W,3) in `dtype`.

    Scales to [0,1], replicates the gray channel to RGB and applies ImageNet mean/std, as the
    paper does ("values rearranged to 0-1 with mean and std norm"). Cheap; meant to run inside jit.
    """
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"preprocess: expected (B,H,W[,1|3]) images, got shape {images.shape}")
    x = images.astype(jnp.float32) / 255.0
    x = jnp.broadcast_to(x, x.shape[:3] + (3,))
    x = (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)
    return x.astype(dtype)


def pad2(p: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Symmetric spatial padding, as torch's `padding=p` (flax 'SAME' differs at stride 2)."""
    return ((p, p), (p, p))


def max_pool(x: jnp.ndarray, window: int, stride: int, padding: int = 0) -> jnp.ndarray:
    """torch.nn.MaxPool2d with floor mode; padding counts as -inf, like torch."""
    return nn.max_pool(x, (window, window), (stride, stride), pad2(padding))


def _adaptive_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) averaging weights of torch's adaptive_avg_pool along one axis."""
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: jnp.ndarray, out_hw: tuple[int, int]) -> jnp.ndarray:
    """torch.nn.AdaptiveAvgPool2d on NHWC, as two small static averaging matmuls."""
    h, w = x.shape[1:3]
    if (h, w) == tuple(out_hw):
        return x
    mh = jnp.asarray(_adaptive_matrix(h, out_hw[0]), x.dtype)
    mw = jnp.asarray(_adaptive_matrix(w, out_hw[1]), x.dtype)
    return jnp.einsum("ih,jw,bhwc->bijc", mh, mw, x)


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """How to build one architecture: its trunk, its torchvision-style head, its trunk width."""

    trunk: Callable[..., nn.Module]  # trunk(dtype=...) -> module(x, train) -> (B,H,W,C)
    head: Callable[..., nn.Module]  # head(num_classes=..., dtype=...) -> module(feats, train)
    channels: int
    stride: int  # input pixels per trunk feature-map pixel
    torchvision: str | None  # torchvision constructor name, None for the tiny test variants
    # Model config fields (besides dtype) that the trunk takes, as {config field: trunk keyword}.
    trunk_options: tuple[tuple[str, str], ...] = ()


ARCHS: dict[str, ArchSpec] = {}


def register(name: str, spec: ArchSpec) -> None:
    ARCHS[name] = spec


def get_spec(arch: str) -> ArchSpec:
    """The ArchSpec of `arch`, or a ValueError naming the known architectures."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHS))}")
    return ARCHS[arch]


class Classifier(nn.Module):
    """A trunk and its torchvision head; params `{"trunk": ..., "head": ...}`.

    Takes float NHWC images already normalised (see `preprocess`), like torchvision's models.
    """

    arch: str
    num_classes: int = 1000
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        spec = get_spec(self.arch)
        feats = spec.trunk(dtype=self.dtype, name="trunk")(x, train)
        return spec.head(num_classes=self.num_classes, dtype=self.dtype, name="head")(feats, train)


def create_classifier(arch: str, num_classes: int = 1000, dtype: Any = jnp.float32) -> nn.Module:
    """The torchvision-equivalent `arch` including its original (or a `num_classes`) head."""
    get_spec(arch)
    return Classifier(arch, num_classes, dtype)


def create_trunk(arch: str, dtype: Any = jnp.float32) -> nn.Module:
    """Module `(x, train) -> (B,H,W,C)`: the last conv feature map before global pooling.

    ResNet: after layer4 (stride 32). DenseNet: after the final norm + ReLU (stride 32).
    VGG: after the last conv block's ReLU, before its last max-pool (stride 16: 14x14 at 224^2).
    """
    return get_spec(arch).trunk(dtype=dtype)


def trunk_channels(arch: str) -> int:
    """Channels of `create_trunk(arch)`'s output."""
    return get_spec(arch).channels


def trunk_stride(arch: str) -> int:
    """Input pixels per trunk feature-map pixel (32 for ResNet/DenseNet, 16 for VGG)."""
    return get_spec(arch).stride

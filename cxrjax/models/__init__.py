"""Backbones (ResNet, DenseNet, VGG as in torchvision), heads and the paper's model family.

    model = create_classifier("resnet18")            # torchvision-equivalent, {"trunk", "head"}
    trunk = create_trunk("densenet121")              # last conv feature map, NHWC
    model = build_model(config.model, jnp.bfloat16)  # the paper's networks (networks.py)
"""

from __future__ import annotations

from cxrjax.models import densenet, resnet, vgg  # noqa: F401  (registers the architectures)
from cxrjax.models.common import (
    ARCHS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Classifier,
    create_classifier,
    create_trunk,
    get_spec,
    preprocess,
    trunk_channels,
    trunk_stride,
)
from cxrjax.models.networks import build_model, load_pretrained_trunks, probabilities

__all__ = [
    "ARCHS", "IMAGENET_MEAN", "IMAGENET_STD", "Classifier", "build_model", "create_classifier",
    "create_trunk", "get_spec", "load_pretrained_trunks", "preprocess", "probabilities",
    "trunk_channels", "trunk_stride",
]

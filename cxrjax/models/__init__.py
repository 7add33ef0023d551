"""Backbones (ResNet, DenseNet, VGG as in torchvision), heads and the paper's model family.

    model = create_classifier("resnet18")            # torchvision-equivalent, {"trunk", "head"}
    trunk = create_trunk("densenet121")              # last conv feature map, NHWC
    model = build_model(config.model, compute_dtype("auto"))  # the paper's networks
    output_heads(config.model)                       # {"ce": "bce", "msml": "msml", "fce": "bce"}
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
from cxrjax.models.networks import (
    HEADS,
    Head,
    build_model,
    check_model_config,
    compute_dtype,
    load_pretrained_trunks,
    output_heads,
    probabilities,
)

__all__ = [
    "ARCHS", "HEADS", "IMAGENET_MEAN", "IMAGENET_STD", "Classifier", "Head", "build_model",
    "check_model_config", "compute_dtype", "create_classifier", "create_trunk", "get_spec",
    "load_pretrained_trunks", "output_heads", "preprocess", "probabilities", "trunk_channels",
    "trunk_stride",
]
